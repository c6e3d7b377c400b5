-- Notifications posted by other services, as routed. Twin of 0003_notifications.postgres.sql.

CREATE TABLE notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL,
    channel TEXT NOT NULL,
    payload JSON NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
-- History newest first (and trimming by age); per channel, paged by id.
CREATE INDEX notifications_created ON notifications (created_at);
CREATE INDEX notifications_channel_id ON notifications (channel, id);

-- Chat rooms, their messages and who read what. Twin of 0002_chat.postgres.sql.

CREATE TABLE rooms (
    name TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    -- Who wrote it as the socket labelled them (token sub or anonymous user_id); empty
    -- for server broadcasts.
    user_id TEXT,
    username TEXT,
    content TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
-- History newest first, paged by id.
CREATE INDEX messages_room_id ON messages (room, id);

CREATE TABLE read_receipts (
    room TEXT NOT NULL REFERENCES rooms (name) ON DELETE CASCADE,
    message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    read_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    PRIMARY KEY (message_id, user_id)
);
CREATE INDEX read_receipts_room_user ON read_receipts (room, user_id);

-- Bounded queries on big tables, and the latest value per sensor and metric (SQLite twin
-- of 0006_latest_values.postgres.sql: same tables, columns and index names).

-- Retention deletes oldest first and GET /api/v1/readings without sensor_id pages in
-- (ts, sensor_id, rowid) order: both walk this index instead of the whole table. Like
-- every SQLite index it ends in the rowid, the readings row key a page cursor carries
-- (two readings of a sensor at one instant, a device that retried, stay apart; the
-- server never runs VACUUM, which could renumber rowids).
CREATE INDEX readings_ts ON readings (ts, sensor_id);

-- The newest value of each metric of each sensor. GET .../readings/latest and
-- `snapshot: true` read one row per metric here instead of the sensor's readings. Kept
-- current in the transaction that inserts readings by store_readings (storage/readings.py:
-- the batch's newest value per metric, upserted; a trigger per row or statement would
-- cost more than the insert itself), and by the trigger below when readings are deleted.
-- Of two readings at one instant the higher value wins, as before.
CREATE TABLE latest_values (
    sensor_id INTEGER NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (sensor_id, metric)
) WITHOUT ROWID;

INSERT INTO latest_values (sensor_id, metric, ts, value)
    SELECT sensor_id, metric, ts, value FROM (
        SELECT sensor_id, metric, ts, value, row_number() OVER (
            PARTITION BY sensor_id, metric ORDER BY ts DESC, value DESC
        ) AS n FROM reading_values
    ) WHERE n = 1;

-- A deleted reading that held a latest value (retention, a sensor's cascade): the newest
-- remaining reading of that metric takes its place, or the row goes when none is left.
CREATE TRIGGER readings_forget_latest AFTER DELETE ON readings
WHEN EXISTS (SELECT 1 FROM latest_values WHERE sensor_id = OLD.sensor_id AND ts = OLD.ts)
BEGIN
    DELETE FROM latest_values
        WHERE sensor_id = OLD.sensor_id AND ts = OLD.ts AND NOT EXISTS (
            SELECT 1 FROM readings r, json_each(r.metrics) m
            WHERE r.sensor_id = OLD.sensor_id AND m.key = latest_values.metric
        );
    UPDATE latest_values SET (ts, value) = (
            SELECT r.ts, m.value FROM readings r, json_each(r.metrics) m
            WHERE r.sensor_id = OLD.sensor_id AND m.key = latest_values.metric
            ORDER BY r.ts DESC, m.value DESC LIMIT 1
        )
        WHERE sensor_id = OLD.sensor_id AND ts = OLD.ts;
END;

-- Anomalies of one sensor newest first (GET /api/v1/anomalies?sensor_id) in index order.
CREATE INDEX anomalies_sensor_id ON anomalies (sensor_id, id);

-- Sensors and everything measured about them. SQLite twin of 0001_sensors.postgres.sql:
-- keep the two in step (same tables, columns, constraints and index names).
--
-- Declared types TIMESTAMPTZ, JSON and BOOLEAN are what server/storage/sqlite.py converts
-- on the way out (datetime, dict/list, bool). Timestamps are stored as fixed-width UTC
-- text, 2024-05-01T12:00:00.000000Z, so text order is time order; the defaults produce
-- the same width (SQLite's %f has milliseconds: three zeros pad it to microseconds).
-- AUTOINCREMENT: ids are never reused after a delete, as with a PostgreSQL identity.

CREATE TABLE locations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    description TEXT,
    latitude DOUBLE PRECISION CHECK (latitude BETWEEN -90 AND 90),
    longitude DOUBLE PRECISION CHECK (longitude BETWEEN -180 AND 180),
    metadata JSON NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

CREATE TABLE sensors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT,
    type TEXT NOT NULL,
    model TEXT,
    unit TEXT,
    location_id INTEGER REFERENCES locations (id) ON DELETE SET NULL,
    -- {metric: {"min": number|null, "max": number|null}}
    thresholds JSON NOT NULL DEFAULT '{}',
    metadata JSON NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
CREATE INDEX sensors_location ON sensors (location_id);

-- One row per reading, its metrics in one JSON object {metric: number}: a reading is one
-- row and one index entry to write whatever its number of metrics (ingest inserts tens of
-- thousands a second). reading_values below is the one-row-per-metric view every query
-- reads. No key column (SQLite's hidden rowid is there).
CREATE TABLE readings (
    sensor_id INTEGER NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    ts TIMESTAMPTZ NOT NULL,
    metrics JSON NOT NULL
);
CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts);

-- (sensor_id, ts, metric, value) per metric of each reading. SQLite flattens the view
-- into the query, so `WHERE sensor_id = ? AND ts ...` still searches readings_sensor_ts,
-- and ts keeps its declared type (converted to datetime on the way out).
CREATE VIEW reading_values (sensor_id, ts, metric, value) AS
    SELECT r.sensor_id, r.ts, m.key, m.value FROM readings r, json_each(r.metrics) m;

CREATE TABLE anomalies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor_id INTEGER NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    -- The thresholds the value left, as they were then.
    min DOUBLE PRECISION,
    max DOUBLE PRECISION,
    ts TIMESTAMPTZ NOT NULL,
    resolved BOOLEAN NOT NULL DEFAULT FALSE CHECK (resolved IN (0, 1)),
    resolved_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
CREATE INDEX anomalies_sensor_resolved ON anomalies (sensor_id, resolved);

CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sensor_id INTEGER NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    horizon INTEGER NOT NULL CHECK (horizon > 0),
    method TEXT NOT NULL,
    -- [{"timestamp": ISO-8601, "value": number}, ...]
    points JSON NOT NULL,
    params JSON NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);
CREATE INDEX predictions_sensor ON predictions (sensor_id, id);

-- Bounded queries on big tables, and the latest value per sensor and metric (PostgreSQL
-- twin of 0006_latest_values.sqlite.sql: same tables, columns and index names).

-- The readings row key a page cursor carries, (ts, sensor_id, id, metric), so two
-- readings of a sensor at one instant (a device that retried) stay apart without an
-- OFFSET. SQLite has its rowid; here an identity, which COPY fills (CACHE: one sequence
-- access per 1000 rows, not per row; gaps do not matter).
ALTER TABLE readings ADD COLUMN id BIGINT GENERATED ALWAYS AS IDENTITY (CACHE 1000);

-- Retention deletes oldest first and GET /api/v1/readings without sensor_id pages in
-- (ts, sensor_id) order: both walk this index instead of the whole table (the BRIN index
-- gives no order, so it goes).
CREATE INDEX readings_ts ON readings (ts, sensor_id);
DROP INDEX readings_ts_brin;

-- The newest value of each metric of each sensor. GET .../readings/latest and
-- `snapshot: true` read one row per metric here instead of the sensor's readings. Kept
-- current in the transaction that inserts readings by store_readings (storage/readings.py:
-- the batch's newest value per metric, upserted; a statement trigger expanding every
-- inserted row's JSON costs ~3 ms per 1,000 readings, as much as the COPY itself), and by
-- the trigger below when readings are deleted. Of two readings at one instant the higher
-- value wins.
CREATE TABLE latest_values (
    sensor_id BIGINT NOT NULL REFERENCES sensors (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (sensor_id, metric)
);

INSERT INTO latest_values (sensor_id, metric, ts, value)
    SELECT DISTINCT ON (sensor_id, metric) sensor_id, metric, ts, value FROM reading_values
    ORDER BY sensor_id, metric, ts DESC, value DESC;

-- Deleted readings that held a latest value (retention, a sensor's cascade): the newest
-- remaining reading of that metric takes its place (the (sensor_id, ts) index backwards),
-- or the row goes when none is left.
CREATE FUNCTION readings_forget_latest() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    stale RECORD;
    newest RECORD;
BEGIN
    FOR stale IN
        SELECT l.sensor_id, l.metric FROM latest_values l
        JOIN (SELECT DISTINCT sensor_id, ts FROM deleted) d
            ON d.sensor_id = l.sensor_id AND d.ts = l.ts
        ORDER BY l.sensor_id, l.metric
        FOR UPDATE OF l
    LOOP
        SELECT r.ts, (r.metrics ->> stale.metric)::double precision AS value INTO newest
            FROM readings r
            WHERE r.sensor_id = stale.sensor_id AND r.metrics ->> stale.metric IS NOT NULL
            ORDER BY r.ts DESC, 2 DESC LIMIT 1;
        IF FOUND THEN
            UPDATE latest_values SET ts = newest.ts, value = newest.value
                WHERE sensor_id = stale.sensor_id AND metric = stale.metric;
        ELSE
            DELETE FROM latest_values
                WHERE sensor_id = stale.sensor_id AND metric = stale.metric;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER readings_forget_latest AFTER DELETE ON readings
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION readings_forget_latest();

-- Anomalies of one sensor newest first (GET /api/v1/anomalies?sensor_id) in index order.
CREATE INDEX anomalies_sensor_id ON anomalies (sensor_id, id);

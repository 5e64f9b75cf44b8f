-- Late data on TimescaleDB. A refresh policy only covers its own window and real-time aggregation only
-- reads rows above an aggregate's watermark, so a backlog delivered days late would never reach
-- telemetry_1m/telemetry_1h. Ingest marks the minutes each batch touched, as on the plain-PostgreSQL path,
-- and upkeep refreshes exactly those windows (cloud/db/timescale_upkeep.py).
CREATE TABLE IF NOT EXISTS rollup_dirty (
    instance text NOT NULL,
    bucket   timestamptz NOT NULL,
    PRIMARY KEY (instance, bucket)
);
CREATE TABLE IF NOT EXISTS rollup_pending (
    bucket timestamptz PRIMARY KEY
);
CREATE OR REPLACE FUNCTION ioc_take_dirty_rollups(grace interval DEFAULT interval '10 seconds')
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    taken integer;
BEGIN
    WITH moved AS (DELETE FROM rollup_dirty WHERE bucket + interval '1 minute' + grace < now() RETURNING bucket)
    INSERT INTO rollup_pending SELECT DISTINCT bucket FROM moved ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS taken = ROW_COUNT;
    RETURN taken;
END $$;

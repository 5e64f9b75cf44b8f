-- 1-minute and 1-hour rollups as tables. Ingest marks the minutes each batch touched in
-- rollup_dirty; ioc_refresh_rollups() recomputes exactly those buckets, so late backlog and
-- duplicates are handled (recompute, never increment). Same columns as the TimescaleDB aggregates.

CREATE TABLE IF NOT EXISTS telemetry_1m (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    n         bigint NOT NULL,
    total     double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    mean      double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);
CREATE INDEX IF NOT EXISTS telemetry_1m_bucket ON telemetry_1m (bucket);

CREATE TABLE IF NOT EXISTS telemetry_1h (LIKE telemetry_1m INCLUDING ALL);

-- Keyed by ingest instance too, so parallel ingest processes never wait on each other's rows.
CREATE TABLE IF NOT EXISTS rollup_dirty (
    instance text NOT NULL,
    bucket   timestamptz NOT NULL,
    PRIMARY KEY (instance, bucket)
);

-- Maintenance moves dirty minutes here in a short transaction, then recomputes them in another: ingest
-- never waits on a long recompute, and a failed recompute leaves its minutes here for the next run.
CREATE TABLE IF NOT EXISTS rollup_pending (
    bucket timestamptz PRIMARY KEY
);

-- Only complete minutes (plus a grace for stragglers) are taken, so live data is aggregated once per
-- minute instead of at every pass; late backlog marks its old minutes dirty again and is recomputed.
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

-- Recompute up to max_minutes pending minutes (oldest first) from the raw rows, then their hours.
-- One hour at a time: each pass is a single time-range scan (partition pruning, BRIN), never a join
-- of every dirty minute against the whole table.
CREATE OR REPLACE FUNCTION ioc_refresh_rollups(max_minutes integer DEFAULT 1440)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    minutes integer;
    h timestamptz;
    origin constant timestamptz := timestamptz '2000-01-01 00:00:00+00';
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS _dirty (bucket timestamptz PRIMARY KEY) ON COMMIT DELETE ROWS;
    WITH batch AS (
        SELECT bucket FROM rollup_pending ORDER BY bucket LIMIT max_minutes FOR UPDATE SKIP LOCKED
    ), taken AS (
        DELETE FROM rollup_pending p USING batch WHERE p.bucket = batch.bucket RETURNING p.bucket
    )
    INSERT INTO _dirty SELECT bucket FROM taken;
    GET DIAGNOSTICS minutes = ROW_COUNT;

    FOR h IN SELECT DISTINCT date_trunc('hour', bucket, 'UTC') FROM _dirty ORDER BY 1 LOOP
        INSERT INTO telemetry_1m AS r (bucket, device_id, metric, n, total, min, max, mean)
        SELECT date_bin('1 minute', t.ts, origin), t.device_id, t.metric,
               count(*), sum(t.value), min(t.value), max(t.value), avg(t.value)
        FROM telemetry t
        WHERE t.ts >= h AND t.ts < h + interval '1 hour'
          AND date_bin('1 minute', t.ts, origin) IN (
              SELECT bucket FROM _dirty WHERE bucket >= h AND bucket < h + interval '1 hour')
        GROUP BY 1, 2, 3
        ON CONFLICT (device_id, metric, bucket) DO UPDATE
            SET n = EXCLUDED.n, total = EXCLUDED.total, min = EXCLUDED.min, max = EXCLUDED.max,
                mean = EXCLUDED.mean;

        INSERT INTO telemetry_1h AS r (bucket, device_id, metric, n, total, min, max, mean)
        SELECT h, m.device_id, m.metric, sum(m.n), sum(m.total), min(m.min), max(m.max), sum(m.total) / sum(m.n)
        FROM telemetry_1m m
        WHERE m.bucket >= h AND m.bucket < h + interval '1 hour'
        GROUP BY m.device_id, m.metric
        ON CONFLICT (device_id, metric, bucket) DO UPDATE
            SET n = EXCLUDED.n, total = EXCLUDED.total, min = EXCLUDED.min, max = EXCLUDED.max,
                mean = EXCLUDED.mean;
    END LOOP;
    RETURN minutes;
END $$;

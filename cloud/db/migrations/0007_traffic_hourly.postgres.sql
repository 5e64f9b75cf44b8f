-- Hourly traffic counts per device, line, class and direction, for dashboards over long ranges (a 30-day
-- panel read raw traffic_counts: 276-569 ms at p95). Recomputed with the telemetry rollups from the minutes
-- ingest marks dirty (counts mark theirs too), so late backlog and redeliveries are handled the same way.

CREATE TABLE IF NOT EXISTS traffic_counts_1h (
    bucket    timestamptz NOT NULL,
    device_id text NOT NULL,
    line      text NOT NULL,
    cls       text NOT NULL,
    direction text NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (device_id, line, cls, direction, bucket)
);
CREATE INDEX IF NOT EXISTS traffic_counts_1h_bucket ON traffic_counts_1h (bucket);

INSERT INTO traffic_counts_1h (bucket, device_id, line, cls, direction, count)
SELECT date_trunc('hour', ts, 'UTC'), device_id, line, cls, direction, sum(count)
FROM traffic_counts GROUP BY 1, 2, 3, 4, 5
ON CONFLICT DO NOTHING;

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

        -- counts are few rows an hour (one per line, class and direction an interval): the whole hour again
        INSERT INTO traffic_counts_1h AS r (bucket, device_id, line, cls, direction, count)
        SELECT h, c.device_id, c.line, c.cls, c.direction, sum(c.count)
        FROM traffic_counts c
        WHERE c.ts >= h AND c.ts < h + interval '1 hour'
        GROUP BY c.device_id, c.line, c.cls, c.direction
        ON CONFLICT (device_id, line, cls, direction, bucket) DO UPDATE SET count = EXCLUDED.count;
    END LOOP;
    RETURN minutes;
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        GRANT SELECT ON traffic_counts_1h TO ioc_grafana;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant traffic_counts_1h to ioc_grafana: %', SQLERRM;
END $$;

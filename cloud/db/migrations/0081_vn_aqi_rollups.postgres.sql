-- The plain-PostgreSQL rollups also recompute the stored hourly VN_AQI (migration 0080) of the hours they
-- recomputed, in the same transaction: the function of migration 0007 plus its last statement.

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
    PERFORM ioc_refresh_vn_aqi(ARRAY(SELECT bucket FROM _dirty));
    RETURN minutes;
END $$;

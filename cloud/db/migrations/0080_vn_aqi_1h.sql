-- Hourly VN_AQI per station, stored: the dashboards read it instead of calling ioc_vn_aqi_hourly(), which
-- computes every station-hour citywide in PL/pgSQL before a panel can filter (3.4-3.8 s at 30 days for 50
-- stations). The rows are exactly what ioc_vn_aqi_hourly() returns where aqi is not NULL; upkeep recomputes
-- the hours that received data, and the 11 after each (their NowCast reads it), on both backends: the
-- plain path from ioc_refresh_rollups() (migration 0081), TimescaleDB from cloud/db/timescale_upkeep.py.
-- Kept as long as the hourly means it comes from (no retention of its own).

CREATE TABLE IF NOT EXISTS vn_aqi_1h (
    hour          timestamptz NOT NULL,
    device_id     text NOT NULL,
    pm25_nowcast  double precision,
    pm10_nowcast  double precision,
    aqi           integer NOT NULL,
    dominant      text NOT NULL,
    PRIMARY KEY (device_id, hour)
);
CREATE INDEX IF NOT EXISTS vn_aqi_1h_hour ON vn_aqi_1h (hour);

-- ioc_vn_aqi_hourly() of migration 0031, its hourly means now read with the range in the WHERE clause itself
-- (from a CTE the planner could not use it: every upkeep pass read the whole history of telemetry_1h, and
-- TimescaleDB excluded no chunk). The same rows: only the read of telemetry_1h changed.
CREATE OR REPLACE FUNCTION ioc_vn_aqi_hourly(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (hour timestamptz, device_id text, site text, pm25_nowcast double precision,
               pm10_nowcast double precision, aqi integer, dominant text)
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT date_trunc('hour', t_from, 'UTC') AS lo, date_trunc('hour', t_to, 'UTC') AS hi
    ), means AS (
        SELECT h.device_id, h.bucket, h.metric, h.mean
        FROM telemetry_1h h
        WHERE h.metric IN ('pm25', 'pm10') AND h.bucket >= date_trunc('hour', t_from, 'UTC') - interval '11 hours'
          AND h.bucket <= date_trunc('hour', t_to, 'UTC')
    ), grid AS (
        SELECT s.device_id, g.hour,
               max(m.mean) FILTER (WHERE m.metric = 'pm25') AS pm25,
               max(m.mean) FILTER (WHERE m.metric = 'pm10') AS pm10
        FROM (SELECT DISTINCT means.device_id FROM means) s
        CROSS JOIN bounds b
        CROSS JOIN LATERAL generate_series(b.lo - interval '11 hours', b.hi, interval '1 hour') AS g(hour)
        LEFT JOIN means m ON m.device_id = s.device_id AND m.bucket = g.hour
        GROUP BY s.device_id, g.hour
    ), windows AS (
        SELECT grid.device_id, grid.hour,
               ioc_nowcast(array_agg(grid.pm25) OVER w) AS n25,
               ioc_nowcast(array_agg(grid.pm10) OVER w) AS n10
        FROM grid
        WINDOW w AS (PARTITION BY grid.device_id ORDER BY grid.hour DESC ROWS BETWEEN CURRENT ROW AND 11 FOLLOWING)
    )
    SELECT w.hour, w.device_id, d.site, w.n25, w.n10,
           ioc_vn_aqi_round(greatest(ioc_vn_aqi_sub('pm25', w.n25), ioc_vn_aqi_sub('pm10', w.n10))),
           CASE WHEN w.n25 IS NULL AND w.n10 IS NULL THEN NULL
                WHEN coalesce(ioc_vn_aqi_sub('pm25', w.n25), -1) >= coalesce(ioc_vn_aqi_sub('pm10', w.n10), -1)
                THEN 'pm25' ELSE 'pm10' END
    FROM windows w
    JOIN devices d ON d.device_id = w.device_id
    CROSS JOIN bounds b
    WHERE w.hour >= b.lo
$$;

-- Recompute the hours whose hourly means changed (any timestamps in those hours): each one and the 11 after
-- it, merged into few ranges. Hours beyond the next one cannot have a NowCast without data of their own, so
-- a range stops an hour after the current hour (or after its newest hour, for data from the future).
CREATE OR REPLACE FUNCTION ioc_refresh_vn_aqi(hours timestamptz[])
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    k integer;
    total integer := 0;
    top constant timestamptz := date_trunc('hour', now(), 'UTC') + interval '1 hour';
BEGIN
    FOR r IN
        WITH hs AS (
            SELECT DISTINCT date_trunc('hour', t, 'UTC') AS h FROM unnest(hours) AS t WHERE t IS NOT NULL
        ), starts AS (
            SELECT h, coalesce(h - lag(h) OVER (ORDER BY h) > interval '12 hours', true) AS first FROM hs
        ), grouped AS (
            SELECT h, sum(first::integer) OVER (ORDER BY h) AS g FROM starts
        )
        SELECT min(h) AS lo, least(max(h) + interval '11 hours', greatest(top, max(h) + interval '1 hour')) AS hi
        FROM grouped GROUP BY g ORDER BY 1
    LOOP
        DELETE FROM vn_aqi_1h WHERE hour >= r.lo AND hour <= r.hi;
        INSERT INTO vn_aqi_1h (hour, device_id, pm25_nowcast, pm10_nowcast, aqi, dominant)
        SELECT q.hour, q.device_id, q.pm25_nowcast, q.pm10_nowcast, q.aqi, q.dominant
        FROM ioc_vn_aqi_hourly(r.lo, r.hi) q
        WHERE q.aqi IS NOT NULL;
        GET DIAGNOSTICS k = ROW_COUNT;
        total := total + k;
    END LOOP;
    RETURN total;
END $$;

-- What is already stored (nothing on a new database).
SELECT ioc_refresh_vn_aqi(ARRAY(
    SELECT g FROM (SELECT min(bucket) AS lo, max(bucket) AS hi FROM telemetry_1h WHERE metric IN ('pm25', 'pm10')) b,
    LATERAL generate_series(b.lo, b.hi, interval '1 hour') AS g));

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        GRANT SELECT ON vn_aqi_1h TO ioc_grafana;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant vn_aqi_1h to ioc_grafana: %', SQLERRM;
END $$;

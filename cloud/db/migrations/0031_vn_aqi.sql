-- VN_AQI (Decision 1459/QĐ-TCMT, 2019) in SQL, the same computation as cloud/alerts/aqi.py (the tests check
-- that both agree). Hourly means come from telemetry_1h (rollup table or continuous aggregate), so this works
-- on both backends and never scans raw rows.

-- Formula 1/2: linear interpolation in Table 2 (µg/m³); at or above the top breakpoint the index is 500.
CREATE OR REPLACE FUNCTION ioc_vn_aqi_sub(metric text, c double precision)
RETURNS double precision LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    idx constant double precision[] := ARRAY[0, 50, 100, 150, 200, 300, 400, 500];
    bp double precision[];
    x double precision;
BEGIN
    IF c IS NULL THEN
        RETURN NULL;
    END IF;
    bp := CASE metric
        WHEN 'pm25' THEN ARRAY[0, 25, 50, 80, 150, 250, 350, 500]::double precision[]
        WHEN 'pm10' THEN ARRAY[0, 50, 150, 250, 350, 420, 500, 600]::double precision[]
    END;
    IF bp IS NULL THEN
        RAISE EXCEPTION 'VN_AQI: no breakpoints for metric %', metric;
    END IF;
    x := greatest(c, 0);
    IF x >= bp[8] THEN
        RETURN 500;
    END IF;
    FOR i IN 1..7 LOOP
        IF x <= bp[i + 1] THEN
            RETURN (idx[i + 1] - idx[i]) / (bp[i + 1] - bp[i]) * (x - bp[i]) + idx[i];
        END IF;
    END LOOP;
    RETURN 500;
END $$;

-- NowCast (section 2.2.1 a) of hourly means, newest first (c[1] = current hour), NULL for a missing hour:
-- w = max(Cmin/Cmax, 1/2), weighted mean with weights w^(i-1), a missing hour weighing 0; NULL unless at
-- least 2 of c1..c3 are present.
CREATE OR REPLACE FUNCTION ioc_nowcast(c double precision[])
RETURNS double precision LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    recent integer := 0;
    cmin double precision;
    cmax double precision;
    w double precision;
    num double precision := 0;
    den double precision := 0;
BEGIN
    FOR i IN 1..3 LOOP
        IF c[i] IS NOT NULL THEN
            recent := recent + 1;
        END IF;
    END LOOP;
    IF recent < 2 THEN
        RETURN NULL;
    END IF;
    SELECT min(v), max(v) INTO cmin, cmax FROM unnest(c[1:12]) AS v;
    IF cmax <= 0 THEN
        RETURN 0;
    END IF;
    w := greatest(cmin / cmax, 0.5);
    FOR i IN 1..least(12, array_length(c, 1)) LOOP
        IF c[i] IS NOT NULL THEN
            num := num + w ^ (i - 1) * c[i];
            den := den + w ^ (i - 1);
        END IF;
    END LOOP;
    RETURN num / den;
END $$;

-- Rounding as people do it ("làm tròn thành số nguyên"): half away from zero.
CREATE OR REPLACE FUNCTION ioc_vn_aqi_round(x double precision)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT floor(x + 0.5)::integer $$;

-- AQI^h per station (device) and hour, for every hour bucket in [t_from, t_to] (hour = the bucket's start;
-- its c1 is that bucket's mean). NULL aqi where neither PM2.5 nor PM10 has a NowCast.
CREATE OR REPLACE FUNCTION ioc_vn_aqi_hourly(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (hour timestamptz, device_id text, site text, pm25_nowcast double precision,
               pm10_nowcast double precision, aqi integer, dominant text)
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT date_trunc('hour', t_from, 'UTC') AS lo, date_trunc('hour', t_to, 'UTC') AS hi
    ), means AS (
        SELECT h.device_id, h.bucket, h.metric, h.mean
        FROM telemetry_1h h, bounds b
        WHERE h.metric IN ('pm25', 'pm10') AND h.bucket >= b.lo - interval '11 hours' AND h.bucket <= b.hi
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

-- The band of an AQI value (Table 1), for panels and rules.
CREATE OR REPLACE FUNCTION ioc_vn_aqi_band(aqi integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN aqi IS NULL THEN NULL WHEN aqi <= 50 THEN 'good' WHEN aqi <= 100 THEN 'moderate'
                WHEN aqi <= 150 THEN 'poor' WHEN aqi <= 200 THEN 'bad' WHEN aqi <= 300 THEN 'very_bad'
                ELSE 'hazardous' END
$$;

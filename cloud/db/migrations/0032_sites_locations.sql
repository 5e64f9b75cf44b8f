-- Where devices are (the registry fills these; nullable until it does) and what each site's warning levels
-- are, for the City overview map, the Environment dashboard and `ioc report`.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS lat double precision;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS lon double precision;

CREATE TABLE IF NOT EXISTS sites (
    site              text PRIMARY KEY,
    name              text,
    lat               double precision,
    lon               double precision,
    noise_zone        text NOT NULL DEFAULT 'normal' CHECK (noise_zone IN ('special', 'normal')),  -- QCVN 26:2010
    water_warning_m   double precision,   -- water level alert levels of the site's gauge, metres
    water_alarm_m     double precision,
    water_danger_m    double precision
);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        GRANT SELECT ON sites TO ioc_grafana;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant sites to ioc_grafana: %', SQLERRM;
END $$;

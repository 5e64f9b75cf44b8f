-- Time series on plain PostgreSQL: daily range partitions made ahead, BRIN on time.
-- Every unique key includes ts (a partitioned table requires it) and makes writes idempotent.

CREATE TABLE IF NOT EXISTS telemetry (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (device_id, metric, ts)
) PARTITION BY RANGE (ts);
CREATE TABLE IF NOT EXISTS telemetry_default PARTITION OF telemetry DEFAULT;
CREATE INDEX IF NOT EXISTS telemetry_ts_brin ON telemetry USING brin (ts);

CREATE TABLE IF NOT EXISTS traffic_counts (
    ts         timestamptz NOT NULL,   -- start of the counting interval
    device_id  text NOT NULL,
    line       text NOT NULL,
    cls        text NOT NULL,
    direction  text NOT NULL,
    interval_s integer NOT NULL,
    count      integer NOT NULL,
    -- A box restarted inside an interval sends a second partial count for the same interval start:
    -- keyed by boot, both parts are kept (queries sum them) and a redelivered message is still ignored.
    boot_id    text NOT NULL DEFAULT '',
    PRIMARY KEY (device_id, line, cls, direction, ts, boot_id)
) PARTITION BY RANGE (ts);
CREATE TABLE IF NOT EXISTS traffic_counts_default PARTITION OF traffic_counts DEFAULT;
CREATE INDEX IF NOT EXISTS traffic_counts_ts_brin ON traffic_counts USING brin (ts);

CREATE TABLE IF NOT EXISTS events (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    kind      text NOT NULL,
    severity  text NOT NULL,
    details   jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (device_id, kind, ts)
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);

-- Create the daily partitions covering [first_day, last_day], moving any rows the default
-- partition already holds for those days (late backlog) into them.
CREATE OR REPLACE FUNCTION ioc_ensure_partitions(parent text, first_day date, last_day date)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    d date;
    lo timestamptz;
    hi timestamptz;
    part text;
    made integer := 0;
BEGIN
    FOR d IN SELECT g::date FROM generate_series(first_day, last_day, interval '1 day') g LOOP
        part := format('%s_p%s', parent, to_char(d, 'YYYYMMDD'));
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        lo := d::timestamp AT TIME ZONE 'UTC';
        hi := (d + 1)::timestamp AT TIME ZONE 'UTC';
        EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part, parent);
        EXECUTE format(
            'WITH moved AS (DELETE FROM %I WHERE ts >= %L AND ts < %L RETURNING *) INSERT INTO %I SELECT * FROM moved',
            parent || '_default', lo, hi, part);
        EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', parent, part, lo, hi);
        made := made + 1;
    END LOOP;
    RETURN made;
END $$;

-- Retention: drop whole daily partitions that end before the cutoff, trim the default partition.
CREATE OR REPLACE FUNCTION ioc_drop_partitions(parent text, cutoff timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r record;
    dropped integer := 0;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = parent::regclass AND c.relname ~ '_p[0-9]{8}$'
          AND (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= cutoff
    LOOP
        EXECUTE format('DROP TABLE %I', r.relname);
        dropped := dropped + 1;
    END LOOP;
    EXECUTE format('DELETE FROM %I WHERE ts < %L', parent || '_default', cutoff);
    RETURN dropped;
END $$;

SELECT ioc_ensure_partitions(t, (now() AT TIME ZONE 'UTC')::date - 7, (now() AT TIME ZONE 'UTC')::date + 7)
FROM unnest(ARRAY['telemetry', 'traffic_counts']) AS t;

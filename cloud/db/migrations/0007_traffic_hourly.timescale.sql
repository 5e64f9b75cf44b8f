-- Hourly traffic counts per device, line, class and direction, for dashboards over long ranges: a
-- continuous aggregate with real-time reads, the same columns as the plain-PostgreSQL rollup table.
-- Late counts: ingest marks their minutes dirty and upkeep refreshes those hours (cloud/db/timescale_upkeep.py).

CREATE MATERIALIZED VIEW IF NOT EXISTS traffic_counts_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 hour', ts) AS bucket, device_id, line, cls, direction, sum(count)::bigint AS count
FROM traffic_counts
GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;
SELECT add_continuous_aggregate_policy('traffic_counts_1h',
    start_offset => interval '90 days', end_offset => interval '1 hour',
    schedule_interval => interval '15 minutes', if_not_exists => true);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ioc_grafana') THEN
        GRANT SELECT ON traffic_counts_1h TO ioc_grafana;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'could not grant traffic_counts_1h to ioc_grafana: %', SQLERRM;
END $$;

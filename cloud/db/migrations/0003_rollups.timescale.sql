-- 1-minute and 1-hour continuous aggregates (the second built on the first), same columns as the
-- PostgreSQL rollup tables. Timescale keeps them current itself (refresh policies, real-time aggregation).

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 minute', ts) AS bucket, device_id, metric,
       count(*) AS n, sum(value) AS total, min(value) AS min, max(value) AS max, avg(value) AS mean
FROM telemetry
GROUP BY 1, 2, 3
WITH NO DATA;
SELECT add_continuous_aggregate_policy('telemetry_1m',
    start_offset => interval '90 days', end_offset => interval '1 minute',  -- backlog up to retention
    schedule_interval => interval '1 minute', if_not_exists => true);

CREATE MATERIALIZED VIEW IF NOT EXISTS telemetry_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(interval '1 hour', bucket) AS bucket, device_id, metric,
       sum(n) AS n, sum(total) AS total, min(min) AS min, max(max) AS max, sum(total) / sum(n) AS mean
FROM telemetry_1m
GROUP BY 1, 2, 3
WITH NO DATA;
SELECT add_continuous_aggregate_policy('telemetry_1h',
    start_offset => interval '90 days', end_offset => interval '1 hour',
    schedule_interval => interval '15 minutes', if_not_exists => true);

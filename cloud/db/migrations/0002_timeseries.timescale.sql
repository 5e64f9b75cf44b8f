-- Time series on TimescaleDB: hypertables with daily chunks, compression by device, retention.
-- Same tables and keys as the PostgreSQL path, so every query works on both.

CREATE TABLE IF NOT EXISTS telemetry (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    metric    text NOT NULL,
    value     double precision NOT NULL,
    PRIMARY KEY (device_id, metric, ts)
);
SELECT create_hypertable('telemetry', 'ts', chunk_time_interval => interval '1 day', if_not_exists => true);
ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('telemetry', interval '7 days', if_not_exists => true);
SELECT add_retention_policy('telemetry', interval '90 days', if_not_exists => true);

CREATE TABLE IF NOT EXISTS traffic_counts (
    ts         timestamptz NOT NULL,
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
);
SELECT create_hypertable('traffic_counts', 'ts', chunk_time_interval => interval '7 days', if_not_exists => true);
ALTER TABLE traffic_counts SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts DESC'
);
SELECT add_compression_policy('traffic_counts', interval '14 days', if_not_exists => true);
SELECT add_retention_policy('traffic_counts', interval '90 days', if_not_exists => true);

CREATE TABLE IF NOT EXISTS events (
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    kind      text NOT NULL,
    severity  text NOT NULL,
    details   jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (device_id, kind, ts)
);
SELECT create_hypertable('events', 'ts', chunk_time_interval => interval '30 days', if_not_exists => true);
SELECT add_retention_policy('events', interval '90 days', if_not_exists => true);

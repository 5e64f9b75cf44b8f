-- Registry and bookkeeping tables, the same on PostgreSQL and TimescaleDB.

CREATE TABLE IF NOT EXISTS ioc_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO ioc_settings (key, value) VALUES
    ('retention_days', '90'),          -- raw telemetry, counts and events
    ('partition_days_ahead', '7')
ON CONFLICT (key) DO NOTHING;

CREATE TABLE IF NOT EXISTS devices (
    device_id  text PRIMARY KEY,
    site       text NOT NULL,
    profile    text NOT NULL,
    name       text,
    metadata   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Birth / last will and liveness, one row per device.
CREATE TABLE IF NOT EXISTS device_status (
    device_id         text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    online            boolean NOT NULL DEFAULT false,
    boot_id           text,
    firmware          text,
    config_version    integer,
    status_ts         timestamptz,   -- device clock of the newest status message, orders birth vs will
    status_changed_at timestamptz,   -- when ingest received it
    last_seen         timestamptz,
    reason            text
);

-- What the device says it applied (cfg/v1/{device_id}/reported).
CREATE TABLE IF NOT EXISTS device_config_reported (
    device_id   text PRIMARY KEY REFERENCES devices ON DELETE CASCADE,
    version     integer,
    config      jsonb NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now()
);

-- Everything ingest could not store, with the reason; nothing is silently dropped.
CREATE TABLE IF NOT EXISTS dead_letters (
    id           bigserial PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    topic        text NOT NULL,
    device_id    text,
    reason       text NOT NULL,
    payload      bytea NOT NULL,
    payload_size integer NOT NULL,
    payload_hash bytea GENERATED ALWAYS AS (sha256(payload)) STORED
);
CREATE INDEX IF NOT EXISTS dead_letters_received_at ON dead_letters (received_at);
-- A redelivered bad message (ingest restarted before acknowledging it) is recorded once.
CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_once ON dead_letters (topic, payload_hash);

-- Each ingest process reports its counters here every few seconds (`ioc status`).
CREATE TABLE IF NOT EXISTS ingest_instances (
    instance     text PRIMARY KEY,
    host         text,
    started_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    messages     bigint NOT NULL DEFAULT 0,
    points       bigint NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0,
    msg_rate     double precision NOT NULL DEFAULT 0,
    point_rate   double precision NOT NULL DEFAULT 0,
    latency_p50_ms double precision,
    latency_p99_ms double precision,
    lag_ms       double precision,
    in_flight    integer NOT NULL DEFAULT 0,
    db_ok        boolean NOT NULL DEFAULT true,
    last_error   text
);

-- The registry API: device identity and placement, API tokens, the audit log, the twin's desired
-- config versions and remote commands. Devices are retired, never deleted: their data stays.

ALTER TABLE devices ADD COLUMN IF NOT EXISTS lat double precision CHECK (lat BETWEEN -90 AND 90);
ALTER TABLE devices ADD COLUMN IF NOT EXISTS lon double precision CHECK (lon BETWEEN -180 AND 180);
ALTER TABLE devices ADD COLUMN IF NOT EXISTS tags text[] NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN IF NOT EXISTS installed_at timestamptz;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS firmware text;       -- what the technician installed
ALTER TABLE devices ADD COLUMN IF NOT EXISTS retired_at timestamptz;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS devices_site ON devices (site, device_id);
CREATE INDEX IF NOT EXISTS devices_tags ON devices USING gin (tags);

-- A device's newest ingest complaint is its "last error".
CREATE INDEX IF NOT EXISTS dead_letters_device ON dead_letters (device_id, received_at);

-- Bearer tokens: only a SHA-256 of the (256-bit random) secret is stored; the secret is shown once.
CREATE TABLE IF NOT EXISTS api_tokens (
    token_id   text PRIMARY KEY,
    name       text NOT NULL,
    role       text NOT NULL CHECK (role IN ('viewer', 'technician', 'admin')),
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    revoked_at timestamptz
);

CREATE TABLE IF NOT EXISTS audit_log (
    id     bigserial PRIMARY KEY,
    ts     timestamptz NOT NULL DEFAULT now(),
    actor  text NOT NULL,          -- token name and id
    action text NOT NULL,          -- e.g. device.create, config.desired, command.send
    target text,                   -- e.g. the device id
    before jsonb,
    after  jsonb
);
CREATE INDEX IF NOT EXISTS audit_log_target ON audit_log (target, id);

-- Every desired-config change is a new version; the newest is retained on cfg/v1/{id}/desired.
CREATE TABLE IF NOT EXISTS device_config_desired (
    device_id  text NOT NULL REFERENCES devices ON DELETE CASCADE,
    version    integer NOT NULL,
    settings   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    PRIMARY KEY (device_id, version)
);

CREATE TABLE IF NOT EXISTS device_commands (
    command_id      uuid PRIMARY KEY,
    device_id       text NOT NULL REFERENCES devices ON DELETE CASCADE,
    command         text NOT NULL,
    args            jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL CHECK (status IN
                        ('pending', 'delivered', 'ok', 'failed', 'timed_out', 'expired')),
    idempotency_key text,
    actor           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    completed_at    timestamptz,
    timeout_s       double precision NOT NULL,
    expires_at      timestamptz NOT NULL,
    result          jsonb,
    error           text,
    image           bytea,          -- a snapshot's JPEG, served as image/jpeg
    UNIQUE (device_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS device_commands_open ON device_commands (status) WHERE status IN ('pending', 'delivered');
CREATE INDEX IF NOT EXISTS device_commands_device ON device_commands (device_id, created_at);

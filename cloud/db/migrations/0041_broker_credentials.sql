-- Broker credentials the registry issues (ioc.stack.broker_auth renders them into Mosquitto's password
-- file). Only Mosquitto-format PBKDF2-SHA512 hashes are stored; a password is shown once.
CREATE TABLE IF NOT EXISTS broker_credentials (
    username      text PRIMARY KEY,           -- a device's is its device id (the ACL patterns use %u)
    device_id     text REFERENCES devices ON DELETE CASCADE,
    role          text NOT NULL CHECK (role IN ('device', 'ingest', 'registry', 'admin')),
    password_hash text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- Certificate rotation with a grace period: signing a new certificate for a device keeps its earlier ones
-- valid until grace_until; then the registry puts them on the CRL (revoked_at) and reloads the broker
-- (cloud/api/credentials.py, BrokerAuth.expire_forever and apply).
ALTER TABLE device_certificates ADD COLUMN IF NOT EXISTS grace_until timestamptz;
CREATE INDEX IF NOT EXISTS device_certificates_grace ON device_certificates (grace_until)
    WHERE revoked_at IS NULL AND grace_until IS NOT NULL;

-- Client certificates the registry signed for mutual TLS (cloud/api/routes/certificates.py). Retiring a
-- device revokes its certificates: the broker's CRL (ioc.stack.tls.render_crl) lists their serials.
CREATE TABLE IF NOT EXISTS device_certificates (
    serial     numeric PRIMARY KEY,       -- X.509 serials are up to 20 bytes: more than a bigint
    device_id  text NOT NULL REFERENCES devices ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    not_after  timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX IF NOT EXISTS device_certificates_device ON device_certificates (device_id);

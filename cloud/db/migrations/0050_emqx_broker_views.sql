-- EMQX reads the registry's broker credentials and ACLs straight from PostgreSQL (docs/security.md):
-- its built-in PostgreSQL authentication and authorisation query these two views.
--   authentication: SELECT password_hash, salt, is_superuser FROM emqx_authn WHERE username = ${username} LIMIT 1
--     password_hash_algorithm {name = pbkdf2, mac_fun = sha512, iterations = 101, dk_length = 64}
--   authorisation:  SELECT permission, action, topic FROM emqx_acl WHERE username = ${username}
-- Same hashes (Mosquitto's $7$: PBKDF2-SHA512, 101 iterations) and same rules as ioc/stack/broker_auth.py
-- (tests/security/test_emqx_views.py checks both against it). Roles of the stack's services may live here too.
ALTER TABLE broker_credentials DROP CONSTRAINT IF EXISTS broker_credentials_role_check;
ALTER TABLE broker_credentials ADD CONSTRAINT broker_credentials_role_check
    CHECK (role IN ('device', 'ingest', 'registry', 'alerts', 'fleet', 'admin'));

CREATE TABLE IF NOT EXISTS broker_acl_rules (
    role       text NOT NULL,
    permission text NOT NULL DEFAULT 'allow' CHECK (permission IN ('allow', 'deny')),
    action     text NOT NULL CHECK (action IN ('publish', 'subscribe', 'all')),
    topic      text NOT NULL,          -- %u stands for the username (a device's is its id)
    PRIMARY KEY (role, action, topic)
);

INSERT INTO broker_acl_rules (role, action, topic) VALUES
    ('device', 'publish', 'tlm/v1/+/%u/#'), ('device', 'publish', 'evt/v1/+/%u/#'),
    ('device', 'all', 'state/v1/%u'), ('device', 'publish', 'cfg/v1/%u/reported'),
    ('device', 'subscribe', 'cfg/v1/%u/desired'), ('device', 'subscribe', 'cmd/v1/%u/#'),
    ('device', 'publish', 'rsp/v1/%u/#'), ('device', 'subscribe', 'ack/v1/%u'),
    ('ingest', 'subscribe', 'tlm/v1/#'), ('ingest', 'subscribe', 'evt/v1/#'), ('ingest', 'subscribe', 'state/v1/#'),
    ('ingest', 'subscribe', 'cfg/v1/+/reported'), ('ingest', 'publish', 'ack/v1/+'),
    ('registry', 'publish', 'cfg/v1/+/desired'), ('registry', 'publish', 'cmd/v1/#'),
    ('registry', 'subscribe', 'rsp/v1/#'),
    ('alerts', 'publish', 'alr/v1/#'),
    ('fleet', 'publish', 'tlm/v1/#'), ('fleet', 'publish', 'evt/v1/#'), ('fleet', 'all', 'state/v1/#'),
    ('fleet', 'publish', 'cfg/v1/+/reported'), ('fleet', 'subscribe', 'cfg/v1/+/desired'),
    ('fleet', 'subscribe', 'cmd/v1/#'), ('fleet', 'publish', 'rsp/v1/#'), ('fleet', 'subscribe', 'ack/v1/+'),
    ('admin', 'all', '#'), ('admin', 'subscribe', '$SYS/#')
ON CONFLICT DO NOTHING;

CREATE OR REPLACE VIEW emqx_authn AS
SELECT c.username,
       encode(decode(split_part(c.password_hash, '$', 5), 'base64'), 'hex') AS password_hash,
       decode(split_part(c.password_hash, '$', 4), 'base64') AS salt,
       c.role = 'admin' AS is_superuser
FROM broker_credentials c
LEFT JOIN devices d ON d.device_id = c.device_id
WHERE c.revoked_at IS NULL AND split_part(c.password_hash, '$', 3) = '101'
  AND (c.device_id IS NULL OR d.retired_at IS NULL);

CREATE OR REPLACE VIEW emqx_acl AS
SELECT c.username, r.permission, r.action, replace(r.topic, '%u', c.username) AS topic
FROM broker_credentials c
JOIN broker_acl_rules r ON r.role = c.role
WHERE c.revoked_at IS NULL;

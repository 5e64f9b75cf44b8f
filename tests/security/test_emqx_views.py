"""The SQL views EMQX's PostgreSQL authentication and authorisation would query (migration 0050): the same
hashes and the same rules the local stack's Mosquitto enforces (ioc/stack/broker_auth.py)."""

from __future__ import annotations

import hashlib
import uuid

import psycopg

from cloud.db.devices import register_devices
from ioc.stack import Stack
from ioc.stack import broker_auth as ba

MOSQUITTO_TO_EMQX = {"read": "subscribe", "write": "publish", "readwrite": "all"}


def _rules(lines: list[str], username: str) -> set[tuple[str, str, str]]:
    """Mosquitto ACL lines ("pattern write tlm/v1/+/%u/#", "topic read ...") as EMQX rows."""
    out = set()
    for line in lines:
        _, access, topic = line.split(" ", 2)
        out.add(("allow", MOSQUITTO_TO_EMQX[access], topic.replace("%u", username)))
    return out


def test_emqx_views_match_the_mosquitto_files(stack: Stack, db: psycopg.Connection) -> None:
    device = f"emqx-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, [(device, "district-01", "env-gateway")])
    service = f"ingest-{uuid.uuid4().hex[:6]}"
    db.execute("INSERT INTO broker_credentials (username, device_id, role, password_hash) VALUES"
               " (%s, %s, 'device', %s), (%s, NULL, 'ingest', %s)",
               (device, device, ba.hash_password("dev-pw"), service, ba.hash_password("svc-pw")))

    row = db.execute("SELECT password_hash, salt, is_superuser FROM emqx_authn WHERE username = %s LIMIT 1",
                     (device,)).fetchone()
    assert row is not None
    password_hash, salt, superuser = row
    assert hashlib.pbkdf2_hmac("sha512", b"dev-pw", bytes(salt), 101).hex() == password_hash  # EMQX's check
    assert hashlib.pbkdf2_hmac("sha512", b"wrong", bytes(salt), 101).hex() != password_hash
    assert superuser is False

    acl = set(db.execute("SELECT permission, action, topic FROM emqx_acl WHERE username = %s", (device,)).fetchall())
    assert acl == _rules(ba.DEVICE_PATTERNS, device)
    svc_acl = set(db.execute("SELECT permission, action, topic FROM emqx_acl WHERE username = %s",
                             (service,)).fetchall())
    assert svc_acl == _rules(ba.SERVICE_ACL["ingest"], service)
    for role in ("registry", "alerts", "fleet", "admin"):  # every role's rules are in the table, none missing
        rows = set(db.execute("SELECT permission, action, topic FROM broker_acl_rules WHERE role = %s",
                              (role,)).fetchall())
        assert rows == _rules(ba.SERVICE_ACL[role], "%u"), role

    db.execute("UPDATE devices SET retired_at = now() WHERE device_id = %s", (device,))
    assert db.execute("SELECT count(*) FROM emqx_authn WHERE username = %s", (device,)).fetchone() == (0,)
    db.execute("UPDATE broker_credentials SET revoked_at = now() WHERE username = %s", (service,))
    assert db.execute("SELECT count(*) FROM emqx_acl WHERE username = %s", (service,)).fetchone() == (0,)

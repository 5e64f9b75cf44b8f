"""Certificate grace periods with several API processes (`ioc api --workers N`): each checks for expired
graces, and a certificate is revoked, put on the CRL and audited once, whichever process gets there first."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
from api_helpers import new_device
from cryptography import x509
from support import mqtt_login, serve, wait_until

from cloud.api.settings import ApiSettings
from ioc.stack import Stack, tls
from tests.security.test_broker_tls import _csr


def _crl_serials(ca: Path) -> set[int]:
    return {r.serial_number for r in x509.load_pem_x509_crl((ca / tls.CRL).read_bytes())}


def test_two_api_processes_revoke_an_expired_grace_once(
        stack: Stack, db: psycopg.Connection, as_role: Callable[[str], httpx.Client], tmp_path: Path) -> None:
    ca = tmp_path / "tls"
    tls.ensure(ca)
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           client_id=f"registry-grace-{uuid.uuid4().hex[:6]}", broker_auth_dir=tmp_path / "auth",
                           broker_ca_dir=ca, certificate_check_interval_s=0.1, **mqtt_login(stack, "registry"))
    servers = [serve(settings) for _ in range(2)]
    headers = as_role("technician").headers
    try:
        with httpx.Client(base_url=servers[0][1], headers=headers, timeout=30) as one, \
                httpx.Client(base_url=servers[1][1], headers=headers, timeout=30) as two:
            device_id = new_device(one, "grace")["device_id"]
            serials = []
            for n, api in enumerate((one, two)):
                (tmp_path / str(n)).mkdir()
                r = api.post(f"/devices/{device_id}/certificate",
                             json={"csr": _csr(device_id, tmp_path / str(n))[0], "grace_s": 3600})
                assert r.status_code == 201, r.text
                serials.append(int(r.json()["serial"]))
            assert [c["serial"] for c in r.json()["superseded"]] == [str(serials[0])]

            db.execute("UPDATE device_certificates SET grace_until = now() WHERE serial = %s", (serials[0],))
            wait_until(lambda: serials[0] in _crl_serials(ca), what="the expired certificate on the CRL")
            assert serials[1] not in _crl_serials(ca)
            new_device(two, "grace")  # the other process renders too, after the first revoked it
            audit = one.get("/audit", params={"target": device_id, "action": "certificate.revoke"}).json()
            assert [e["after"]["serial"] for e in audit["items"]] == [str(serials[0])]
    finally:
        for server, _ in servers:
            server.stop()

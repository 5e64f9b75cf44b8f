"""Certificate grace periods with several API processes (`ioc api --workers N`): each checks for expired
graces, and a certificate is revoked, put on the CRL and audited once, whichever process gets there first.
A revocation whose CRL could not be written reaches the CRL later, by a retry or without any request."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _settings(stack: Stack, tmp_path: Path, check_interval_s: float) -> ApiSettings:
    """A registry signing with its own CA into its own folder (no broker to reload)."""
    ca = tmp_path / "tls"
    tls.ensure(ca)
    return ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                       client_id=f"registry-grace-{uuid.uuid4().hex[:6]}", broker_auth_dir=tmp_path / "auth",
                       broker_ca_dir=ca, certificate_check_interval_s=check_interval_s,
                       **mqtt_login(stack, "registry"))


def _sign(api: httpx.Client, device_id: str, folder: Path, **body: int) -> int:
    folder.mkdir()
    r = api.post(f"/devices/{device_id}/certificate", json={"csr": _csr(device_id, folder)[0], **body})
    assert r.status_code == 201, r.text
    return int(r.json()["serial"])


def _unwritable_crl(ca: Path) -> Path:
    """What a full disk or a wrong owner does to the render: the CRL's temporary file cannot be created."""
    blocker = ca / (tls.CRL + ".tmp")
    blocker.mkdir()
    return blocker


def _refused_as_recorded(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert "recorded" in r.json()["detail"]


def test_two_api_processes_revoke_an_expired_grace_once(
        stack: Stack, db: psycopg.Connection, as_role: Callable[[str], httpx.Client], tmp_path: Path) -> None:
    settings = _settings(stack, tmp_path, 0.1)
    ca = settings.broker_ca_dir
    assert ca is not None
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


@contextmanager
def _registry_with_a_device(stack: Stack, as_role: Callable[[str], httpx.Client], tmp_path: Path,
                            check_interval_s: float) -> Iterator[tuple[httpx.Client, Path, str]]:
    """A technician's client to a registry of its own (its CA folder) and a new device on it."""
    settings = _settings(stack, tmp_path, check_interval_s)
    ca = settings.broker_ca_dir
    assert ca is not None
    server, url = serve(settings)
    try:
        with httpx.Client(base_url=url, headers=as_role("technician").headers, timeout=30) as api:
            yield api, ca, new_device(api, "crl")["device_id"]
    finally:
        server.stop()


def test_revocation_whose_crl_failed_reaches_it_without_another_request(
        stack: Stack, as_role: Callable[[str], httpx.Client], tmp_path: Path) -> None:
    with _registry_with_a_device(stack, as_role, tmp_path, 0.1) as (api, ca, device_id):
        first = _sign(api, device_id, tmp_path / "1")
        blocker = _unwritable_crl(ca)
        _refused_as_recorded(api.delete(f"/devices/{device_id}/certificates/{first}"))
        second = _sign(api, device_id, tmp_path / "2")
        _refused_as_recorded(api.post(f"/devices/{device_id}/certificate", json={
            "csr": _csr(device_id, tmp_path / "2")[0], "grace_s": 0}))  # revokes `second` at once
        statuses = {c["serial"]: c["status"] for c in api.get(f"/devices/{device_id}/certificates").json()}
        assert statuses[str(first)] == statuses[str(second)] == "revoked"  # committed, whatever the CRL
        assert not {first, second} & _crl_serials(ca)

        blocker.rmdir()  # the disk has room again: no request follows
        wait_until(lambda: {first, second} <= _crl_serials(ca), what="the revoked serials on the CRL")


def test_repeating_a_revocation_whose_crl_failed_renders_it(
        stack: Stack, as_role: Callable[[str], httpx.Client], tmp_path: Path) -> None:
    # The periodic check stays out of the way (600 s).
    with _registry_with_a_device(stack, as_role, tmp_path, 600) as (api, ca, device_id):
        serial = _sign(api, device_id, tmp_path / "1")
        blocker = _unwritable_crl(ca)
        _refused_as_recorded(api.delete(f"/devices/{device_id}/certificates/{serial}"))
        blocker.rmdir()
        r = api.delete(f"/devices/{device_id}/certificates/{serial}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "revoked"
        assert serial in _crl_serials(ca)
        audit = api.get("/audit", params={"target": device_id, "action": "certificate.revoke"}).json()
        assert [e["after"]["serial"] for e in audit["items"]] == [str(serial)]  # revoked once

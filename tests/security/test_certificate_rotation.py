"""Certificate rotation with a grace period on the stack's real broker (mutual-TLS port): the old
certificate keeps connecting during the grace and is refused after it, without any request (the API's own
periodic check puts it on the CRL and reloads the broker); the new one keeps working; revoke-now works."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID
from support import tls_connack, wait_until
from test_broker_tls import _csr, _new

from ioc.stack import Stack, tls

REFUSED = Path(__file__).parent / "csr"  # made with openssl: see its README


def _box(tech: httpx.Client, device_id: str, tmp: Path, name: str, **body: int) -> tuple[str, ssl.SSLContext]:
    """A box's new key and the certificate the registry signs for it: (serial, TLS context holding both)."""
    folder = tmp / name
    folder.mkdir()
    csr, key_file = _csr(device_id, folder)
    r = tech.post(f"/devices/{device_id}/certificate", json={"csr": csr, **body})
    assert r.status_code == 201, r.text
    (folder / "box.crt").write_text(r.json()["certificate"])
    ctx = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    ctx.load_cert_chain(str(folder / "box.crt"), str(key_file))
    return r.json()["serial"], ctx


def _statuses(tech: httpx.Client, device_id: str) -> dict[str, str]:
    r = tech.get(f"/devices/{device_id}/certificates")
    assert r.status_code == 200, r.text
    return {c["serial"]: c["status"] for c in r.json()}


def test_rotated_certificate_works_during_grace_and_is_refused_after(
        stack: Stack, tech: httpx.Client, db: psycopg.Connection, tmp_path: Path) -> None:
    port = stack.mosquitto.mtls_port
    (tmp_path / "ca.crt").write_bytes((stack.mosquitto.tls_dir / tls.CA_CERT).read_bytes())
    device_id, _ = _new(tech, "rotation")
    old_serial, old = _box(tech, device_id, tmp_path, "old")
    assert tls_connack(port, old)

    new_serial, new = _box(tech, device_id, tmp_path, "new", grace_s=3600)
    assert _statuses(tech, device_id) == {old_serial: "grace", new_serial: "valid"}
    assert tls_connack(port, old), "the old certificate must keep working during the grace period"
    assert tls_connack(port, new)

    # The grace period passes (the clock moved on): nothing but the API's own periodic check acts on it.
    db.execute("UPDATE device_certificates SET grace_until = now() WHERE serial = %s", (int(old_serial),))
    wait_until(lambda: not tls_connack(port, old), what="the rotated-out certificate refused after its grace")
    assert tls_connack(port, new)
    assert _statuses(tech, device_id) == {old_serial: "revoked", new_serial: "valid"}
    audit = tech.get("/audit", params={"target": device_id}).json()
    revokes = [e for e in audit["items"] if e["action"] == "certificate.revoke"]
    assert [(e["after"]["serial"], e["actor"]) for e in revokes] == [(old_serial, "registry (grace-expiry)")]

    # grace_s 0 revokes the earlier certificate at once; revoke-now works on any one.
    third_serial, third = _box(tech, device_id, tmp_path, "third", grace_s=0)
    wait_until(lambda: not tls_connack(port, new), what="the certificate replaced with grace_s 0 refused")
    assert tls_connack(port, third)
    audit = tech.get("/audit", params={"target": device_id, "action": "certificate.revoke"}).json()
    reasons = {e["after"]["serial"]: e["after"]["reason"] for e in audit["items"]}
    assert reasons == {old_serial: "grace period over", new_serial: f"superseded by {third_serial} with grace_s 0"}
    r = tech.delete(f"/devices/{device_id}/certificates/{third_serial}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "revoked"
    wait_until(lambda: not tls_connack(port, third), what="the revoked-now certificate refused")
    assert tech.delete(f"/devices/{device_id}/certificates/{third_serial}").status_code == 200  # harmless twice


def test_certificate_rotation_refuses_bad_input(tech: httpx.Client, tmp_path: Path) -> None:
    device_id, _ = _new(tech, "rotation")
    csr, _ = _csr(device_id, tmp_path)
    for grace_s in (8 * 86_400, "60", True, 60.5):
        bad_grace = tech.post(f"/devices/{device_id}/certificate", json={"csr": csr, "grace_s": grace_s})
        assert bad_grace.status_code == 422, (grace_s, bad_grace.text)
        assert "grace_s" in bad_grace.json()["detail"]
    assert tech.get(f"/devices/{device_id}/certificates").json() == []  # nothing signed
    assert tech.delete(f"/devices/{device_id}/certificates/12345").status_code == 404
    bad = tech.delete(f"/devices/{device_id}/certificates/not-a-serial")
    assert bad.status_code == 422
    assert "serial" in bad.json()["detail"]
    assert tech.get("/devices/no-such-device/certificates").status_code == 404


@pytest.mark.parametrize(("csr_file", "said"), [
    ("e112.csr", "Curve 1.3.132.0.6 is not supported"), ("r512.csr", "RSA of 512 bits"), ("dsa.csr", "DSA"),
    ("md5.csr", "signed with MD5, which is refused"), ("sha1.csr", "signed with SHA1, which is refused")])
def test_weak_or_unsupported_csr_is_refused_and_the_working_certificate_stays(
        tech: httpx.Client, tmp_path: Path, csr_file: str, said: str) -> None:
    device_id, _ = _new(tech, "rotation")
    working = tech.post(f"/devices/{device_id}/certificate", json={"csr": _csr(device_id, tmp_path)[0]})
    assert working.status_code == 201, working.text
    r = tech.post(f"/devices/{device_id}/certificate", json={"csr": (REFUSED / csr_file).read_text(), "grace_s": 0})
    assert r.status_code == 422, r.text
    assert said in r.json()["detail"]
    if not csr_file.startswith(("md5", "sha1")):
        assert tls.ACCEPTED_KEYS in r.json()["detail"]
    assert _statuses(tech, device_id) == {working.json()["serial"]: "valid"}


@pytest.mark.parametrize("key", [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP384R1())],
                         ids=["ed25519", "p384"])
def test_ed25519_and_p384_keys_are_signed(tech: httpx.Client, key: ed25519.Ed25519PrivateKey
                                          | ec.EllipticCurvePrivateKey) -> None:
    device_id, _ = _new(tech, "rotation")
    digest = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(key, digest))
    r = tech.post(f"/devices/{device_id}/certificate",
                  json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()})
    assert r.status_code == 201, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    assert cert.public_key() == key.public_key()


def test_device_named_as_a_stack_service_gets_no_certificate_or_password(
        tech: httpx.Client, db: psycopg.Connection, tmp_path: Path) -> None:
    """A `bench` device registered before such ids were refused: a credential for it would replace the
    stack's own `bench` login on the broker."""
    db.execute("INSERT INTO devices (device_id, site, profile) VALUES ('bench', 'legacy', 'env-gateway')"
               " ON CONFLICT DO NOTHING")
    try:
        sign = tech.post("/devices/bench/certificate", json={"csr": _csr("bench", tmp_path)[0]})
        assert sign.status_code == 422, sign.text
        assert "broker login of a stack service" in sign.json()["detail"]
        assert tech.post("/devices/bench/credentials").status_code == 422
        assert tech.get("/devices/bench/certificates").json() == []
    finally:
        db.execute("DELETE FROM devices WHERE device_id = 'bench' AND site = 'legacy'")


def test_retiring_revokes_and_audits_each_certificate(tech: httpx.Client, tmp_path: Path) -> None:
    device_id, _ = _new(tech, "rotation")
    serials = []
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        r = tech.post(f"/devices/{device_id}/certificate", json={"csr": _csr(device_id, tmp_path / str(n))[0]})
        assert r.status_code == 201, r.text
        serials.append(r.json()["serial"])
    assert tech.delete(f"/devices/{device_id}").status_code == 200
    assert _statuses(tech, device_id) == dict.fromkeys(serials, "revoked")
    audit = tech.get("/audit", params={"target": device_id, "action": "certificate.revoke"}).json()
    assert sorted((e["after"]["serial"], e["after"]["reason"]) for e in audit["items"]) == sorted(
        (s, "device retired") for s in serials)

"""The devices' TLS ports of the stack's broker, end to end with a real edge agent and real ingest:
TLS with a password, and mutual TLS with a certificate the registry signed from the box's CSR (the
private key stays on the box; the broker takes the certificate's CN as the username)."""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import tls_connack, wait_until

from cloud.ingest.service import IngestService
from edge.agent import Agent
from edge.config import DeviceConfig
from ioc.stack import Stack, tls


def _new(tech: httpx.Client, site: str) -> tuple[str, str]:
    device_id = f"tls-{uuid.uuid4().hex[:8]}"
    r = tech.post("/devices", json={"device_id": device_id, "site": site, "profile": "env-gateway"})
    assert r.status_code == 201, r.text
    return device_id, r.json()["credentials"][device_id]


@pytest.fixture
def run_agent() -> Iterator[Any]:
    running: list[tuple[Agent, threading.Thread]] = []

    def start(config: dict[str, Any]) -> Agent:
        agent = Agent(DeviceConfig.model_validate(config))
        t = threading.Thread(target=agent.run, daemon=True)
        t.start()
        running.append((agent, t))
        return agent

    yield start
    for agent, t in running:
        agent.stop()
        t.join(30)


def _config(device_id: str, site: str, port: int, tmp: Path, tls_cfg: dict[str, Any], **login: str) -> dict[str, Any]:
    return {"device_id": device_id, "site": site, "profile": "env-gateway",
            "broker": {"host": "127.0.0.1", "port": port, "backoff_min_s": 0.05, "backoff_max_s": 0.5,
                       "tls": tls_cfg, **login},
            "outbox": {"path": str(tmp / f"{device_id}.sqlite3"), "sync": "normal"},
            "sensors": [{"type": "simulated", "metrics": ["pm25"], "seed": 1}],
            "settings": {"heartbeat_s": 0.5, "metrics": {"pm25": {"interval_s": 0.2}}}}


def _count(db: psycopg.Connection, device_id: str) -> int:
    row = db.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (device_id,)).fetchone()
    return int(row[0]) if row else 0


def test_edge_agent_over_tls_with_its_password(stack: Stack, tech: httpx.Client, ingest: IngestService,
                                              db: psycopg.Connection, run_agent: Any, tmp_path: Path) -> None:
    site = f"tls-{uuid.uuid4().hex[:6]}"
    device_id, password = _new(tech, site)
    ca = str(stack.mosquitto.tls_dir / tls.CA_CERT)
    ctx = ssl.create_default_context(cafile=ca)
    assert not tls_connack(stack.mosquitto.tls_port, ctx)  # anonymous, even over TLS
    assert not tls_connack(stack.mosquitto.tls_port, ssl.create_default_context())  # a client not trusting our CA
    run_agent(_config(device_id, site, stack.mosquitto.tls_port, tmp_path, {"ca_file": ca},
                      username=device_id, password=password))
    wait_until(lambda: _count(db, device_id) >= 3, what="telemetry over TLS ingested")


def _csr(device_id: str, tmp: Path) -> tuple[str, Path]:
    """What a box does: make its key (kept on the box) and a CSR (sent to the registry)."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp / "box.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode(), key_file


def test_edge_agent_over_mutual_tls_with_a_signed_csr(stack: Stack, tech: httpx.Client, ingest: IngestService,
                                                     db: psycopg.Connection, run_agent: Any,
                                                     tmp_path: Path) -> None:
    site = f"mtls-{uuid.uuid4().hex[:6]}"
    (device_id, _), (other_id, _) = _new(tech, site), _new(tech, site)
    csr, key_file = _csr(other_id, tmp_path)  # the CSR asks for another device's name...
    r = tech.post(f"/devices/{device_id}/certificate", json={"csr": csr})
    assert r.status_code == 201, r.text
    cert = x509.load_pem_x509_certificate(r.json()["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id  # ...and gets its own
    assert b"PRIVATE KEY" not in r.content
    (tmp_path / "box.crt").write_text(r.json()["certificate"])
    (tmp_path / "ca.crt").write_text(r.json()["ca"])
    bad = tech.post(f"/devices/{device_id}/certificate", json={"csr": "not a csr"})
    assert bad.status_code == 422
    assert "PEM" in bad.json()["detail"]

    no_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    assert not tls_connack(stack.mosquitto.mtls_port, no_cert)  # the mutual-TLS port wants a certificate
    tls_cfg = {"ca_file": str(tmp_path / "ca.crt"), "cert_file": str(tmp_path / "box.crt"),
               "key_file": str(key_file)}
    run_agent(_config(device_id, site, stack.mosquitto.mtls_port, tmp_path, tls_cfg))
    wait_until(lambda: _count(db, device_id) >= 3, what="telemetry over mutual TLS ingested")
    # The certificate is the device's identity: posing as the other device with it gets nothing in.
    run_agent(_config(other_id, site, stack.mosquitto.mtls_port, tmp_path, tls_cfg))
    wait_until(lambda: _count(db, device_id) >= 10, what="more of the real device's telemetry")
    assert _count(db, other_id) == 0

    # Retired: its certificate goes on the broker's CRL; the next handshake with it fails.
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with_cert.load_cert_chain(str(tmp_path / "box.crt"), str(key_file))
    assert tls_connack(stack.mosquitto.mtls_port, with_cert)
    assert tech.delete(f"/devices/{device_id}").status_code == 200
    wait_until(lambda: not tls_connack(stack.mosquitto.mtls_port, with_cert), what="the retired certificate refused")

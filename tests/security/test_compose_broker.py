"""docker-compose's broker, run for real: deploy/mosquitto/mosquitto.conf as shipped (only its paths moved to
a temporary folder and its listeners to loopback ports) with the files the broker-logins one-shot makes.
Devices get in over TLS with a password and over mutual TLS with a certificate the CA signed; nobody
gets in anonymously or without trusting the CA."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import tls_connack, wait_until
from typer.testing import CliRunner

from ioc.cli import app
from ioc.stack import broker_auth as ba
from ioc.stack import tls
from ioc.stack.procs import free_port

REPO = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
COMPOSE_PORTS = (1883, 8883, 8884)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Path, dict[int, int]]]:
    """(auth folder, compose port -> local port) of the compose broker configuration, running."""
    auth = tmp_path / "auth"
    env = {ba.PASSWORD_ENV["ingest"]: "ingest-secret"}
    argv = ["stack", "broker-logins", "--dir", str(auth), "--tls-hosts", "localhost,127.0.0.1"]
    result = CliRunner().invoke(app, argv, env=env)
    assert result.exit_code == 0, result.output
    assert "ingest-secret" not in result.output
    assert stat_mode(auth / "tls" / tls.CA_KEY) == 0o600  # read by the broker and the API only (same uid)
    assert stat_mode(auth / "tls" / tls.SERVER_KEY) == 0o600

    ports = {p: free_port() for p in COMPOSE_PORTS}
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/auth", str(auth)).replace("/mosquitto/data", str(tmp_path / "data"))
    for compose_port, port in ports.items():
        conf, n = re.subn(rf"^listener {compose_port} 0\.0\.0\.0$", f"listener {port} 127.0.0.1", conf, flags=re.M)
        assert n == 1, f"deploy/mosquitto/mosquitto.conf has no listener {compose_port}"
    (tmp_path / "data").mkdir()
    path = tmp_path / "mosquitto.conf"
    path.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\n{conf}")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def listening() -> bool:
            for port in ports.values():
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) != 0:
                        return False
            return True

        wait_until(lambda: listening() or proc.poll() is not None, what="the compose broker listening")
        assert proc.poll() is None, proc.communicate()[0].decode()
        yield auth, ports
    finally:
        proc.terminate()
        proc.wait(10)


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _device_cert(auth: Path, device_id: str, tmp: Path) -> tuple[Path, Path]:
    """What a box and the API do: the box makes a key and a CSR, the API signs it with the broker's CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    key_file, cert_file = tmp / f"{device_id}.key", tmp / f"{device_id}.crt"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])).sign(key, hashes.SHA256()))
    pem = csr.public_bytes(serialization.Encoding.PEM).decode()
    cert_file.write_text(tls.sign_device_csr(auth / "tls", pem, device_id))
    return cert_file, key_file


def test_devices_get_in_over_tls_and_mutual_tls_and_nobody_else(broker: tuple[Path, dict[int, int]],
                                                                 tmp_path: Path) -> None:
    auth, ports = broker
    trusting = ssl.create_default_context(cafile=str(auth / "tls" / tls.CA_CERT))
    trusting.check_hostname = False  # connecting to 127.0.0.1; the name check is the next assertion's
    by_name = ssl.create_default_context(cafile=str(auth / "tls" / tls.CA_CERT))

    assert tls_connack(ports[8883], trusting, "ingest", "ingest-secret")
    assert tls_connack(ports[8883], by_name, "ingest", "ingest-secret")  # certificate valid for 127.0.0.1
    assert not tls_connack(ports[8883], trusting)  # anonymous, even over TLS
    assert not tls_connack(ports[8883], trusting, "ingest", "wrong")
    assert not tls_connack(ports[8883], ssl.create_default_context(), "ingest", "ingest-secret")  # CA not trusted

    no_cert = ssl.create_default_context(cafile=str(auth / "tls" / tls.CA_CERT))
    assert not tls_connack(ports[8884], no_cert)  # the mutual-TLS port wants a certificate
    with_cert = ssl.create_default_context(cafile=str(auth / "tls" / tls.CA_CERT))
    with_cert.load_cert_chain(*_device_cert(auth, "gw-compose-1", tmp_path))
    assert tls_connack(ports[8884], with_cert)


def test_broker_logins_keep_the_ca_once_made(broker: tuple[Path, dict[int, int]]) -> None:
    """Devices trust the CA: running the one-shot again (every `docker compose up`) must not replace it."""
    auth, _ = broker
    before = (auth / "tls" / tls.CA_CERT).read_bytes()
    result = CliRunner().invoke(app, ["stack", "broker-logins", "--dir", str(auth), "--tls-hosts", "localhost"],
                                env={ba.PASSWORD_ENV["ingest"]: "ingest-secret"})
    assert result.exit_code == 0, result.output
    assert (auth / "tls" / tls.CA_CERT).read_bytes() == before

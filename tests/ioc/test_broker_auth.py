"""Per-device credentials and ACLs enforced by a real Mosquitto (its own instance, auth on)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_until

from ioc.stack import broker_auth as ba

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Client:
    """A paho MQTT 5 client that records what it receives and how its CONNECT ended."""

    def __init__(self, port: int, username: str | None, password: str | None) -> None:
        self.got: list[str] = []
        self.connack: object | None = None
        self.done = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, m: self.got.append(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.done.wait(10), "no CONNACK"

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object,
                    props: object = None) -> None:
        self.connack = rc
        self.done.set()

    @property
    def accepted(self) -> bool:
        return not getattr(self.connack, "is_failure", True)

    def sub(self, topic: str) -> None:
        self.c.subscribe(topic, qos=1)

    def pub(self, topic: str) -> None:
        self.c.publish(topic, b"{}", qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    port = _free_port()
    auth = tmp_path / "auth"
    auth.mkdir()

    def start() -> subprocess.Popen[bytes]:
        conf = tmp_path / "mosquitto.conf"
        user = pwd.getpwuid(os.geteuid()).pw_name  # as the stack does: the broker reads our 0600 files
        conf.write_text(f"user {user}\npersistence false\nper_listener_settings false\nlistener {port} 127.0.0.1\n"
                        + ba.config_lines(auth))
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc

    passwords = {"gw-a": "pw-a", "gw-b": "pw-b", "ingest": "pw-i"}
    devices = [ba.DeviceGrant("gw-a", ba.hash_password("pw-a"), "gw-a", "site-a"),
               ba.DeviceGrant("gw-b", ba.hash_password("pw-b"), "gw-b", "site-b")]
    services = [ba.ServiceGrant("ingest", ba.hash_password(passwords["ingest"]), "ingest")]
    ba.install(auth, devices, services)
    proc = start()

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, what="mosquitto listening")
    yield port, auth, proc
    proc.terminate()
    proc.wait(10)


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(f), "u", "s3cret"], check=True, capture_output=True)
    theirs = f.read_text().strip().split(":", 1)[1]
    _, _, iterations, salt, _ = theirs.split("$")
    import base64

    assert ba.hash_password("s3cret", base64.b64decode(salt), int(iterations)) == theirs


def test_devices_are_held_to_their_own_topics(broker: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, auth, _ = broker
    for path in (auth / ba.PASSWORD_FILE, auth / ba.ACL_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not Client(port, None, None).accepted  # anonymous
    assert not Client(port, "gw-a", "wrong").accepted
    ingest = Client(port, "ingest", "pw-i")
    a, b = Client(port, "gw-a", "pw-a"), Client(port, "gw-b", "pw-b")
    assert [ingest.accepted, a.accepted, b.accepted] == [True, True, True]
    ingest.sub("tlm/v1/#")
    b.sub("cfg/v1/gw-b/desired")
    b.sub("cmd/v1/gw-b/#")
    a.sub("#")  # allowed to ask, but the broker delivers it nothing it may not read
    time.sleep(0.3)
    a.pub("tlm/v1/site-a/gw-a/env")  # its own: delivered
    a.pub("tlm/v1/site-a/gw-b/env")  # as another device
    a.pub("tlm/v1/site-b/gw-a/env")  # its id at another site: passes the broker (a pattern pins the id only);
    # ingest dead-letters it because the registry has gw-a at site-a
    a.pub("cfg/v1/gw-b/desired")  # another device's config
    a.pub("cmd/v1/gw-b/reboot")  # another device's command
    b.pub("tlm/v1/site-b/gw-b/env")
    wait_until(lambda: "tlm/v1/site-b/gw-b/env" in ingest.got, what="gw-b's telemetry at ingest")
    assert sorted(ingest.got) == ["tlm/v1/site-a/gw-a/env", "tlm/v1/site-b/gw-a/env", "tlm/v1/site-b/gw-b/env"]
    assert b.got == []
    assert a.got == []  # '#' brought it none of gw-b's traffic
    for c in (ingest, a, b):
        c.close()


def test_revocation_applies_on_reload_without_restart(broker: tuple[int, Path, subprocess.Popen[bytes]]) -> None:
    port, auth, proc = broker
    ingest = Client(port, "ingest", "pw-i")
    ingest.sub("tlm/v1/#")
    kept = Client(port, "gw-b", "pw-b")
    revoked = Client(port, "gw-a", "pw-a")
    assert revoked.accepted
    ba.install(auth, [ba.DeviceGrant("gw-b", ba.hash_password("pw-b"), "gw-b", "site-b")],
               [ba.ServiceGrant("ingest", ba.hash_password("pw-i"), "ingest")])
    ba.reload(proc.pid)
    wait_until(lambda: not revoked.c.is_connected(), what="the broker to drop gw-a's open connection")
    assert not Client(port, "gw-a", "pw-a").accepted
    kept.pub("tlm/v1/site-b/gw-b/env")  # the broker kept running: other connections were not dropped
    wait_until(lambda: "tlm/v1/site-b/gw-b/env" in ingest.got, what="gw-b still delivering")
    assert proc.poll() is None
    assert os.path.exists(auth / ba.ACL_FILE)
    kept.close()
    ingest.close()


def test_broker_logins_for_a_deployment_hash_the_given_passwords(tmp_path: Path) -> None:
    """`ioc stack broker-logins` (docker-compose's one-shot): the services' passwords from the environment,
    hashes only on disk, and a real broker lets each service in with its own password and nobody else."""
    from typer.testing import CliRunner

    from ioc.cli import app

    auth = tmp_path / "auth"
    env = {ba.PASSWORD_ENV["ingest"]: "ingest-secret", ba.PASSWORD_ENV["registry"]: "registry-secret"}
    result = CliRunner().invoke(app, ["stack", "broker-logins", "--dir", str(auth)], env=env)
    assert result.exit_code == 0, result.output
    assert "ingest-secret" not in result.output
    for name in (ba.SERVICES_FILE, ba.PASSWORD_FILE, ba.ACL_FILE):
        assert stat.S_IMODE((auth / name).stat().st_mode) == 0o600
        assert "secret" not in (auth / name).read_text()  # hashes only
    empty = CliRunner().invoke(app, ["stack", "broker-logins", "--dir", str(tmp_path / "none")],
                               env=dict.fromkeys(ba.PASSWORD_ENV.values(), ""))
    assert empty.exit_code != 0
    assert "IOC_BROKER_PASSWORD" in empty.output

    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\npersistence false\nper_listener_settings false\n"
                    f"listener {port} 127.0.0.1\n" + ba.config_lines(auth))
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, what="mosquitto listening")
        ok = [Client(port, "ingest", "ingest-secret"), Client(port, "registry", "registry-secret")]
        assert [c.accepted for c in ok] == [True, True]
        assert not Client(port, "ingest", "registry-secret").accepted
        assert not Client(port, "admin", "").accepted  # no password given for it: no login
        assert not Client(port, None, None).accepted
        for c in ok:
            c.close()
    finally:
        proc.terminate()
        proc.wait(10)

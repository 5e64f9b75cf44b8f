"""Broker credentials issued by the registry (auth switched on for this test's own Mosquitto): a device
created through the API connects with its password and its telemetry is ingested; wrong, rotated-out and
revoked passwords are refused, and retiring drops the open connection. Also the broker fact that rules out
a grace period for a rotated password."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import free_port, mqtt_login, serve, wait_until

from cloud.api.settings import ApiSettings
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings
from ioc.stack import Stack
from ioc.stack import broker_auth as ba

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def _connect(port: int, username: str, password: str) -> tuple[bool, mqtt.Client]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    c.username_pw_set(username, password)
    done, result = threading.Event(), []
    c.on_connect = lambda cl, u, f, rc, p=None: (result.append(not rc.is_failure), done.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return result[0], c


@contextlib.contextmanager
def _broker(folder: Path, before_listener: str = "") -> Iterator[tuple[int, Path, Path]]:
    """A Mosquitto of its own requiring the files in folder/auth (made empty if absent): (port, auth, pid file)."""
    auth, port = folder / "auth", free_port()
    if not (auth / ba.PASSWORD_FILE).exists():
        ba.install(auth, [], [])
    pid_file = folder / "mosquitto.pid"
    conf = folder / "mosquitto.conf"
    conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\npid_file {pid_file}\npersistence false\n"
                    f"per_listener_settings false\n{before_listener}listener {port} 127.0.0.1\n"
                    + ba.config_lines(auth))
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(lambda: listening() and pid_file.exists(), what="the auth broker")
        yield port, auth, pid_file
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    with _broker(tmp_path) as running:
        yield running


def _login_works(port: int, username: str, password: str) -> bool:
    ok, c = _connect(port, username, password)
    c.loop_stop()
    c.disconnect()
    return ok


def test_mosquitto_has_one_password_per_username_so_passwords_rotate_at_once(tmp_path: Path) -> None:
    """Why password rotation has no grace period (docs/security.md): if a broker upgrade lets one username
    log in with two passwords, this fails and a grace period becomes possible."""
    old, new = ba.new_password(), ba.new_password()
    auth = tmp_path / "auth"
    ba.install(auth, [], [])
    (auth / ba.PASSWORD_FILE).write_text(f"gw-1:{ba.hash_password(old)}\ngw-1:{ba.hash_password(new)}\n")
    with _broker(tmp_path) as (port, _, _):
        assert [_login_works(port, "gw-1", old), _login_works(port, "gw-1", new)] == [False, True]

    # The dynamic-security plugin beside the password file: a username it knows is decided by it alone.
    _, _, iterations, salt, digest = ba.hash_password(old).split("$")
    dynsec = tmp_path / "dynsec.json"
    dynsec.write_text(json.dumps({
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": False, "subscribe": False,
                             "unsubscribe": True},
        "clients": [{"username": "gw-1", "roles": [], "password": digest, "salt": salt,
                     "iterations": int(iterations)}], "groups": [], "roles": []}))
    ba.install(auth, [ba.DeviceGrant("gw-1", ba.hash_password(new), "gw-1", ""),
                      ba.DeviceGrant("gw-2", ba.hash_password(new), "gw-2", "")], [])
    with _broker(tmp_path, f"plugin {DYNSEC}\nplugin_opt_config_file {dynsec}\n") as (port, _, _):
        assert _login_works(port, "gw-2", new)  # the password file still counts for a name dynsec lacks...
        assert [_login_works(port, "gw-1", old), _login_works(port, "gw-1", new)] == [True, False]  # ...not beside


def test_registry_issues_rotates_and_revokes_broker_credentials(
        stack: Stack, db: psycopg.Connection, auth_broker: tuple[int, Path, Path],
        as_role: Callable[[str], httpx.Client], tmp_path: Path) -> None:
    port, auth, pid_file = auth_broker
    ingest_pw = ba.new_password()  # the stack's job in production: a service credential for ingest
    db.execute("INSERT INTO broker_credentials (username, role, password_hash) VALUES (%s, 'ingest', %s)"
               " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, revoked_at = NULL",
               (f"ingest-{port}", ba.hash_password(ingest_pw)))
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           client_id=f"registry-auth-{uuid.uuid4().hex[:6]}", broker_auth_dir=auth,
                           broker_pid_file=pid_file, **mqtt_login(stack, "registry"))
    server, url = serve(settings)
    token = as_role("technician").headers["Authorization"]
    ingest = IngestService(IngestSettings(
        dsn=stack.dsn, mqtt_host="127.0.0.1", mqtt_port=port, mqtt_username=f"ingest-{port}",
        mqtt_password=ingest_pw, instance=f"ingest-auth-{uuid.uuid4().hex[:6]}", batch_max_delay_s=0.05,
        session_expiry_s=600))
    clients: list[mqtt.Client] = []
    try:
        with httpx.Client(base_url=url, headers={"Authorization": token}, timeout=30) as tech:
            device_id = f"gw-{uuid.uuid4().hex[:8]}"
            r = tech.post("/devices", json={"device_id": device_id, "site": "district-01", "profile": "env-gateway"})
            assert r.status_code == 201, r.text
            password = r.json()["credentials"][device_id]
            assert password not in json.dumps(tech.get("/audit", params={"target": device_id}).json())
            assert password not in (auth / ba.PASSWORD_FILE).read_text()  # only its hash
            ingest.start()
            assert ingest.wait_connected(15), "ingest could not log in to the auth broker"
            assert not _connect(port, device_id, "wrong")[0]
            ok, dev = _connect(port, device_id, password)
            clients.append(dev)
            assert ok
            body = {"v": 1, "device_id": device_id, "boot_id": "b", "seq": 1,
                    "samples": [{"ts": int(time.time() * 1000), "values": {"pm25": 7.5}}]}
            dev.publish(f"tlm/v1/district-01/{device_id}/env", json.dumps(body), qos=1).wait_for_publish(10)
            wait_until(lambda: db.execute("SELECT value FROM telemetry WHERE device_id = %s",
                                          (device_id,)).fetchall() == [(7.5,)], what="the telemetry ingested")
            rotated = tech.post(f"/devices/{device_id}/credentials")
            assert rotated.status_code == 201
            new_password = rotated.json()["password"]
            wait_until(lambda: not _connect(port, device_id, password)[0], what="the old password refused")
            ok, dev2 = _connect(port, device_id, new_password)
            clients.append(dev2)
            assert ok
            assert tech.delete(f"/devices/{device_id}").status_code == 200
            wait_until(lambda: not dev2.is_connected(), what="the broker to drop the retired device")
            assert not _connect(port, device_id, new_password)[0]
    finally:
        for c in clients:
            c.loop_stop()
            c.disconnect()
        ingest.stop()
        server.stop()

"""Broker credentials issued by the registry (auth switched on for this test's own Mosquitto): a device
created through the API connects with its password and its telemetry is ingested; wrong, rotated-out and
revoked passwords are refused, and retiring drops the open connection."""

from __future__ import annotations

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
from api_helpers import free_port, serve
from paho.mqtt.enums import CallbackAPIVersion
from support import mqtt_login, wait_until

from cloud.api.settings import ApiSettings
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings
from ioc.stack import Stack
from ioc.stack import broker_auth as ba

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _connect(port: int, username: str, password: str) -> tuple[bool, mqtt.Client]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    c.username_pw_set(username, password)
    done, result = threading.Event(), []
    c.on_connect = lambda cl, u, f, rc, p=None: (result.append(not rc.is_failure), done.set())
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert done.wait(10), "no CONNACK"
    return result[0], c


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[tuple[int, Path, Path]]:
    auth, port = tmp_path / "auth", free_port()
    ba.install(auth, [], [])
    pid_file = tmp_path / "mosquitto.pid"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"user {pwd.getpwuid(os.geteuid()).pw_name}\npid_file {pid_file}\npersistence false\n"
                    f"per_listener_settings false\nlistener {port} 127.0.0.1\n" + ba.config_lines(auth))
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(lambda: listening() and pid_file.exists(), what="the auth broker")
    yield port, auth, pid_file
    proc.terminate()
    proc.wait(10)


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

"""Several API processes on one database and broker (`ioc api --workers N`): what one process changes, the
others honour at once; both stay on the broker; a command's reply is stored whichever process sent it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from api_helpers import RunningApi, new_device
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from support import Server, free_port, login, mqtt_env, mqtt_login, serve, wait_until

from cloud.api.settings import ApiSettings
from ioc.stack import Stack

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pair(stack: Stack, api: RunningApi) -> Iterator[tuple[str, str]]:
    """Two API processes as `ioc api --workers 2` makes them: the same settings (one registry name on the
    broker), each its own app, token cache, MQTT client and sweeper. Tokens are trusted for 300 s, so a
    process that missed a revoke would keep accepting the token for the whole test."""
    settings = ApiSettings(dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port,
                           client_id=f"registry-pair-{uuid.uuid4().hex[:6]}", token_cache_s=300,
                           sweep_interval_s=0.2, **mqtt_login(stack, "registry"))
    servers: list[Server] = []
    urls = []
    for _ in range(2):
        server, url = serve(settings)
        servers.append(server)
        urls.append(url)
    yield urls[0], urls[1]
    for s in servers:
        s.stop()


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _refused_soon(c: httpx.Client) -> bool:
    """The token stops working within 2 s (the notification's trip), not after the 300 s it is cached."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if c.get("/devices", params={"limit": 1}).status_code == 401:
            return True
        time.sleep(0.05)
    return False


def test_a_token_revoked_through_one_process_is_refused_by_the_other(pair: tuple[str, str], api: RunningApi) -> None:
    a_url, b_url = pair
    with _client(a_url, api.admin_token) as a:
        made = a.post("/tokens", json={"name": "pair-revoke", "role": "viewer"}).json()
        with _client(b_url, made["token"]) as b:
            assert b.get("/devices", params={"limit": 1}).status_code == 200  # B has it cached now
            assert a.delete(f"/tokens/{made['token_id']}").status_code == 200
            assert _refused_soon(b)
            assert "revoked" in b.get("/devices").json()["detail"]


def test_a_token_revoked_in_sql_is_refused_at_once(pair: tuple[str, str], api: RunningApi, stack: Stack) -> None:
    a_url, b_url = pair
    with _client(a_url, api.admin_token) as a:
        made = a.post("/tokens", json={"name": "pair-sql", "role": "viewer"}).json()
    with _client(a_url, made["token"]) as on_a, _client(b_url, made["token"]) as on_b:
        assert on_a.get("/devices").status_code == 200
        assert on_b.get("/devices").status_code == 200
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE token_id = %s", (made["token_id"],))
        assert _refused_soon(on_a)
        assert _refused_soon(on_b)


class Responder:
    """A device's side of commands, as the edge agent does it: reply on the response topic with the
    correlation data. Counts the commands it answered."""

    def __init__(self, stack: Stack, device_id: str) -> None:
        self.device_id, self.answered = device_id, 0
        self.c = login(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"resp-{uuid.uuid4().hex[:6]}",
                                   protocol=mqtt.MQTTv5), stack, "simulator")
        self.c.on_message = self._on_message
        subscribed = threading.Event()
        self.c.on_subscribe = lambda *_: subscribed.set()
        self.c.connect(stack.mqtt_host, stack.mqtt_port)
        self.c.subscribe(f"cmd/v1/{device_id}/#", qos=1)
        self.c.loop_start()
        assert subscribed.wait(10), "the broker did not confirm the responder's subscription"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = msg.properties.CorrelationData
        reply = {"v": 1, "device_id": self.device_id, "command": msg.topic.rsplit("/", 1)[1], "ok": True,
                 "ts": int(time.time() * 1000), "result": {"pong": True}}
        client.publish(msg.properties.ResponseTopic, json.dumps(reply), qos=1, properties=props)
        self.answered += 1

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def test_both_processes_stay_on_the_broker_and_every_reply_is_stored(pair: tuple[str, str], api: RunningApi,
                                                                      stack: Stack) -> None:
    """One MQTT client id for both would make the broker drop one whenever the other (re)connects."""
    with _client(pair[0], api.admin_token) as a, _client(pair[1], api.admin_token) as b:
        device = new_device(a)["device_id"]
        responder = Responder(stack, device)
        try:
            sent = [(c, c.post(f"/devices/{device}/commands", json={"command": "ping"}).json()["command_id"])
                    for c in (a, b, a, b, a, b)]
            for c, command_id in sent:
                def final(c: httpx.Client = c, i: str = command_id) -> dict | None:
                    r = c.get(f"/devices/{device}/commands/{i}").json()
                    return r if r["status"] in ("ok", "failed", "timed_out", "expired") else None

                done = wait_until(final, what="the command's final status")
                assert done["status"] == "ok", done
                assert done["result"] == {"pong": True}
            assert responder.answered == len(sent)
            assert a.get("/health").json()["broker"]
            assert b.get("/health").json()["broker"]
        finally:
            responder.stop()


def test_ioc_api_with_two_workers_serves_on_one_port(stack: Stack, api: RunningApi, tmp_path: Path) -> None:
    """The settings reach the worker processes (uvicorn starts them from an import string)."""
    port = free_port()
    env = {**os.environ, **mqtt_env(stack, "registry")}
    proc = subprocess.Popen([sys.executable, "-m", "ioc", "api", "--dsn", stack.dsn, "--mqtt-host", stack.mqtt_host,
                             "--mqtt-port", str(stack.mqtt_port), "--port", str(port), "--workers", "2",
                             "--token-file", str(tmp_path / "token")], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=60, what="ioc api --workers 2 to serve")
        for _ in range(20):  # a fresh connection each: the kernel hands them to both workers
            with _client(url, api.admin_token) as c:
                assert c.get("/devices", params={"limit": 1}).status_code == 200
                assert c.get("/devices").status_code == 200
            with httpx.Client(base_url=url) as anon:
                assert anon.get("/devices").status_code == 401
        assert not (tmp_path / "token").exists()  # an admin exists already: no second bootstrap token
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "Traceback" not in out, out

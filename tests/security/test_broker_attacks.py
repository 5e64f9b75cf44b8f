"""Attacks on the stack's real Mosquitto (auth on), with real ingest into the real database: each is
refused by the broker and nothing of it reaches the database; a device created through the API logs in
with the password it was issued and its telemetry is ingested."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_until

from cloud.ingest.service import IngestService
from contract.messages import now_ms
from ioc.stack import Stack


class Device:
    """A paho MQTT 5 client as a field box would be: records what it receives and why it was dropped."""

    def __init__(self, stack: Stack, username: str | None, password: str | None, client_id: str | None = None):
        self.got: list[tuple[str, bytes]] = []
        self.connack: Any = None
        self.done = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"x-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.on_connect = lambda _c, _u, _f, rc, _p=None: (setattr(self, "connack", rc), self.done.set())
        self.c.on_message = lambda _c, _u, m: self.got.append((m.topic, bytes(m.payload)))
        self.c.connect(stack.mqtt_host, stack.mqtt_port)
        self.c.loop_start()
        assert self.done.wait(10), "no CONNACK"

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def sub(self, topic: str) -> None:
        done = threading.Event()
        self.c.on_subscribe = lambda *_a: done.set()
        self.c.subscribe(topic, qos=1)
        assert done.wait(10), f"no SUBACK for {topic}"

    def pub(self, topic: str, body: dict[str, Any] | bytes, retain: bool = False) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _reading(device: str, value: float, seq: int = 1) -> dict[str, Any]:
    return {"v": 1, "device_id": device, "boot_id": "b", "seq": seq, "sent_at": now_ms(),
            "samples": [{"ts": now_ms(), "values": {"pm25": value}}]}


def _new(tech: httpx.Client, site: str) -> tuple[str, str]:
    device_id = f"sec-{uuid.uuid4().hex[:8]}"
    r = tech.post("/devices", json={"device_id": device_id, "site": site, "profile": "env-gateway"})
    assert r.status_code == 201, r.text
    return device_id, r.json()["credentials"][device_id]


def _rows(db: psycopg.Connection, device: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT value FROM telemetry WHERE device_id = %s ORDER BY value", (device,)).fetchall()


def _dead(db: psycopg.Connection, device: str) -> list[tuple[Any, ...]]:
    return db.execute("SELECT topic, reason FROM dead_letters WHERE device_id = %s", (device,)).fetchall()


def test_anonymous_and_wrong_password_are_refused(stack: Stack, tech: httpx.Client) -> None:
    device_id, password = _new(tech, "sec-site")
    anonymous = Device(stack, None, None)
    wrong = Device(stack, device_id, password + "x")
    stranger = Device(stack, "nobody", password)
    assert [anonymous.accepted, wrong.accepted, stranger.accepted] == [False, False, False]
    right = Device(stack, device_id, password, client_id=device_id)
    assert right.accepted
    right.close()


def test_a_device_is_held_to_its_own_topics(stack: Stack, tech: httpx.Client, ingest: IngestService,
                                            db: psycopg.Connection) -> None:
    site = f"sec-{uuid.uuid4().hex[:6]}"
    (a_id, a_pw), (b_id, b_pw) = _new(tech, site), _new(tech, site)
    a = Device(stack, a_id, a_pw, client_id=a_id)
    b = Device(stack, b_id, b_pw, client_id=b_id)
    try:
        b.sub(f"cfg/v1/{b_id}/desired")
        b.sub(f"cmd/v1/{b_id}/#")
        b.sub(f"ack/v1/{b_id}")
        a.sub("#")  # the broker grants the filter but delivers only what a may read
        a.sub(f"ack/v1/{b_id}")  # another device's watermark
        a.pub(f"tlm/v1/{site}/{b_id}/env", _reading(b_id, 66.0))  # as another device
        a.pub(f"cfg/v1/{b_id}/desired", {"version": 99, "settings": {"heartbeat_s": 1}}, retain=True)
        a.pub(f"cmd/v1/{b_id}/reboot", {"command": "reboot"})
        a.pub(f"state/v1/{b_id}", {"online": False}, retain=True)  # forging b's retained status
        a.pub(f"cfg/v1/{b_id}/reported", {"version": 99})
        a.pub(f"tlm/v1/other-site/{a_id}/env", _reading(a_id, 55.0, seq=2))  # its own id, another site
        b.pub(f"tlm/v1/{site}/{b_id}/env", _reading(b_id, 7.0))
        a.pub(f"tlm/v1/{site}/{a_id}/env", _reading(a_id, 5.0, seq=3))  # its own: stored

        wait_until(lambda: _rows(db, a_id) == [(5.0,)], what="a's own telemetry stored")
        wait_until(lambda: _rows(db, b_id) == [(7.0,)], what="b's own telemetry stored")
        # The site is not pinned by the broker (a pattern pins the id only): ingest dead-letters it.
        dead = wait_until(lambda: _dead(db, a_id), what="a's reading under another site dead-lettered")
        assert dead[0][0] == f"tlm/v1/other-site/{a_id}/env"
        assert "registered at" in dead[0][1]
        wait_until(lambda: any(t == f"ack/v1/{b_id}" for t, _ in b.got), what="b's own watermark")
        time.sleep(1.0)  # anything the broker let through would have arrived by now
        assert _rows(db, b_id) == [(7.0,)]  # a's forgery never reached the database
        assert _dead(db, b_id) == []
        reported = db.execute("SELECT count(*) FROM device_config_reported WHERE device_id = %s", (b_id,)).fetchone()
        assert reported == (0,)
        assert [t for t, _ in b.got if not t.startswith("ack/")] == []  # no forged config or command reached b
        assert [t for t, _ in a.got if b_id in t] == []  # '#' and b's watermark brought a nothing of b's
    finally:
        a.close()
        b.close()
        Device(stack, *stack.credentials("admin") or ("", "")).pub(f"cfg/v1/{b_id}/desired", b"", retain=True)


def test_revoked_device_is_dropped_at_once_and_refused(stack: Stack, tech: httpx.Client, ingest: IngestService,
                                                       db: psycopg.Connection) -> None:
    site = f"sec-{uuid.uuid4().hex[:6]}"
    device_id, password = _new(tech, site)
    d = Device(stack, device_id, password, client_id=device_id)
    assert d.accepted
    assert tech.delete(f"/devices/{device_id}").status_code == 200
    wait_until(lambda: not d.c.is_connected(), what="the broker to drop the retired device")
    d.close()
    again = Device(stack, device_id, password, client_id=device_id)
    assert not again.accepted
    again.close()
    assert _rows(db, device_id) == []


def test_rotated_out_password_is_refused(stack: Stack, tech: httpx.Client, ingest: IngestService,
                                         db: psycopg.Connection) -> None:
    site = f"sec-{uuid.uuid4().hex[:6]}"
    device_id, old = _new(tech, site)
    r = tech.post(f"/devices/{device_id}/credentials")
    assert r.status_code == 201, r.text
    new = r.json()["password"]
    stale = wait_until(lambda: (x := Device(stack, device_id, old)) and not x.accepted and x,
                       what="the old password refused")
    stale.close()
    fresh = Device(stack, device_id, new, client_id=device_id)
    assert fresh.accepted
    fresh.pub(f"tlm/v1/{site}/{device_id}/env", _reading(device_id, 3.0))
    wait_until(lambda: _rows(db, device_id) == [(3.0,)], what="telemetry under the new password stored")
    fresh.close()


def test_services_are_held_to_their_roles(stack: Stack, ingest: IngestService, db: psycopg.Connection) -> None:
    """Ingest writes nothing but watermarks; only admin reads $SYS; the simulator account cannot read all."""
    device = f"sec-{uuid.uuid4().hex[:8]}"
    creds = {s: stack.credentials(s) for s in ("ingest", "simulator", "registry", "admin")}
    clients = {s: Device(stack, *c) for s, c in creds.items() if c}
    try:
        for c in clients.values():
            c.sub("$SYS/broker/uptime")
        clients["simulator"].sub("tlm/v1/#")
        clients["ingest"].pub(f"tlm/v1/district-01/{device}/env", _reading(device, 1.0))
        clients["registry"].pub(f"tlm/v1/district-01/{device}/env", _reading(device, 2.0))
        wait_until(lambda: any(t.startswith("$SYS/") for t, _ in clients["admin"].got), what="admin reads $SYS")
        time.sleep(1.0)
        for name in ("ingest", "simulator", "registry"):
            assert clients[name].got == [], name
        assert db.execute("SELECT count(*) FROM dead_letters WHERE device_id = %s", (device,)).fetchone() == (0,)
    finally:
        for c in clients.values():
            c.close()

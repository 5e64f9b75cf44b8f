"""Devices through the API against the real database: create, list, get, update, retire, audit, live status."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx
import paho.mqtt.client as mqtt
import psycopg
from api_helpers import new_device
from paho.mqtt.enums import CallbackAPIVersion
from support import login, wait_until

from cloud.ingest.service import IngestService
from ioc.stack import Stack


def test_create_many_then_filter_sort_and_page(as_role: Callable[[str], httpx.Client]) -> None:
    tech = as_role("technician")
    site, tag = f"site-{uuid.uuid4().hex[:6]}", f"t{uuid.uuid4().hex[:6]}"
    body = [{"device_id": f"gw-{site}-{i:02d}", "site": site, "profile": "env-gateway", "tags": [tag] if i % 2 else [],
             "name": f"Pole {i}", "location": {"lat": 52.5 + i / 100, "lon": 13.4}} for i in range(7)]
    r = tech.post("/devices", json=body)
    assert r.status_code == 201, r.text
    assert [d["device_id"] for d in r.json()["created"]] == [b["device_id"] for b in body]
    assert r.json()["created"][3]["location"] == {"lat": 52.53, "lon": 13.4}
    # Cursor pages of 3, newest-id first, cover the site exactly once.
    seen, cursor = [], None
    while True:
        params = {"site": site, "limit": 3, "sort": "-device_id", **({"cursor": cursor} if cursor else {})}
        page = tech.get("/devices", params=params).json()
        seen += [d["device_id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted((b["device_id"] for b in body), reverse=True)
    tagged = tech.get("/devices", params={"tag": tag}).json()["items"]
    assert [d["device_id"] for d in tagged] == [b["device_id"] for b in body if b["tags"]]
    assert [d["device_id"] for d in tech.get("/devices", params={"site": site, "q": "pole 4"}).json()["items"]] == [
        body[4]["device_id"]]
    never = tech.get("/devices", params={"site": site, "status": "never_seen"}).json()["items"]
    assert len(never) == 7
    assert all(d["live"]["status"] == "never_seen" for d in never)


def test_bad_input_gets_a_readable_4xx(as_role: Callable[[str], httpx.Client]) -> None:
    tech = as_role("technician")
    d = new_device(tech)
    dup = tech.post("/devices", json={"device_id": d["device_id"], "site": "s", "profile": "env-gateway"})
    assert dup.status_code == 409
    assert d["device_id"] in dup.json()["detail"]
    bad_profile = tech.post("/devices", json={"device_id": "gw-x1", "site": "s", "profile": "toaster"})
    assert bad_profile.status_code == 422
    assert "unknown profile 'toaster'" in bad_profile.json()["detail"]
    bad_site = tech.post("/devices", json={"device_id": "gw-x2", "site": "a/b", "profile": "env-gateway"})
    assert bad_site.status_code == 422
    assert "site" in bad_site.json()["detail"]
    assert tech.post("/devices", json={"device_id": "gw-x3", "site": "s", "profile": "env-gateway",
                                       "colour": "red"}).status_code == 422
    assert tech.get("/devices", params={"cursor": "garbage!"}).status_code == 400
    assert tech.get("/devices/does-not-exist").status_code == 404
    assert tech.patch(f"/devices/{d['device_id']}", json={"location": {"lat": 91, "lon": 0}}).status_code == 422
    assert tech.post("/devices", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_a_stack_service_login_is_refused_as_a_device_id(as_role: Callable[[str], httpx.Client]) -> None:
    """The device's broker login is its id: `bench` as a device would take the load generators' login away."""
    tech = as_role("technician")
    good = f"gw-{uuid.uuid4().hex[:8]}"
    for service in ("bench", "ingest", "registry", "admin"):
        r = tech.post("/devices", json=[{"device_id": good, "site": "s", "profile": "env-gateway"},
                                        {"device_id": service, "site": "s", "profile": "env-gateway"}])
        assert r.status_code == 422, r.text
        assert f"{service!r} is the broker login of a stack service" in r.json()["detail"]
        assert tech.get(f"/devices/{service}").status_code == 404
    assert tech.get(f"/devices/{good}").status_code == 404  # all or nothing


def test_update_and_retire_are_audited_and_keep_data(as_role: Callable[[str], httpx.Client], db: psycopg.Connection,
                                                    ) -> None:
    tech = as_role("technician")
    d = new_device(tech, name="Old name")
    device_id = d["device_id"]
    db.execute("INSERT INTO telemetry (ts, device_id, metric, value) VALUES (now(), %s, 'pm25', 12.5)", (device_id,))
    r = tech.patch(f"/devices/{device_id}", json={"name": "New name", "tags": ["repaired"]})
    assert r.status_code == 200
    assert (r.json()["name"], r.json()["tags"]) == ("New name", ["repaired"])
    r = tech.delete(f"/devices/{device_id}")
    assert r.json()["live"]["status"] == "retired"
    assert device_id not in [x["device_id"] for x in tech.get("/devices", params={"q": device_id}).json()["items"]]
    retired = tech.get("/devices", params={"q": device_id, "status": "retired"}).json()["items"]
    assert [x["device_id"] for x in retired] == [device_id]
    assert db.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (device_id,)).fetchone() == (1,)
    audit = tech.get("/audit", params={"target": device_id}).json()["items"]
    assert [e["action"] for e in audit] == ["device.retire", "device.update", "device.create"]
    update = audit[1]
    assert (update["before"]["name"], update["after"]["name"]) == ("Old name", "New name")
    assert "technician" in update["actor"]
    assert tech.patch(f"/devices/{device_id}", json={"name": "x"}).status_code == 409


def test_live_status_comes_from_what_ingest_stores(as_role: Callable[[str], httpx.Client], stack: Stack,
                                                   ingest: IngestService) -> None:
    tech = as_role("technician")
    d = new_device(tech)
    device_id = d["device_id"]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login(c, stack).connect(stack.mqtt_host, stack.mqtt_port)
    c.loop_start()
    now = int(time.time() * 1000)
    c.publish(f"state/v1/{device_id}", json.dumps({"v": 1, "device_id": device_id, "status": "online",
                                                   "boot_id": "boot-1", "ts": now, "firmware": "edge-9.9"}),
              qos=1, retain=True).wait_for_publish(10)
    c.publish(f"tlm/v1/district-01/{device_id}/health", json.dumps({
        "v": 1, "device_id": device_id, "boot_id": "boot-1", "seq": 1,
        "samples": [{"ts": now, "values": {"outbox_depth": 42, "outbox_dropped": 3}}]}), qos=1).wait_for_publish(10)
    c.publish(f"tlm/v1/district-01/{device_id}/env", b"{broken", qos=1).wait_for_publish(10)
    live = wait_until(lambda: (x := tech.get(f"/devices/{device_id}").json()["live"])["last_error"] and
                      x["outbox_backlog"] is not None and x, what="live status")
    assert (live["status"], live["boot_id"], live["reported_firmware"]) == ("online", "boot-1", "edge-9.9")
    assert (live["outbox_backlog"], live["outbox_dropped"]) == (42, 3)
    assert "json" in live["last_error"].lower()
    c.publish(f"state/v1/{device_id}", json.dumps({"v": 1, "device_id": device_id, "status": "offline",
                                                   "boot_id": "boot-1", "ts": now}), qos=1,
              retain=True).wait_for_publish(10)
    wait_until(lambda: tech.get(f"/devices/{device_id}").json()["live"]["status"] == "offline", what="offline")
    c.publish(f"state/v1/{device_id}", b"", qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()

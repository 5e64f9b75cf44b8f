"""Alarms through the registry API on the real stack: alarms raised as the evaluator raises them, listed,
filtered and paged by a viewer, acknowledged and cleared by a technician (the token's holder is the actor),
audited, and visible to `ioc alerts list`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import psycopg
from api_helpers import RunningApi
from typer.testing import CliRunner

from cloud.alerts.store import Raise, raise_alarms
from ioc.cli import app
from ioc.stack import Stack


def _raise(stack: Stack, site: str, severities: list[str]) -> list[int]:
    rule = f"api-{uuid.uuid4().hex[:6]}"
    items = [Raise(rule, f"alrdev-{uuid.uuid4().hex[:6]}", site, "threshold", sev, f"test {sev}", 80.0,
                   datetime.now(UTC)) for sev in severities]
    with psycopg.connect(stack.dsn) as conn, conn.cursor() as cur:
        ids = raise_alarms(cur, items, "evaluator:test")
        conn.commit()
    return ids


def test_tokens_and_roles_are_required(api: RunningApi, as_role: Callable[[str], httpx.Client],
                                       stack: Stack) -> None:
    (alarm_id,) = _raise(stack, f"asite-{uuid.uuid4().hex[:6]}", ["major"])
    with api.client(None) as anon, api.client("ioc_nope_nope") as forged:
        assert anon.get("/alarms").status_code == 401
        assert anon.post(f"/alarms/{alarm_id}/ack", json={}).status_code == 401
        assert forged.get("/alarms").status_code == 401
    viewer = as_role("viewer")
    assert viewer.get("/alarms", params={"limit": 1}).status_code == 200
    for action in ("ack", "clear"):
        r = viewer.post(f"/alarms/{alarm_id}/{action}", json={"comment": "me"})
        assert r.status_code == 403, r.text
        assert "technician" in r.json()["detail"]
    assert viewer.get(f"/alarms/{alarm_id}").json()["acked_at"] is None  # nothing changed


def test_list_filters_and_pages(as_role: Callable[[str], httpx.Client], stack: Stack) -> None:
    site = f"asite-{uuid.uuid4().hex[:6]}"
    ids = _raise(stack, site, ["critical", "minor", "minor"])
    viewer = as_role("viewer")
    r = viewer.get("/alarms", params={"site": site, "severity": "minor"})
    assert r.status_code == 200, r.text
    assert [a["id"] for a in r.json()["items"]] == sorted(ids[1:], reverse=True)
    device = viewer.get(f"/alarms/{ids[0]}").json()["device_id"]
    assert [a["id"] for a in viewer.get("/alarms", params={"device": device}).json()["items"]] == [ids[0]]
    first = viewer.get("/alarms", params={"site": site, "limit": 2}).json()
    assert len(first["items"]) == 2
    assert first["next_cursor"]
    rest = viewer.get("/alarms", params={"site": site, "limit": 2, "cursor": first["next_cursor"]}).json()
    assert [a["id"] for a in first["items"] + rest["items"]] == sorted(ids, reverse=True)
    assert rest["next_cursor"] is None
    assert viewer.get("/alarms", params={"cursor": "not-ours"}).status_code == 400
    assert viewer.get("/alarms", params={"severity": "apocalyptic"}).status_code == 422
    assert viewer.get("/alarms/999999999").status_code == 404
    assert viewer.get("/alarms", params={"site": "nul\x00byte"}).status_code == 422  # a clear refusal, not a 500
    assert viewer.get("/alarms/99999999999999999999999").status_code == 404


def test_ack_and_clear_round_trip_audited_and_seen_by_the_cli(
        as_role: Callable[[str], httpx.Client], admin: httpx.Client, stack: Stack) -> None:
    site = f"asite-{uuid.uuid4().hex[:6]}"
    (alarm_id,) = _raise(stack, site, ["major"])
    tech = as_role("technician")
    assert tech.post(f"/alarms/{alarm_id}/ack", json={"comment": 5}).status_code == 422  # strict body
    assert tech.post(f"/alarms/{alarm_id}/ack", json={"by": "mallory"}).status_code == 422  # no actor field
    r = tech.post(f"/alarms/{alarm_id}/ack", json={"comment": "crew on the way"})
    assert r.status_code == 200, r.text
    acked = r.json()
    assert acked["acked_by"].startswith("test-technician (")
    assert acked["ack_comment"] == "crew on the way"
    assert acked["active"] is True
    again = tech.post(f"/alarms/{alarm_id}/ack", json={})
    assert again.status_code == 409
    assert "already acknowledged" in again.json()["detail"]

    listed = CliRunner().invoke(app, ["alerts", "list", "--json", "--limit", "1000", "--dsn", stack.dsn])
    assert listed.exit_code == 0, listed.output
    (mine,) = [a for a in json.loads(listed.output) if a["id"] == alarm_id]
    assert (mine["acked_by"], mine["ack_comment"]) == (acked["acked_by"], "crew on the way")

    r = tech.post(f"/alarms/{alarm_id}/clear", json={"comment": "sensor replaced"})
    assert r.status_code == 200, r.text
    assert (r.json()["active"], r.json()["cleared_by"]) == (False, acked["acked_by"])
    assert tech.post(f"/alarms/{alarm_id}/clear", json={}).status_code == 409
    viewer = as_role("viewer")
    assert alarm_id in [a["id"] for a in viewer.get("/alarms", params={"site": site, "active": False}).json()["items"]]
    assert viewer.get("/alarms", params={"site": site, "active": True}).json()["items"] == []
    history = viewer.get(f"/alarms/{alarm_id}").json()["history"]
    assert [(h["action"], h["comment"]) for h in history] == [
        ("raised", None), ("acknowledged", "crew on the way"), ("cleared", "sensor replaced")]
    assert history[1]["actor"] == acked["acked_by"]

    entries = admin.get("/audit", params={"target": f"alarm:{alarm_id}"}).json()["items"]
    assert [(e["action"], e["actor"]) for e in entries] == [("alarm.clear", acked["acked_by"]),
                                                              ("alarm.ack", acked["acked_by"])]
    ack_entry = entries[1]
    assert (ack_entry["before"]["acked_by"], ack_entry["after"]["ack_comment"]) == (None, "crew on the way")
    assert (entries[0]["before"]["active"], entries[0]["after"]["active"]) == (True, False)

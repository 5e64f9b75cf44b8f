"""Twin and commands end to end with a real edge agent, real Mosquitto, real ingest and the real API."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from api_helpers import device_broker, new_device
from paho.mqtt.enums import CallbackAPIVersion
from support import login, wait_until

from cloud.ingest.service import IngestService
from edge.agent import Agent
from edge.config import DeviceConfig
from ioc.stack import Stack


class RunningAgent:
    def __init__(self, config: DeviceConfig) -> None:
        self.agent = Agent(config)
        self.thread = threading.Thread(target=self.agent.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(30)


@pytest.fixture
def agent(stack: Stack, tmp_path: Path, as_role: Callable[[str], httpx.Client],
          ingest: IngestService) -> Iterator[tuple[str, RunningAgent]]:
    d = new_device(as_role("technician"))
    config = DeviceConfig.model_validate({
        "device_id": d["device_id"], "site": d["site"], "profile": "env-gateway",
        "broker": device_broker(stack.mqtt_host, stack.mqtt_port, d["device_id"]),
        "outbox": {"path": str(tmp_path / "outbox.sqlite3"), "sync": "normal"},
        "sensors": [{"type": "simulated", "metrics": ["pm25", "co2"], "seed": 1}],
        "settings": {"heartbeat_s": 0.5, "metrics": {"pm25": {"interval_s": 0.2}}}})
    running = RunningAgent(config)
    tech = as_role("technician")
    wait_until(lambda: tech.get(f"/devices/{d['device_id']}").json()["live"]["status"] == "online",
               what="the agent to be online")
    yield d["device_id"], running
    running.stop()


def _twin(c: httpx.Client, device_id: str) -> dict:
    return c.get(f"/devices/{device_id}/config").json()  # type: ignore[no-any-return]


def test_desired_config_reaches_the_agent_and_flips_to_in_sync(agent: tuple[str, RunningAgent],
                                                              as_role: Callable[[str], httpx.Client]) -> None:
    device_id, running = agent
    tech = as_role("technician")
    r = tech.put(f"/devices/{device_id}/config/desired",
                 json={"settings": {"heartbeat_s": 0.7, "metrics": {"pm25": {"interval_s": 0.3, "high": 80}}}})
    assert r.status_code == 200, r.text
    version = r.json()["desired"]["version"]
    twin = wait_until(lambda: (t := _twin(tech, device_id))["state"] == "in_sync" and t, what="in_sync")
    assert twin["reported"]["version"] == version
    assert twin["difference"] == []
    assert running.agent.settings.metrics["pm25"].high == 80  # the running agent applies it
    # A second change is a new version.
    r = tech.put(f"/devices/{device_id}/config/desired", json={"settings": {"heartbeat_s": 0.6}})
    assert r.json()["desired"]["version"] == version + 1
    wait_until(lambda: _twin(tech, device_id)["state"] == "in_sync", what="second in_sync")
    history = tech.get(f"/devices/{device_id}/config/history").json()
    assert [h["version"] for h in history] == [version + 1, version]


def test_invalid_config_is_refused_by_the_api_with_the_reason(agent: tuple[str, RunningAgent],
                                                             as_role: Callable[[str], httpx.Client]) -> None:
    device_id, _ = agent
    tech = as_role("technician")
    r = tech.put(f"/devices/{device_id}/config/desired",
                 json={"settings": {"metrics": {"pm25": {"high": 5000}}}})
    assert r.status_code == 422
    assert "pm25.high=5000 outside [0, 1000]" in r.json()["detail"]
    r = tech.put(f"/devices/{device_id}/config/desired", json={"settings": {"metrics": {"ozone": {}}}})
    assert r.status_code == 422
    assert "ozone" in r.json()["detail"]
    assert tech.get(f"/devices/{device_id}/config/history").json() == []


def test_device_refusal_shows_as_rejected(agent: tuple[str, RunningAgent], stack: Stack,
                                          as_role: Callable[[str], httpx.Client]) -> None:
    """Forced onto the topic past the API, a bad config is refused by the device and the twin says why."""
    device_id, _ = agent
    tech = as_role("technician")
    r = tech.put(f"/devices/{device_id}/config/desired", json={"settings": {"heartbeat_s": 0.5}})
    version = r.json()["desired"]["version"]
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login(c, stack).connect(stack.mqtt_host, stack.mqtt_port)
    c.loop_start()
    bad = {"version": version, "settings": {"metrics": {"pm25": {"low": -50}}}}
    c.publish(f"cfg/v1/{device_id}/desired", json.dumps(bad), qos=1, retain=True).wait_for_publish(10)
    twin = wait_until(lambda: (t := _twin(tech, device_id))["state"] == "rejected" and t, what="rejected")
    assert "pm25.low=-50" in twin["error"]
    c.publish(f"cfg/v1/{device_id}/desired", b"", qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def _final(tech: httpx.Client, device_id: str, command_id: str) -> dict:
    return wait_until(lambda: (x := tech.get(f"/devices/{device_id}/commands/{command_id}").json())["status"]
                      not in ("pending", "delivered") and x, what="a final command status")  # type: ignore[no-any-return]


def test_command_round_trips_and_is_idempotent(agent: tuple[str, RunningAgent],
                                               as_role: Callable[[str], httpx.Client]) -> None:
    device_id, running = agent
    tech = as_role("technician")
    key = {"Idempotency-Key": uuid.uuid4().hex}
    r = tech.post(f"/devices/{device_id}/commands", json={"command": "ping"}, headers=key)
    assert r.status_code == 202, r.text
    sent = r.json()
    done = _final(tech, device_id, sent["command_id"])
    assert done["status"] == "ok"
    assert done["result"]["boot_id"] == running.agent.boot_id
    again = tech.post(f"/devices/{device_id}/commands", json={"command": "ping"}, headers=key)
    assert again.status_code == 200
    assert again.json()["command_id"] == sent["command_id"]
    assert tech.post(f"/devices/{device_id}/commands", json={"command": "flush"}, headers=key).status_code == 409
    r = tech.post(f"/devices/{device_id}/commands",
                  json={"command": "set-interval", "args": {"metric": "co2", "interval_s": 2}})
    assert _final(tech, device_id, r.json()["command_id"])["status"] == "ok"
    assert running.agent.settings.metrics["co2"].interval_s == 2
    bad = tech.post(f"/devices/{device_id}/commands", json={"command": "set-interval", "args": {"metric": "nope"}})
    assert bad.status_code == 422
    assert tech.post(f"/devices/{device_id}/commands", json={"command": "snapshot"}).status_code == 422


def test_unanswered_command_times_out(stack: Stack, ingest: IngestService,
                                      as_role: Callable[[str], httpx.Client]) -> None:
    """A box that is online and takes the command but never answers."""
    tech = as_role("technician")
    device_id = new_device(tech)["device_id"]
    mute = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    login(mute, stack).connect(stack.mqtt_host, stack.mqtt_port)
    mute.loop_start()
    got: list[str] = []
    mute.on_message = lambda c, u, m: got.append(m.topic)
    mute.subscribe(f"cmd/v1/{device_id}/#", qos=1)
    mute.publish(f"state/v1/{device_id}", json.dumps({"v": 1, "device_id": device_id, "status": "online",
                                                      "boot_id": "b", "ts": int(time.time() * 1000)}),
                 qos=1).wait_for_publish(10)
    wait_until(lambda: tech.get(f"/devices/{device_id}").json()["live"]["online"], what="online")
    r = tech.post(f"/devices/{device_id}/commands", json={"command": "reboot", "timeout_s": 1})
    assert r.json()["status"] == "delivered"
    done = _final(tech, device_id, r.json()["command_id"])
    assert done["status"] == "timed_out"
    assert got == [f"cmd/v1/{device_id}/reboot"]
    mute.loop_stop()
    mute.disconnect()


def test_command_to_an_offline_device_expires(as_role: Callable[[str], httpx.Client]) -> None:
    tech = as_role("technician")
    device_id = new_device(tech)["device_id"]
    r = tech.post(f"/devices/{device_id}/commands", json={"command": "reboot", "timeout_s": 1, "expiry_s": 2})
    assert r.json()["status"] == "pending"
    done = _final(tech, device_id, r.json()["command_id"])
    assert done["status"] == "expired"
    assert "not online" in done["error"]

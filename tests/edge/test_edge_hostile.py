"""Nothing sent to a device stops its agent: generated hostile command arguments and desired configs
against a real agent on a real Mosquitto. Every one gets a refusal with a reason (a reply with ok=false,
a `rejected` config report); the agent keeps sampling, answers the next command and applies the next
valid config. A hostile retained desired config does not stop it from starting, either."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

from edge_helpers import AgentThread, Broker, Watcher, device_config, wait_for
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.agent import Agent
from edge.config import DeviceConfig
from simulators.bad_payloads import BODY_MUTATIONS, hostile_variant

DEV, SITE = "env-h1", "lab"
VALID_ARGS = {"metric": "co2", "interval_s": 0.4}
VALID_DESIRED = {"version": 3, "settings": {"heartbeat_s": 0.5, "metrics": {
    "pm25": {"interval_s": 0.2, "aggregate": "mean", "severity": "warning"}}}}


def _agent(b: Broker, tmp_path: Path) -> AgentThread:
    cfg = DeviceConfig.model_validate(device_config(DEV, SITE, b.host, b.port, tmp_path / "outbox.sqlite3"))
    runner = AgentThread(Agent(cfg))
    wait_for(lambda: runner.agent.session.connected, what="agent connected")
    return runner


def _request(w: Watcher, command: str, payload: bytes, correlation: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = w.reply_topic
    props.CorrelationData = correlation
    w.client.publish(f"cmd/v1/{DEV}/{command}", payload, qos=1, properties=props)


def _replies(w: Watcher) -> dict[bytes, dict[str, Any]]:
    return {m.properties.CorrelationData: json.loads(m.payload) for m in w.on(w.reply_topic)}


def _alive(runner: AgentThread) -> bool:
    return runner.reason is None and runner._thread.is_alive()


def test_hostile_commands_are_refused_with_a_reason_and_the_agent_carries_on(
    mqtt_broker: Broker, watcher: Watcher, tmp_path: Path
) -> None:
    watcher.subscribe(watcher.reply_topic)
    watcher.subscribe(f"tlm/v1/{SITE}/{DEV}/#")
    runner = _agent(mqtt_broker, tmp_path)
    try:
        rng = random.Random(11)
        sent: dict[bytes, str] = {}
        for i, chosen in enumerate(itertools.chain(BODY_MUTATIONS, (rng.choice(BODY_MUTATIONS) for _ in range(45)))):
            mutation, payload = hostile_variant(VALID_ARGS, rng, chosen)
            corr = f"h{i}".encode()
            sent[corr] = mutation
            _request(watcher, "set-interval", payload, corr)
        # The same junk to a command without arguments and to an unknown one: answered, never fatal.
        _request(watcher, "ping", b"[" * 60_000, b"p-deep")  # under the size bound, far over the depth one
        _request(watcher, "no-such-command", b"\xff" * 10, b"u-utf8")
        _request(watcher, "ping", b"", b"p-ok")
        wanted = {*sent, b"p-deep", b"u-utf8", b"p-ok"}
        replies = wait_for(lambda: wanted <= set(_replies(watcher)) and _replies(watcher), what="every reply")
        for corr, mutation in sent.items():
            assert replies[corr]["ok"] is False, (mutation, replies[corr])
            assert replies[corr]["error"], mutation
        assert replies[b"p-deep"]["ok"] is False
        assert "not JSON" in replies[b"p-deep"]["error"]
        assert replies[b"u-utf8"]["ok"] is False
        assert replies[b"p-ok"]["ok"] is True
        assert _alive(runner)
        # Still itself: sampling, and a valid command is carried out.
        assert runner.agent.sampler.intervals()["co2"] == 0.5  # type: ignore[union-attr]  # nothing applied
        _request(watcher, "set-interval", json.dumps(VALID_ARGS).encode(), b"valid")
        assert wait_for(lambda: _replies(watcher).get(b"valid"), what="valid reply")["ok"] is True
        assert runner.agent.sampler.intervals()["co2"] == 0.4  # type: ignore[union-attr]
        seen = len(watcher.on(f"tlm/v1/{SITE}/{DEV}/env"))
        wait_for(lambda: len(watcher.on(f"tlm/v1/{SITE}/{DEV}/env")) > seen, what="telemetry still flowing")
    finally:
        runner.stop()


def _reports(w: Watcher) -> list[dict[str, Any]]:
    return w.payloads(f"cfg/v1/{DEV}/reported")


def test_hostile_desired_configs_are_rejected_with_a_reason_even_retained_at_start(
    mqtt_broker: Broker, watcher: Watcher, tmp_path: Path
) -> None:
    watcher.subscribe(f"cfg/v1/{DEV}/reported")
    runner = _agent(mqtt_broker, tmp_path)
    desired = f"cfg/v1/{DEV}/desired"
    try:
        rng = random.Random(12)
        for mutation in (*BODY_MUTATIONS, *(rng.choice(BODY_MUTATIONS) for _ in range(15))):
            before = len([r for r in _reports(watcher) if r["status"] == "rejected"])
            _, payload = hostile_variant(VALID_DESIRED, rng, mutation)
            watcher.client.publish(desired, payload, qos=1, retain=True)
            rejected = wait_for(lambda b=before: [r for r in _reports(watcher) if r["status"] == "rejected"][b:],
                                what=f"rejection of a {mutation} desired config")
            assert rejected[0]["error"], mutation
            assert rejected[0]["version"] == 0, mutation  # still the file's settings
            assert _alive(runner), mutation
        assert runner.agent.sampler.intervals()["pm25"] == 0.1  # type: ignore[union-attr]
    finally:
        runner.stop()
    # A new start with the hostile config still retained: the agent comes up, refuses it, runs.
    hostile = hostile_variant(VALID_DESIRED, rng, "deep")[1]
    watcher.client.publish(desired, hostile, qos=1, retain=True).wait_for_publish(5)
    seen = len(_reports(watcher))
    runner = _agent(mqtt_broker, tmp_path)
    try:
        wait_for(lambda: [r for r in _reports(watcher)[seen:] if r["status"] == "rejected"], what="rejected at start")
        assert _alive(runner)
        watcher.client.publish(desired, json.dumps(VALID_DESIRED), qos=1, retain=True)
        wait_for(lambda: [r for r in _reports(watcher)[seen:] if r["status"] == "applied" and r["version"] == 3],
                 what="a valid config applied after the hostile ones")
        assert runner.agent.sampler.intervals()["pm25"] == 0.2  # type: ignore[union-attr]
    finally:
        runner.stop()
        watcher.client.publish(desired, b"", qos=1, retain=True)


def test_hostile_watermarks_are_ignored_and_the_agent_keeps_sending(
    mqtt_broker: Broker, watcher: Watcher, tmp_path: Path
) -> None:
    """Junk on the device's own watermark topic (ack/v1/{id}): logged and ignored, never fatal."""
    watcher.subscribe(f"tlm/v1/{SITE}/{DEV}/#")
    runner = _agent(mqtt_broker, tmp_path)
    try:
        valid = {"v": 1, "device_id": DEV, "ts": 1_800_000_000_000, "instance": "ingest-x",
                 "boots": [{"boot_id": "other-boot", "seq": 5, "ranges": [[0, 5]]}]}
        rng = random.Random(13)
        for mutation in (*BODY_MUTATIONS, *(rng.choice(BODY_MUTATIONS) for _ in range(15))):
            watcher.client.publish(f"ack/v1/{DEV}", hostile_variant(valid, rng, mutation)[1], qos=1)
        seen = len(watcher.on(f"tlm/v1/{SITE}/{DEV}/env"))
        wait_for(lambda: len(watcher.on(f"tlm/v1/{SITE}/{DEV}/env")) > seen + 5, what="telemetry still flowing")
        assert _alive(runner)
        assert runner.agent.session.connected
    finally:
        runner.stop()

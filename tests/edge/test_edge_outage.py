"""Fault tier without the cloud: the broker process is stopped mid-stream and started again.

The end-to-end versions with ingest and the database live in test_edge_e2e.py; these pin the
edge's own guarantees (nothing lost across an outage; bounded outbox drops the oldest, counted).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from edge_helpers import AgentThread, Broker, RecordingSink, Watcher, device_config, wait_for

from contract.messages import TelemetryMessage
from edge.agent import Agent
from edge.config import DeviceConfig

DEV, SITE = "env-o1", "lab"


def make_config(b: Broker, tmp_path: Path, **over: object) -> DeviceConfig:
    """No ingest here, so no watermark: rows are forgotten on the broker's PUBACK."""
    data = device_config(DEV, SITE, b.host, b.port, tmp_path / "outbox.sqlite3", **over)
    data["outbox"] = {**data["outbox"], "forget_on": "puback"}
    return DeviceConfig.model_validate(data)


pytestmark = pytest.mark.slow


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path, persistence=True)
    b.start()
    yield b
    b.stop()


def _pm25_ts(w: Watcher) -> set[int]:
    return {
        s.ts
        for p in w.payloads(f"tlm/v1/{SITE}/{DEV}/env")
        for s in TelemetryMessage.model_validate(p).samples
        if "pm25" in s.values
    }


def _health(w: Watcher) -> list[dict[str, float]]:
    return [
        s.values
        for p in w.payloads(f"tlm/v1/{SITE}/{DEV}/health")
        for s in TelemetryMessage.model_validate(p).samples
    ]


def test_broker_outage_loses_nothing(durable_broker: Broker, tmp_path: Path) -> None:
    w = Watcher(durable_broker.host, durable_broker.port, persistent=True)
    w.subscribe(f"tlm/v1/{SITE}/{DEV}/#")
    agent = Agent(make_config(durable_broker, tmp_path))
    rec = agent.sink = RecordingSink(agent.sink)  # type: ignore[assignment]
    runner = AgentThread(agent)
    try:
        wait_for(lambda: len(_pm25_ts(w)) >= 5, what="samples before the outage")
        durable_broker.stop()
        outbox = runner.agent.outbox
        wait_for(lambda: not runner.agent.session.connected, what="link down")
        depth = outbox.depth
        wait_for(lambda: outbox.depth >= depth + 10, what="samples queued during the outage")
        durable_broker.start()
        wait_for(lambda: runner.agent.session.connects >= 2, what="reconnect")
        wait_for(lambda: any(h["link_up"] == 0 for h in _health(w)), what="heartbeat from the outage")
        agent.sampler.stop()  # type: ignore[union-attr]  # no new samples from here on
        sent = {ts for (m, ts) in rec.snapshot() if m == "pm25"}
        wait_for(lambda: sent <= _pm25_ts(w), what="every committed sample delivered")
    finally:
        runner.stop()
        w.close()
    assert _pm25_ts(w) == sent
    assert len(sent) >= 10


def test_outbox_bound_drops_oldest_and_reports_it(mqtt_broker: Broker, tmp_path: Path) -> None:
    w = Watcher(mqtt_broker.host, mqtt_broker.port)
    w.subscribe(f"tlm/v1/{SITE}/{DEV}/#")
    outbox = {"path": str(tmp_path / "ob.sqlite3"), "max_bytes": 4096, "sync": "normal"}
    agent = Agent(make_config(mqtt_broker, tmp_path, outbox=outbox))
    rec = agent.sink = RecordingSink(agent.sink)  # type: ignore[assignment]
    runner = AgentThread(agent)
    try:
        wait_for(lambda: len(_pm25_ts(w)) >= 3, what="samples before the outage")
        mqtt_broker.stop()
        before = max(_pm25_ts(w))
        wait_for(lambda: agent.outbox.dropped_total >= 20, what="outbox overflow")
        mqtt_broker.start()
        wait_for(lambda: any(h["outbox_dropped"] >= 20 for h in _health(w)), what="drop count in heartbeat")
        dropped_at_report = max(h["outbox_dropped"] for h in _health(w))
        agent.sampler.stop()  # type: ignore[union-attr]  # no new samples from here on
        wait_for(lambda: agent.outbox.depth == 0, what="outbox drained")
        sent = {ts for (m, ts) in rec.snapshot() if m == "pm25" and ts > before}
        wait_for(lambda: max(sent) in _pm25_ts(w), what="the newest sample delivered")
    finally:
        runner.stop()
        w.close()
    delivered = sent & _pm25_ts(w)
    lost = sent - delivered
    assert lost, "the bound should have forced drops"
    assert max(lost) < min(delivered), "only the oldest samples may be dropped"
    assert dropped_at_report <= agent.outbox.dropped_total

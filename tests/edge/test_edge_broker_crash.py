"""Broker crash with the real edge agent as the sender: nothing the agent took may be lost.

Mosquitto acknowledges a QoS 1 PUBLISH before it writes it to disk, so a SIGKILL loses what came in since
its last autosave. The agent keeps every row after the PUBACK until ingest's watermark says the database
has it, and sends again what no watermark covers, so the database still ends with every sample once.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from edge_helpers import AgentThread, RecordingSink, device_config, wait_for
from support import mqtt_login

from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings
from edge.agent import Agent
from edge.config import DeviceConfig

pytestmark = pytest.mark.slow
SITE = "edge-crash"


def _stored(db: psycopg.Connection, device_id: str) -> dict[tuple[str, int], float]:
    rows = db.execute(
        "SELECT metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry"
        " WHERE device_id = %s AND metric IN ('pm25', 'co2')",
        (device_id,),
    ).fetchall()
    return {(m, int(t)): v for m, t, v in rows}


def _duplicates(db: psycopg.Connection, device_id: str) -> int:
    total, distinct = db.execute(
        "SELECT count(*), count(DISTINCT (metric, ts)) FROM telemetry WHERE device_id = %s", (device_id,)
    ).fetchone() or (0, 0)
    return int(total - distinct)


@pytest.fixture
def device(register_device: Callable[..., None]) -> str:
    dev = f"crash-{uuid.uuid4().hex[:8]}"
    register_device(dev, SITE, "env-gateway")
    return dev


@pytest.fixture
def make_ingest(stack: Any) -> Iterator[Callable[..., IngestService]]:
    """In-process ingest services sharing one instance id: one persistent session at the broker (unless
    session_expiry_s=0: then the broker forgets the session, and drops what comes while it is away)."""
    instance = f"crash-ingest-{uuid.uuid4().hex[:6]}"
    made: list[IngestService] = []

    def make(session_expiry_s: int = 600) -> IngestService:
        svc = IngestService(IngestSettings(
            dsn=stack.dsn, mqtt_host=stack.mqtt_host, mqtt_port=stack.mqtt_port, instance=instance,
            batch_max_delay_s=0.05, session_expiry_s=session_expiry_s, stats_interval_s=1.0,
            maintenance_interval_s=2.0,
            **mqtt_login(stack, "ingest"),
        ))
        svc.start()
        assert svc.wait_connected(30), "ingest could not connect"
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.stop()


def test_broker_sigkill_while_ingest_is_stopped_loses_no_sample(
    *, stack: Any, db: psycopg.Connection, device: str, tmp_path: Path, make_ingest: Any
) -> None:
    ingest = make_ingest()
    cfg = device_config(device, SITE, stack.mqtt_host, stack.mqtt_port, tmp_path / "outbox.sqlite3",
                        login=stack.credentials("simulator"))
    cfg["outbox"] = {**cfg["outbox"], "resend_after_s": 2.0}
    agent = Agent(DeviceConfig.model_validate(cfg))
    rec = RecordingSink(agent.sink)
    agent.sink = rec  # type: ignore[assignment]
    runner = AgentThread(agent)
    try:
        wait_for(lambda: len(_stored(db, device)) >= 5, what="samples stored before the crash")
        ingest.stop()  # messages now queue at the broker for ingest's persistent session
        at_broker = agent.outbox.depth
        wait_for(lambda: agent.outbox.depth >= at_broker + 30, what="rows acknowledged by the broker, kept")
        assert agent.session.connected
        pid = stack.mosquitto.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # no chance to save what came in since the last autosave
        taken_at_crash = len(rec.snapshot())
        wait_for(lambda: not agent.session.connected, what="agent saw the crash")
        stack.start_broker()
        make_ingest()  # the same instance: the broker's persisted queue for it is delivered
        wait_for(lambda: agent.session.connects >= 2, what="agent reconnected")
        # (not "10 more than stored": a quick ingest catches up with the samples before that can hold)
        wait_for(lambda: len(rec.snapshot()) >= taken_at_crash + 10, what="sampling after the crash")
        agent.sampler.stop()  # type: ignore[union-attr]  # freeze the expected set
        expected = rec.snapshot()
        taken = agent.outbox.max_id()  # every sample's row; heartbeats keep adding rows above it
        try:
            wait_for(lambda: _stored(db, device) == expected, timeout=90, what="database == every sample taken")
        except AssertionError:
            got = _stored(db, device)
            missing = sorted(set(expected) - set(got), key=lambda k: k[1])
            raise AssertionError(f"missing {len(missing)} of {len(expected)}: {missing[:5]}; "
                                 f"resent {agent.drainer.resent}") from None
        # Not `depth == 0`: a heartbeat row every 0.5 s and a watermark at most once a second leave the
        # outbox empty only in short gaps, which a loaded host can close for good (seen in a full run).
        wait_for(lambda: agent.outbox.kept_through(taken) == 0, timeout=60,
                 what="every row taken before the freeze confirmed by a watermark")
    finally:
        runner.stop()
    assert _duplicates(db, device) == 0
    assert len(expected) > 30


def test_the_last_messages_no_watermark_covers_are_sent_again_when_the_agent_goes_quiet(
    *, stack: Any, db: psycopg.Connection, device: str, tmp_path: Path, make_ingest: Any
) -> None:
    """The broker acknowledged the agent's last messages and nobody got them (ingest away with its session
    gone; a broker crash or a lost watermark look the same to the agent), and the agent has nothing newer
    to send (no heartbeat for an hour): no later stored seq shows them missing, yet they must arrive."""
    ingest = make_ingest(session_expiry_s=0)
    cfg = device_config(device, SITE, stack.mqtt_host, stack.mqtt_port, tmp_path / "outbox.sqlite3",
                        login=stack.credentials("simulator"))
    cfg["outbox"] = {**cfg["outbox"], "resend_after_s": 2.0}
    cfg["settings"]["heartbeat_s"] = 3600
    agent = Agent(DeviceConfig.model_validate(cfg))
    rec = agent.sink = RecordingSink(agent.sink)  # type: ignore[assignment]
    runner = AgentThread(agent)
    try:
        wait_for(lambda: len(_stored(db, device)) >= 5, what="samples stored")
        ingest.stop()  # its session ends: the broker acknowledges what comes next and drops it
        at_broker = agent.outbox.depth
        wait_for(lambda: agent.outbox.depth >= at_broker + 20, what="rows acknowledged by the broker, kept")
        agent.sampler.stop()  # type: ignore[union-attr]  # the agent goes quiet
        expected = rec.snapshot()
        wait_for(lambda: not agent.outbox.fetch(limit=1), what="every row acknowledged by the broker")
        make_ingest(session_expiry_s=0)  # back, with nothing queued for it
        wait_for(lambda: _stored(db, device) == expected, timeout=90, what="database == every sample taken")
        wait_for(lambda: agent.outbox.depth == 0, timeout=60, what="every row confirmed by a watermark")
        assert agent.session.connects == 1  # all on one connection: not the resend after a reconnect
    finally:
        runner.stop()
    assert _duplicates(db, device) == 0

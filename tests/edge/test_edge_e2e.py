"""End to end with the real stack: edge agent -> Mosquitto -> ingest -> PostgreSQL.

Faults are real: the broker process is stopped and restarted, the agent process is SIGKILLed.
What the agent committed is known exactly (a recording sink in process, a journal out of process),
so "every sample exactly once" is checked as set equality against the database, values included.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from edge_helpers import AgentThread, ModbusServer, RecordingSink, TcpGate, Watcher, device_config, wait_for

from contract.messages import now_ms
from contract.profiles import get_profile
from edge.agent import Agent
from edge.config import DeviceConfig

pytestmark = pytest.mark.slow
SITE = "edge-e2e"
HERE = Path(__file__).resolve().parent
Points = dict[tuple[str, int], float]


def _stored(db: psycopg.Connection, device_id: str, metrics: tuple[str, ...] = ("pm25", "co2")) -> Points:
    rows = db.execute(
        "SELECT metric, (extract(epoch FROM ts) * 1000)::bigint, value FROM telemetry"
        " WHERE device_id = %s AND metric = ANY(%s)",
        (device_id, list(metrics)),
    ).fetchall()
    return {(m, int(t)): v for m, t, v in rows}


def _no_duplicates(db: psycopg.Connection, device_id: str) -> None:
    total, distinct = db.execute(
        "SELECT count(*), count(DISTINCT (metric, ts)) FROM telemetry WHERE device_id = %s", (device_id,)
    ).fetchone() or (0, 0)
    assert total == distinct


def _health(db: psycopg.Connection, device_id: str, metric: str) -> list[float]:
    rows = db.execute(
        "SELECT value FROM telemetry WHERE device_id = %s AND metric = %s ORDER BY ts", (device_id, metric)
    ).fetchall()
    return [v for (v,) in rows]


@pytest.fixture
def gate(stack: Any) -> Iterator[TcpGate]:
    g = TcpGate(stack.mqtt_host, stack.mqtt_port)
    g.login = stack.credentials("simulator")
    yield g
    g.stop()


@contextlib.contextmanager
def broker_outage(stack: Any, ingest: Any, gate: TcpGate) -> Iterator[None]:
    """Stop the broker process; on exit start it again and let the agent in once ingest is back."""
    gate.close_gate()
    stack.stop_broker()
    wait_for(lambda: not ingest.wait_connected(0), what="ingest saw the outage")
    try:
        yield
    finally:
        stack.start_broker()
        assert ingest.wait_connected(60), "ingest did not reconnect"
        gate.open_gate()


@pytest.fixture
def device(register_device: Callable[..., None]) -> str:
    dev = f"edge-{uuid.uuid4().hex[:8]}"
    register_device(dev, SITE, "env-gateway")
    return dev


def _config(stack: Any, dev: str, tmp_path: Path, **over: Any) -> dict[str, Any]:
    """`stack` is the real stack or a TcpGate in front of it (both have a loopback port)."""
    port = stack.port if isinstance(stack, TcpGate) else stack.mqtt_port
    login = stack.login if isinstance(stack, TcpGate) else stack.credentials("simulator")
    return device_config(dev, SITE, "127.0.0.1", port, tmp_path / "outbox.sqlite3", login=login, **over)


@pytest.fixture
def agent_factory() -> Iterator[Callable[[dict[str, Any]], tuple[Agent, RecordingSink, AgentThread]]]:
    runners: list[AgentThread] = []

    def start(cfg: dict[str, Any]) -> tuple[Agent, RecordingSink, AgentThread]:
        agent = Agent(DeviceConfig.model_validate(cfg))
        rec = RecordingSink(agent.sink)
        agent.sink = rec  # type: ignore[assignment]
        runners.append(AgentThread(agent))
        return agent, rec, runners[-1]

    yield start
    for r in runners:
        r.stop()


def test_broker_restart_every_sample_exactly_once(
    *,
    stack: Any,
    ingest: Any,
    db: psycopg.Connection,
    device: str,
    tmp_path: Path,
    agent_factory: Any,
    gate: TcpGate,
) -> None:
    agent, rec, _ = agent_factory(_config(gate, device, tmp_path))
    wait_for(lambda: len(_stored(db, device)) >= 5, what="samples stored before the outage")
    with broker_outage(stack, ingest, gate):
        wait_for(lambda: not agent.session.connected, what="link down")
        depth = agent.outbox.depth
        wait_for(lambda: agent.outbox.depth >= depth + 15, what="samples queued during the outage")
    wait_for(lambda: agent.session.connects >= 2, what="agent reconnected")
    agent.sampler.stop()  # type: ignore[union-attr]  # freeze the expected set
    expected = rec.snapshot()
    try:
        wait_for(lambda: _stored(db, device) == expected, what="database == every committed sample")
    except AssertionError:
        got = _stored(db, device)
        missing = sorted(set(expected) - set(got), key=lambda k: k[1])
        extra = sorted(set(got) - set(expected), key=lambda k: k[1])
        wrong = [k for k in expected if k in got and got[k] != expected[k]]
        raise AssertionError(
            f"missing {len(missing)} {missing[:5]}..{missing[-3:]}, extra {extra[:5]}, "
            f"wrong values {wrong[:5]}; of {len(expected)}; "
            f"ts range {min(k[1] for k in expected)}..{max(k[1] for k in expected)}"
        ) from None
    _no_duplicates(db, device)
    assert len(expected) > 30


def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    *, stack: Any, ingest: Any, db: psycopg.Connection, device: str, tmp_path: Path
) -> None:
    cfg_path, journal = tmp_path / "device.yaml", tmp_path / "journal.txt"
    cfg_path.write_text(yaml.safe_dump(_config(stack, device, tmp_path)))

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, str(HERE / "edge_agent_proc.py"), str(cfg_path), str(journal)],
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "agent.log").open("ab"),
        )

    def journaled() -> Points:
        lines = journal.read_text().splitlines() if journal.exists() else []
        return {(m, int(t)): float(v) for m, t, v in (ln.split() for ln in lines) if m in ("pm25", "co2")}

    proc = spawn()
    try:
        wait_for(lambda: len(_stored(db, device)) >= 10, what="samples stored before the kill")
        proc.kill()
        proc.wait(30)
        committed = journaled()
        proc = spawn()
        wait_for(lambda: committed.items() <= _stored(db, device).items(), what="pre-kill samples stored")
        wait_for(lambda: len(journaled()) >= len(committed) + 10, what="sampling after the restart")
    finally:
        proc.terminate()
        proc.wait(30)
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as ob:  # rows still waiting for a PUBACK
        pending = {
            (m, s["ts"]): v
            for (body,) in ob.execute("SELECT body FROM outbox WHERE leaf = 'env'")
            for s in [json.loads(body)]
            for m, v in s["values"].items()
        }
    final = journaled()

    def vanished() -> dict[tuple[str, int], tuple[float, float | None]]:
        have = _stored(db, device) | pending  # acknowledged rows may still be on their way to the DB
        return {k: (v, have.get(k)) for k, v in final.items() if have.get(k) != v}

    with contextlib.suppress(AssertionError):
        wait_for(lambda: not vanished(), what="every committed sample stored or still queued")
    assert not vanished(), f"committed samples vanished or changed: {sorted(vanished().items())[:8]}"
    stored = _stored(db, device)
    assert set(stored) <= set(final) | set(pending) | {
        k for k in stored if k[1] > max(t for _, t in committed)
    }
    _no_duplicates(db, device)


def test_outbox_bound_drops_oldest_and_heartbeat_reports_it(
    *,
    stack: Any,
    ingest: Any,
    db: psycopg.Connection,
    device: str,
    tmp_path: Path,
    agent_factory: Any,
    gate: TcpGate,
) -> None:
    outbox = {"path": str(tmp_path / "ob.sqlite3"), "max_bytes": 4096, "sync": "normal"}
    agent, rec, _ = agent_factory(_config(gate, device, tmp_path, outbox=outbox))
    wait_for(lambda: len(_stored(db, device)) >= 3, what="samples before the outage")
    with broker_outage(stack, ingest, gate):
        wait_for(lambda: not agent.session.connected, what="link down")
        before = max(t for _, t in rec.snapshot())
        wait_for(lambda: agent.outbox.dropped_total >= 30, what="outbox overflow")
    wait_for(lambda: any(v >= 30 for v in _health(db, device, "outbox_dropped")), what="drops in heartbeat")
    agent.sampler.stop()  # type: ignore[union-attr]
    sent = {k: v for k, v in rec.snapshot().items() if k[1] > before}
    wait_for(lambda: max(sent, key=lambda k: k[1]) in _stored(db, device), what="newest sample stored")
    stored = _stored(db, device)
    lost = [k[1] for k in sent if k not in stored]
    kept = [k[1] for k in sent if k in stored]
    assert lost, "the bound should have forced drops"
    assert max(lost) < min(kept), "only the oldest may be dropped"


def test_remote_config_and_commands(
    *, stack: Any, ingest: Any, db: psycopg.Connection, device: str, tmp_path: Path, agent_factory: Any
) -> None:
    agent, _, _ = agent_factory(_config(stack, device, tmp_path))
    w = Watcher(stack.mqtt_host, stack.mqtt_port, login=stack.credentials("admin"))
    try:
        wait_for(lambda: agent.session.connected, what="agent connected")
        status = wait_for(  # telemetry committed first makes a row with only last_seen: wait for the birth
            lambda: (r := db.execute(
                "SELECT online, boot_id FROM device_status WHERE device_id = %s", (device,)
            ).fetchone()) and r[1] is not None and r,
            what="birth stored",
        )
        assert status == (True, agent.boot_id)

        def reported() -> tuple[int, dict[str, Any]] | None:
            return db.execute(
                "SELECT version, config FROM device_config_reported WHERE device_id = %s", (device,)
            ).fetchone()

        desired = {"version": 3, "settings": {"heartbeat_s": 0.5, "metrics": {"pm25": {"interval_s": 0.3}}}}
        w.client.publish(f"cfg/v1/{device}/desired", json.dumps(desired), qos=1, retain=True)
        version, cfg = wait_for(lambda: (r := reported()) and r[0] == 3 and r, what="reported v3")
        assert cfg["status"] == "applied"
        wait_for(
            lambda: (
                db.execute(
                    "SELECT config_version FROM device_status WHERE device_id = %s", (device,)
                ).fetchone()
                == (3,)
            ),
            what="status carries config v3",
        )
        assert cfg["settings"]["metrics"]["pm25"]["interval_s"] == 0.3
        since = now_ms() + 300  # already applied (it was reported): later samples are on the new grid
        newer = wait_for(
            lambda: (ts := sorted(t for _, t in _stored(db, device, ("pm25",)) if t > since))[3:] and ts,
            what="samples on the new interval",
        )
        assert {b - a for a, b in itertools.pairwise(newer)} == {300}

        bad = {"version": 4, "settings": {"metrics": {"pm25": {"interval_s": 0.2, "low": 50, "high": 10}}}}
        w.client.publish(f"cfg/v1/{device}/desired", json.dumps(bad), qos=1, retain=True)
        version, cfg = wait_for(
            lambda: (r := reported()) and r[1]["status"] == "rejected" and r, what="refusal"
        )
        assert version == 3
        assert cfg["desired_version"] == 4
        assert agent.sampler.intervals()["pm25"] == 0.3  # type: ignore[union-attr]

        w.subscribe(w.reply_topic)
        w.request(f"cmd/v1/{device}/ping", {}, b"corr-42")
        (reply,) = wait_for(lambda: w.on(w.reply_topic))
        assert reply.properties.CorrelationData == b"corr-42"
        assert json.loads(reply.payload)["result"]["boot_id"] == agent.boot_id
    finally:
        w.client.publish(f"cfg/v1/{device}/desired", b"", qos=1, retain=True)
        w.close()


def test_modbus_readings_arrive_scaled(
    *,
    stack: Any,
    ingest: Any,
    db: psycopg.Connection,
    device: str,
    tmp_path: Path,
    agent_factory: Any,
    modbus_server: Callable[..., ModbusServer],
) -> None:
    regs = [0] * 16
    regs[0], regs[1] = (-57) & 0xFFFF, 482  # -5.7 °C, 48.2 %RH
    regs[4:6] = [0x4016, 0x0000]  # float32 2.34375 m
    server = modbus_server(regs)
    sensors = [
        {
            "type": "modbus",
            "transport": "tcp",
            "host": "127.0.0.1",
            "port": server.port,
            "registers": [
                {"metric": "temperature", "address": 0, "data_type": "int16", "scale": 0.1},
                {"metric": "humidity", "address": 1, "data_type": "uint16", "scale": 0.1},
                {"metric": "water_level", "address": 4, "data_type": "float32"},
            ],
        }
    ]
    settings = {
        "heartbeat_s": 1,
        "metrics": {m: {"interval_s": 0.2} for m in ("temperature", "humidity", "water_level")},
    }
    agent_factory(_config(stack, device, tmp_path, sensors=sensors, settings=settings))
    names = ("temperature", "humidity", "water_level")
    stored = wait_for(
        lambda: (p := _stored(db, device, names)) and len({m for m, _ in p}) == 3 and p,
        what="modbus values stored",
    )
    by_metric = {m: v for (m, _), v in stored.items()}
    assert by_metric == pytest.approx({"temperature": -5.7, "humidity": 48.2, "water_level": 2.34375})
    units = {m: get_profile("env-gateway").metrics[m].unit for m in names}
    assert units == {"temperature": "°C", "humidity": "%RH", "water_level": "m"}

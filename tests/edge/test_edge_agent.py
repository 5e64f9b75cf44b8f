"""The runtime against a real Mosquitto: birth/will, telemetry, remote config, commands, outages."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from edge_helpers import MOSQUITTO, AgentThread, Broker, Watcher, device_config, wait_for

from contract.messages import MetricSample, StatusMessage, TelemetryMessage
from edge.agent import Agent
from edge.config import BrokerConfig, DeviceConfig, DrainSettings
from edge.drain import Drainer, OutMessage
from edge.outbox import Outbox, Record
from edge.session import Session

DEV, SITE = "env-t1", "lab"


def make_config(b: Broker, tmp_path: Path, **over: Any) -> DeviceConfig:
    return DeviceConfig.model_validate(
        device_config(DEV, SITE, b.host, b.port, tmp_path / "outbox.sqlite3", **over)
    )


@pytest.fixture
def running(mqtt_broker: Broker, watcher: Watcher, tmp_path: Path) -> Iterator[AgentThread]:
    watcher.subscribe("#")
    runner = AgentThread(Agent(make_config(mqtt_broker, tmp_path)))
    wait_for(lambda: runner.agent.session.connected, what="agent connected")
    yield runner
    runner.stop()


def _env_ts(watcher: Watcher) -> list[int]:
    return [
        s.ts
        for p in watcher.payloads(f"tlm/v1/{SITE}/{DEV}/env")
        for s in TelemetryMessage.model_validate(p).samples
        if "pm25" in s.values
    ]


def test_birth_telemetry_heartbeat_and_clean_offline(running: AgentThread, watcher: Watcher) -> None:
    agent = running.agent
    birth = StatusMessage.model_validate(wait_for(lambda: watcher.payloads(f"state/v1/{DEV}"))[0])
    assert (birth.status, birth.boot_id, birth.profile) == ("online", agent.boot_id, "env-gateway")
    assert watcher.on(f"state/v1/{DEV}")[0].retain is False  # live delivery; retained for late joiners
    wait_for(lambda: len(_env_ts(watcher)) >= 5, what="env samples")
    beat = wait_for(lambda: watcher.payloads(f"tlm/v1/{SITE}/{DEV}/health"))[0]
    values = beat["samples"][0]["values"]
    assert {
        "uptime_s",
        "cpu_pct",
        "mem_rss_mb",
        "disk_free_pct",
        "outbox_depth",
        "outbox_dropped",
        "link_up",
    } <= set(values)
    ts = _env_ts(watcher)
    assert ts == sorted(set(ts))
    assert running.stop() == "shutdown"
    last = wait_for(lambda: [p for p in watcher.payloads(f"state/v1/{DEV}") if p["status"] == "offline"])
    assert last[-1]["reason"] == "shutdown"


def test_last_will_on_lost_link_then_reconnect(running: AgentThread, watcher: Watcher) -> None:
    session = running.agent.session
    wait_for(lambda: watcher.payloads(f"state/v1/{DEV}"), what="birth")
    session._client.socket().close()  # type: ignore[union-attr]  # the link dies without DISCONNECT
    will = wait_for(lambda: [p for p in watcher.payloads(f"state/v1/{DEV}") if p["status"] == "offline"])
    assert will[0]["reason"] == "connection lost"
    wait_for(lambda: session.connects >= 2, what="reconnect")
    wait_for(lambda: watcher.payloads(f"state/v1/{DEV}")[-1]["status"] == "online", what="new birth")


def test_desired_config_applied_live_and_invalid_refused(running: AgentThread, watcher: Watcher) -> None:
    desired = {"version": 4, "settings": {"heartbeat_s": 0.5, "metrics": {"pm25": {"interval_s": 0.25}}}}
    watcher.client.publish(f"cfg/v1/{DEV}/desired", json.dumps(desired), qos=1, retain=True)
    reported = f"cfg/v1/{DEV}/reported"
    rep = wait_for(
        lambda: [p for p in watcher.payloads(reported) if p["status"] == "applied" and p["version"]]
    )[-1]
    assert rep["version"] == 4
    assert watcher.payloads(reported)[0]["version"] == 0  # on connect it reported the file's settings
    assert rep["settings"]["metrics"]["pm25"]["interval_s"] == 0.25
    assert running.agent.sampler.intervals()["pm25"] == 0.25  # type: ignore[union-attr]
    # co2 was left out of the desired settings: back to its profile interval
    assert running.agent.sampler.intervals()["co2"] == 10  # type: ignore[union-attr]
    seen = len(_env_ts(watcher))
    wait_for(lambda: len(_env_ts(watcher)) >= seen + 4, what="samples on the new interval")
    tail = _env_ts(watcher)[-3:]
    assert {b - a for a, b in itertools.pairwise(tail)} == {250}

    bad = {"version": 5, "settings": {"metrics": {"pm25": {"high": 99999}}}}
    watcher.client.publish(f"cfg/v1/{DEV}/desired", json.dumps(bad), qos=1, retain=True)
    rej = wait_for(lambda: [p for p in watcher.payloads(reported) if p["status"] == "rejected"])[-1]
    assert rej["desired_version"] == 5
    assert rej["version"] == 4
    assert "outside" in rej["error"]
    assert running.agent.sampler.intervals()["pm25"] == 0.25  # type: ignore[union-attr]
    watcher.client.publish(f"cfg/v1/{DEV}/desired", b"", qos=1, retain=True)  # clear the retained config


def test_commands_answer_on_response_topic(running: AgentThread, watcher: Watcher) -> None:
    watcher.subscribe(watcher.reply_topic)
    calls = {
        b"c-ping": ("ping", {}),
        b"c-set": ("set-interval", {"metric": "co2", "interval_s": 0.2}),
        b"c-bad": ("set-interval", {"metric": "uptime_s", "interval_s": 1}),
        b"c-flush": ("flush", {}),
        b"c-what": ("self-destruct", {}),
    }
    for corr, (name, args) in calls.items():
        watcher.request(f"cmd/v1/{DEV}/{name}", args, corr)
    replies = wait_for(
        lambda: len(watcher.on(watcher.reply_topic)) >= len(calls) and watcher.on(watcher.reply_topic)
    )
    by_corr = {m.properties.CorrelationData: json.loads(m.payload) for m in replies}
    assert set(by_corr) == set(calls)
    assert by_corr[b"c-ping"]["ok"] is True
    assert by_corr[b"c-ping"]["result"]["boot_id"] == running.agent.boot_id
    assert by_corr[b"c-set"]["ok"] is True
    assert running.agent.sampler.intervals()["co2"] == 0.2  # type: ignore[union-attr]
    assert by_corr[b"c-bad"]["ok"] is False
    assert by_corr[b"c-flush"]["ok"] is True
    assert by_corr[b"c-what"]["ok"] is False
    assert "unknown command" in by_corr[b"c-what"]["error"]


def test_reboot_command_restarts_cleanly(running: AgentThread, watcher: Watcher) -> None:
    watcher.subscribe(watcher.reply_topic)
    watcher.request(f"cmd/v1/{DEV}/reboot", {}, b"r1")
    assert running.join() == "restart"
    reply = json.loads(wait_for(lambda: watcher.on(watcher.reply_topic))[0].payload)
    assert reply["ok"] is True
    offline = wait_for(lambda: [p for p in watcher.payloads(f"state/v1/{DEV}") if p["status"] == "offline"])
    assert offline[-1]["reason"] == "reboot"


def test_refused_connect_is_never_marked_connected(tmp_path: Path) -> None:
    # A root-started mosquitto drops to its own user before reading the file: keep it world-readable.
    shared = Path(tempfile.mkdtemp(prefix="edge-pw-"))
    shared.chmod(0o755)
    pw = shared / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), DEV, "right"], check=True)
    pw.chmod(0o644)
    broker = Broker(tmp_path, extra_conf=f"password_file {pw}")
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    broker.start()
    try:
        cfg = make_config(
            broker,
            tmp_path,
            broker={
                "host": broker.host,
                "port": broker.port,
                "password": "wrong",
                "backoff_min_s": 0.05,
                "backoff_max_s": 0.2,
            },
        )
        runner = AgentThread(Agent(cfg))
        wait_for(lambda: runner.agent.session.last_refusal, what="refusal")
        assert not runner.agent.session.connected
        assert runner.agent.session.connects == 0
        assert "right" not in repr(cfg)
        runner.stop()
    finally:
        broker.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_sample_yaml_runs_with_cli_check() -> None:
    out = subprocess.run(
        [
            ".venv/bin/python",
            "-c",
            "from edge.cli import app; app()",
            "check",
            "-c",
            "edge/sample-device.yaml",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    assert MOSQUITTO  # mosquitto is present for the protocol tier


def test_inflight_window_bounds_what_paho_holds(mqtt_broker: Broker, tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "w.sqlite3", max_bytes=10**8, max_age_s=1e6, sync="normal")
    ob.put(
        [
            Record("tlm", "env", i, MetricSample(ts=i, values={"pm25": 1.0}).model_dump_json())
            for i in range(300)
        ],
        now_ms=0,
    )
    drainer = Drainer(ob, DEV, SITE, "boot", DrainSettings(batch_size=1))
    broker = BrokerConfig(host=mqtt_broker.host, port=mqtt_broker.port, inflight_window=3)
    session = Session(
        device_id=DEV,
        broker=broker,
        drainer=drainer,
        on_message=lambda m: None,
        birth=lambda: StatusMessage(device_id=DEV, status="online", boot_id="boot", ts=1),
        on_connected=drainer.flush,
    )
    seen: list[int] = []
    inner = drainer.next_messages

    def spy() -> list[OutMessage]:
        out = inner()
        seen.append(len(session._inflight) + len(out))
        return out

    drainer.next_messages = spy  # type: ignore[method-assign]
    with session:
        wait_for(lambda: ob.depth == 0, what="backlog drained")
    assert max(seen) == 3

"""Alarms end to end with the real broker, ingest and database: readings go device → Mosquitto → ingest →
PostgreSQL, the evaluator reads what ingest committed, notifications come back on MQTT and to webhooks."""

from __future__ import annotations

import hmac
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from alerts_support import AlarmWatcher, Repeater, Sender, WebhookReceiver, pm25_rule, write_rules
from support import mqtt_env, mqtt_login, wait_until
from typer.testing import CliRunner

from cloud.alerts.service import AlertService
from cloud.alerts.settings import AlertSettings
from cloud.alerts.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from cloud.ingest.service import IngestService
from contract.messages import now_ms
from ioc.cli import app
from ioc.stack import Stack

SECRET = "test-secret-" + uuid.uuid4().hex[:6]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def device(stack: Stack, register_device: Callable[..., None]) -> Sender:
    site, dev = f"asite-{uuid.uuid4().hex[:6]}", f"adev-{uuid.uuid4().hex[:8]}"
    register_device(dev, site=site)
    return Sender(stack, site, dev)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver()
    yield r
    r.close()


@pytest.fixture
def watcher(stack: Stack, device: Sender) -> Iterator[AlarmWatcher]:
    w = AlarmWatcher(stack, device.site)
    yield w
    w.close()


def _settings(stack: Stack, rules: Path, **over: object) -> AlertSettings:
    base: dict[str, object] = {"dsn": stack.dsn, "mqtt_host": stack.mqtt_host, "mqtt_port": stack.mqtt_port,
                               "rules_dir": rules, "instance": f"test-alerts-{uuid.uuid4().hex[:6]}",
                               "interval_s": 0.3, "standby_poll_s": 0.3, "webhook_secret": SECRET,
                               "webhook_backoff_s": 0.1, "webhook_attempts": 2,
                               "lock_id": 0x7E57_0000 + os.getpid() % 10_000, **mqtt_login(stack, "alerts")}
    return AlertSettings(**{**base, **over})  # type: ignore[arg-type]


@pytest.fixture
def services() -> Iterator[list[AlertService]]:
    made: list[AlertService] = []
    yield made
    for s in made:
        s.stop()


def _alarms(db: psycopg.Connection, rule: str) -> list[tuple]:
    return db.execute("SELECT id, device_id, cleared_at, condition_since, raised_at, cleared_by, acked_by"
                      " FROM alarms WHERE rule = %s ORDER BY id", (rule,)).fetchall()


def test_pm25_over_threshold_raises_one_alarm_notifies_and_clears_past_hysteresis(
        stack: Stack, ingest: IngestService, db: psycopg.Connection, device: Sender, receiver: WebhookReceiver,
        watcher: AlarmWatcher, services: list[AlertService], tmp_path: Path) -> None:
    rule = f"pm25-{uuid.uuid4().hex[:6]}"
    write_rules(tmp_path / "rules", pm25_rule(rule, device.device_id, hold=3, value=50, hysteresis=10))
    dead_url = f"http://127.0.0.1:{_free_port()}/nobody-listens"
    svc = AlertService(_settings(stack, tmp_path / "rules", webhooks=[dead_url, receiver.url]))
    services.append(svc)
    svc.start()
    assert svc.wait_active(15)
    with Repeater(device, "pm25") as rep:
        rep.value = 20.0
        rep.value = 80.0  # over the threshold for longer than the rule's 3 s
        wait_until(lambda: _alarms(db, rule), timeout=40, what="the alarm")
        wait_until(lambda: "raised" in receiver.events(device.device_id), timeout=20, what="webhook POST")
        wait_until(lambda: "raised" in watcher.events(device.device_id), timeout=20, what="MQTT notification")
        listed = CliRunner().invoke(app, ["alerts", "list", "--json", "--limit", "1000", "--dsn", stack.dsn])
        assert listed.exit_code == 0, listed.output
        mine = [a for a in json.loads(listed.output) if a["rule"] == rule]
        assert [(a["device_id"], a["severity"], a["cleared_at"]) for a in mine] == [(device.device_id, "major", None)]
        # Hovering around the threshold, never past the hysteresis (clear at 40 or below): no second alarm.
        for v in (48.0, 62.0, 45.0, 70.0):
            rep.value = v
            wait_until(lambda: db.execute("SELECT count(*) FROM telemetry WHERE device_id = %s AND value = %s",
                                          (device.device_id, rep.value)).fetchone()[0] >= 3,
                       timeout=20, what=f"readings of {rep.value} stored")
        ((alarm_id, _, cleared, since, raised, _, _),) = _alarms(db, rule)
        assert cleared is None, "the alarm cleared although the value never went past the hysteresis"
        assert (raised - since).total_seconds() >= 3.0
        rep.value = 30.0
        wait_until(lambda: _alarms(db, rule)[0][2] is not None, timeout=30, what="the alarm to clear")
    assert len(_alarms(db, rule)) == 1
    assert _alarms(db, rule)[0][5] == f"evaluator:{svc.s.instance}"
    wait_until(lambda: "cleared" in receiver.events(device.device_id), timeout=20, what="webhook for the clear")
    wait_until(lambda: "cleared" in watcher.events(device.device_id), timeout=20, what="MQTT clear")
    assert receiver.events(device.device_id) == ["raised", "cleared"]
    assert watcher.events(device.device_id) == ["raised", "cleared"]
    # Every webhook POST is signed with the shared secret over timestamp + body.
    for r in receiver.requests:
        want = sign(SECRET.encode(), r.headers[TIMESTAMP_HEADER.lower()], r.body)
        assert hmac.compare_digest(r.headers[SIGNATURE_HEADER.lower()], want)
    topic = f"alr/v1/{device.site}/{device.device_id}/{rule}"
    assert {t for t, _, _ in watcher.messages} == {topic}
    # The retained message a newcomer gets is the clear.
    late = AlarmWatcher(stack, device.site)
    try:
        wait_until(lambda: late.messages, timeout=10, what="the retained message")
        ((t, payload, retained),) = late.messages
        assert (t, payload["state"], payload["event"], retained) == (topic, "cleared", "cleared", True)
    finally:
        late.close()
    # The dead webhook was reported, and did not hold anything back.
    wait_until(lambda: db.execute("SELECT given_up FROM alert_webhook_status WHERE url = %s",
                                  (dead_url,)).fetchone() == (2,), timeout=30, what="the dead webhook reported")
    # An operator acknowledges the (cleared) alarm through the CLI: recorded and notified.
    res = CliRunner().invoke(app, ["alerts", "ack", str(alarm_id), "--by", "alice", "--comment", "sensor cleaned",
                                   "--dsn", stack.dsn])
    assert res.exit_code == 0, res.output
    wait_until(lambda: "acknowledged" in watcher.events(device.device_id), timeout=20, what="ack notification")
    ack = next(p for _, p, _ in watcher.messages if p["event"] == "acknowledged")
    assert (ack["actor"], ack["comment"], ack["acked"], ack["state"]) == ("alice", "sensor cleaned", True, "cleared")
    actions = db.execute("SELECT action, actor FROM alarm_history WHERE alarm_id = %s ORDER BY id",
                         (alarm_id,)).fetchall()
    assert [a for a, _ in actions] == ["raised", "cleared", "acknowledged"]
    again = CliRunner().invoke(app, ["alerts", "ack", str(alarm_id), "--by", "bob", "--dsn", stack.dsn])
    assert again.exit_code == 1
    assert "already acknowledged" in again.output


def test_a_silent_device_raises_an_offline_alarm_and_clears_when_heard_again(
        stack: Stack, ingest: IngestService, db: psycopg.Connection, device: Sender, watcher: AlarmWatcher,
        services: list[AlertService], tmp_path: Path) -> None:
    rule = f"silent-{uuid.uuid4().hex[:6]}"
    write_rules(tmp_path / "rules", {"name": rule, "kind": "silent", "severity": "critical",
                                     "select": {"devices": [device.device_id]}, "heartbeats": 3, "heartbeat_s": 2})
    device.send(pm25=10.0)
    wait_until(lambda: db.execute("SELECT last_seen FROM device_status WHERE device_id = %s",
                                  (device.device_id,)).fetchone(), timeout=20, what="the device seen")
    svc = AlertService(_settings(stack, tmp_path / "rules"))
    services.append(svc)
    svc.start()
    wait_until(lambda: _alarms(db, rule), timeout=40, what="the offline alarm")
    wait_until(lambda: "raised" in watcher.events(device.device_id), timeout=20, what="MQTT notification")
    with Repeater(device, "pm25", period=0.5) as rep:
        rep.value = 12.0
        wait_until(lambda: _alarms(db, rule)[0][2] is not None, timeout=40, what="the clear once heard again")
    assert len(_alarms(db, rule)) == 1


def _spawn(stack: Stack, rules: Path, instance: str, log: Path, lock_id: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "IOC_DSN": stack.dsn, "IOC_MQTT_HOST": stack.mqtt_host,
           "IOC_MQTT_PORT": str(stack.mqtt_port), "IOC_ALERTS_INTERVAL_S": "0.3", "IOC_ALERTS_LOCK_ID": str(lock_id),
           "IOC_ALERTS_STANDBY_POLL_S": "0.3", "COLUMNS": "200", **mqtt_env(stack, "alerts")}
    with log.open("ab") as f:
        return subprocess.Popen([sys.executable, "-m", "ioc", "alerts", "run", "--rules", str(rules),
                                 "--instance", instance], env=env, stdout=f, stderr=subprocess.STDOUT)


def test_a_reading_committed_long_after_its_time_stamp_raises_on_the_next_cycle(
        stack: Stack, ingest: IngestService, db: psycopg.Connection, device: Sender, watcher: AlarmWatcher,
        services: list[AlertService], tmp_path: Path) -> None:
    """A gateway back from an uplink outage replays its outbox: its newest reading, 45 s old when it arrives,
    is over the threshold. The evaluator reads it on its next cycle (ingest records how far back each commit
    reaches), not at its next full read minutes later."""
    rule = f"pm25-late-{uuid.uuid4().hex[:6]}"
    write_rules(tmp_path / "rules", pm25_rule(rule, device.device_id, hold=0))
    svc = AlertService(_settings(stack, tmp_path / "rules"))
    services.append(svc)
    svc.start()
    assert svc.wait_active(15)
    first = svc.cycles
    wait_until(lambda: svc.cycles >= first + 3, timeout=15, what="the evaluator past its first (full) read")
    device.send(ts_ms=now_ms() - 45_000, pm25=95.0)
    wait_until(lambda: db.execute("SELECT 1 FROM telemetry WHERE device_id = %s", (device.device_id,)).fetchone(),
               timeout=20, what="the replayed reading stored")
    committed = svc.cycles
    wait_until(lambda: _alarms(db, rule), timeout=15, what="the alarm for the replayed reading")
    assert svc.cycles - committed <= 3, "raised, but only cycles after the reading was committed"
    wait_until(lambda: watcher.events(device.device_id) == ["raised"], timeout=20, what="the MQTT notification")


def test_evaluator_killed_mid_duration_and_restarted_raises_on_time(
        stack: Stack, ingest: IngestService, db: psycopg.Connection, device: Sender, watcher: AlarmWatcher,
        tmp_path: Path) -> None:
    rule = f"pm25-kill-{uuid.uuid4().hex[:6]}"
    hold = 8.0
    write_rules(tmp_path / "rules", pm25_rule(rule, device.device_id, hold=hold))
    lock_id = 0x7E58_0000 + os.getpid() % 10_000
    log = tmp_path / "alerts.log"
    procs = [_spawn(stack, tmp_path / "rules", "kill-a", log, lock_id)]
    try:
        with Repeater(device, "pm25") as rep:
            rep.value = 90.0
            (since,) = wait_until(lambda: db.execute(
                "SELECT since FROM alert_eval_state WHERE rule = %s AND device_id = %s",
                (rule, device.device_id)).fetchone(), timeout=40, what=f"the pending condition\n{log.read_text()}")
            assert not _alarms(db, rule), "raised before the duration"
            procs[0].kill()
            procs[0].wait(10)
            procs.append(_spawn(stack, tmp_path / "rules", "kill-b", log, lock_id))
            wait_until(lambda: _alarms(db, rule), timeout=40, what=f"the alarm after restart\n{log.read_text()}")
        ((_, _, _, condition_since, raised, _, _),) = _alarms(db, rule)
        # The restarted evaluator kept the clock: the condition counts from when it began, not from the restart.
        assert condition_since == since
        assert (raised - since).total_seconds() >= hold
        wait_until(lambda: watcher.events(device.device_id) == ["raised"], timeout=20, what="one MQTT notification")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


def test_two_evaluators_never_raise_twice_and_the_standby_takes_over(
        stack: Stack, ingest: IngestService, db: psycopg.Connection, device: Sender, watcher: AlarmWatcher,
        receiver: WebhookReceiver, services: list[AlertService], tmp_path: Path) -> None:
    rule = f"pm25-two-{uuid.uuid4().hex[:6]}"
    write_rules(tmp_path / "rules", pm25_rule(rule, device.device_id, hold=2))
    lock = 0x7E59_0000 + os.getpid() % 10_000
    a = AlertService(_settings(stack, tmp_path / "rules", lock_id=lock, webhooks=[receiver.url]))
    b = AlertService(_settings(stack, tmp_path / "rules", lock_id=lock, webhooks=[receiver.url]))
    services += [a, b]
    a.start()
    b.start()
    wait_until(lambda: a.active.is_set() or b.active.is_set(), timeout=15, what="one evaluator active")
    assert a.active.is_set() != b.active.is_set(), "both evaluators active at once"
    first, second = (a, b) if a.active.is_set() else (b, a)
    for svc, word in ((first, "active"), (second, "standby")):  # what the compose health check runs
        ok = CliRunner().invoke(app, ["alerts", "health", "--instance", svc.s.instance, "--dsn", stack.dsn])
        assert ok.exit_code == 0, ok.output
        assert word in ok.output
    gone = CliRunner().invoke(app, ["alerts", "health", "--instance", "no-such-evaluator", "--dsn", stack.dsn])
    assert gone.exit_code == 1
    with Repeater(device, "pm25") as rep:
        rep.value = 75.0
        wait_until(lambda: _alarms(db, rule), timeout=40, what="the alarm")
        first.stop()
        assert second.wait_active(15), "the standby did not take over"
        rep.value = 20.0
        wait_until(lambda: _alarms(db, rule)[0][2] is not None, timeout=30, what="the clear by the new evaluator")
    ((alarm_id, _, _, _, _, cleared_by, _),) = _alarms(db, rule)
    assert cleared_by == f"evaluator:{second.s.instance}"
    actions = [r[0] for r in db.execute("SELECT action FROM alarm_history WHERE alarm_id = %s ORDER BY id",
                                        (alarm_id,)).fetchall()]
    assert actions == ["raised", "cleared"]
    wait_until(lambda: watcher.events(device.device_id) == ["raised", "cleared"], timeout=20, what="notifications")
    wait_until(lambda: receiver.events(device.device_id) == ["raised", "cleared"], timeout=20, what="webhooks")

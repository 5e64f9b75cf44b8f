"""Fault tests: kill ingest mid-stream, stop PostgreSQL mid-stream; nothing may be lost."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest
from db_compare import stored_points, total_rows
from support import wait_until

from cloud.db.devices import register_devices
from cloud.ingest.service import IngestService
from contract.messages import now_ms
from ioc.stack import Stack
from simulators.fleet import Fleet, FleetSpec
from simulators.publisher import FleetPublisher
from simulators.runner import SimRunner
from tests.conftest import ingest_settings

pytestmark = pytest.mark.slow


def _stream(stack: Stack, rounds: int, pace_s: float) -> tuple[Fleet, FleetPublisher, threading.Thread]:
    """A fleet sending `rounds` messages per device, paced so faults land mid-stream."""
    fleet = Fleet(FleetSpec(prefix=f"f{uuid.uuid4().hex[:6]}", gateways=10, cameras=2, interval_s=10,
                            samples_per_message=2, seed=11))
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    pub = FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")).__enter__()
    # MQTT drops what is published before a subscription exists: start streaming only once ingest
    # has processed the fleet's births, which come on the same SUBSCRIBE as telemetry.
    with psycopg.connect(stack.dsn) as conn:
        wait_until(lambda: conn.execute("SELECT count(*) FROM device_status WHERE online AND device_id = ANY(%s)",
                                        (_ids(fleet),)).fetchone() == (len(fleet.devices),),
                   what="ingest subscribed (fleet births stored)")
    runner = SimRunner(fleet, pub)
    start = now_ms() - 3_600_000

    def send() -> None:
        for r in range(rounds):
            for i in range(len(fleet.devices)):
                runner.emit(i, start + r * 10_000)
            time.sleep(pace_s)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return fleet, pub, t


def _ids(fleet: Fleet) -> list[str]:
    return [d.device_id for d in fleet.devices]


def test_killing_ingest_mid_stream_loses_nothing(stack: Stack, db: psycopg.Connection,
                                                  spawn_ingest: Callable[[], object]) -> None:
    proc = spawn_ingest()
    proc.start()  # type: ignore[attr-defined]
    fleet, pub, sender = _stream(stack, rounds=60, pace_s=0.05)
    try:
        wait_until(lambda: total_rows(db, _ids(fleet)) > 200, what="ingest writing")
        proc.kill()  # type: ignore[attr-defined]  # SIGKILL: no chance to flush or ack
        killed_at = total_rows(db, _ids(fleet))
        time.sleep(1.0)  # the stream goes on while ingest is dead; the broker queues it in our session
        proc.start()  # type: ignore[attr-defined]
        sender.join(60)
        assert pub.drain(60)
    finally:
        pub.close()
    expected = pub.sent.points()
    assert killed_at < len(expected), "the kill did not land mid-stream"
    try:
        wait_until(lambda: total_rows(db, _ids(fleet)) >= len(expected), timeout=60, what=f"{len(expected)} points")
    finally:
        print(proc.log())  # type: ignore[attr-defined]
    assert stored_points(db, _ids(fleet)) == expected


def test_two_ingest_processes_in_a_share_group_split_the_load_and_store_everything_once(
    stack: Stack, db: psycopg.Connection, spawn_ingest: Callable[..., object]
) -> None:
    group = f"scale{uuid.uuid4().hex[:6]}"
    procs = [spawn_ingest(group), spawn_ingest(group)]
    for p in procs:
        p.start()  # type: ignore[attr-defined]
    fleet, pub, sender = _stream(stack, rounds=40, pace_s=0.02)
    try:
        sender.join(60)
        assert pub.drain(60)
    finally:
        pub.close()
    expected = pub.sent.points()
    wait_until(lambda: total_rows(db, _ids(fleet)) >= len(expected), timeout=60, what=f"{len(expected)} points")
    assert stored_points(db, _ids(fleet)) == expected
    # Both processes did part of the work (their stats rows say how many messages each committed).
    rows = db.execute("SELECT instance, messages FROM ingest_instances WHERE instance = ANY(%s)",
                      ([p.instance for p in procs],)).fetchall()  # type: ignore[attr-defined]
    wait_until(lambda: len(db.execute("SELECT 1 FROM ingest_instances WHERE instance = ANY(%s) AND messages > 0",
                                      ([p.instance for p in procs],)).fetchall()) == 2,  # type: ignore[attr-defined]
               what=f"both share-group members committed messages: {rows}")


def test_stopping_postgres_mid_stream_loses_nothing(stack: Stack, db: psycopg.Connection,
                                                    ingest: IngestService) -> None:
    fleet, pub, sender = _stream(stack, rounds=60, pace_s=0.05)
    try:
        with psycopg.connect(stack.dsn, autocommit=True) as probe:
            wait_until(lambda: total_rows(probe, _ids(fleet)) > 200, what="ingest writing")
        stack.stop_postgres()
        try:
            wait_until(lambda: not ingest.stats.db_ok, what="ingest noticing the database is down")
            time.sleep(3.0)  # keep it down for a few seconds while devices keep sending
        finally:
            stack.start_postgres()
        sender.join(60)
        assert pub.drain(60)
    finally:
        pub.close()
    expected = pub.sent.points()
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        wait_until(lambda: total_rows(conn, _ids(fleet)) >= len(expected), timeout=60,
                   what=f"{len(expected)} points after the database came back")
        assert stored_points(conn, _ids(fleet)) == expected
    assert ingest.stats.db_ok
    wait_until(lambda: ingest.in_flight() == 0, what="the 'waiting' figure back to zero once all is acknowledged")


def test_a_device_first_heard_while_the_database_is_down_is_stored_once_it_is_back(
        stack: Stack, ingest: IngestService) -> None:
    """Its first message makes ingest look the device up, in a database that is not there: ingest must
    wait and retry, not give up on the batch (or on everything after it)."""
    fleet = Fleet(FleetSpec(prefix=f"late{uuid.uuid4().hex[:6]}", gateways=3, cameras=0, interval_s=10,
                            samples_per_message=2, seed=5))
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())  # registered now: not in ingest's device cache yet
    start = now_ms() - 600_000
    stack.stop_postgres()
    try:
        with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
            runner = SimRunner(fleet, pub)
            for r in range(5):
                for i in range(len(fleet.devices)):
                    runner.emit(i, start + r * 10_000)
            assert pub.drain(30), "broker did not acknowledge everything"
            expected = pub.sent.points()
        wait_until(lambda: not ingest.stats.db_ok, what="ingest meeting the outage")
        time.sleep(1.0)  # a retry or two against the missing database
    finally:
        stack.start_postgres()
    with psycopg.connect(stack.dsn, autocommit=True) as conn:
        wait_until(lambda: total_rows(conn, _ids(fleet)) >= len(expected), timeout=60,
                   what=f"{len(expected)} points after the database came back")
        assert stored_points(conn, _ids(fleet)) == expected
    assert not ingest.crashed.is_set()


def test_ingest_holds_no_more_than_its_in_flight_bound_while_the_database_is_away(stack: Stack) -> None:
    """The broker is told a Receive Maximum far above ingest's own bound (Mosquitto 2.0.11 may exceed it
    anyway): ingest itself stops reading, so the messages wait at the broker, not in ingest's memory."""
    bound, sent_n = 300, 3000
    fleet = Fleet(FleetSpec(prefix=f"bnd{uuid.uuid4().hex[:6]}", gateways=5, cameras=0, interval_s=10,
                            samples_per_message=20, seed=3))  # ~2 KB a message: one 1 MiB read is ~500
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    svc = IngestService(ingest_settings(stack, receive_maximum=65535, max_in_flight=bound))
    svc.start()
    assert svc.wait_connected(10)
    most, paused = 0, False
    start = now_ms() - 48 * 3_600_000  # 600 rounds of 20 samples 10 s apart: 33 hours, all in the past
    try:
        with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
            wait_until(lambda: svc.stats.messages >= len(fleet.devices), what="births stored: subscribed")
            stack.stop_postgres()
            try:
                runner = SimRunner(fleet, pub)
                for r in range(sent_n // len(fleet.devices)):
                    for i in range(len(fleet.devices)):
                        runner.emit(i, start + r * 200_000)
                deadline = time.monotonic() + 8
                while time.monotonic() < deadline:  # the broker has them all; what does ingest hold?
                    most = max(most, svc.in_flight())
                    paused = paused or svc.reading_paused
                    time.sleep(0.02)
                assert pub.drain(30), "broker did not acknowledge everything"
                expected = pub.sent.points()
            finally:
                stack.start_postgres()
        with psycopg.connect(stack.dsn, autocommit=True) as conn:
            wait_until(lambda: total_rows(conn, _ids(fleet)) >= len(expected), timeout=90,
                       what=f"{len(expected)} points after the database came back")
            assert stored_points(conn, _ids(fleet)) == expected
    finally:
        svc.stop()
    assert paused, "ingest never stopped reading"
    assert most <= bound + 700, f"ingest held {most} unacknowledged messages with a bound of {bound}"

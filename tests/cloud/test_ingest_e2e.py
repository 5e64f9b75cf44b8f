"""The telemetry path end to end: simulator → real Mosquitto → ingest → real PostgreSQL."""

from __future__ import annotations

import json
import uuid

import paho.mqtt.publish as single
import psycopg
from db_compare import stored_counts, stored_points, total_rows
from support import paho_auth, wait_until

from cloud.db.devices import register_devices
from cloud.ingest.service import IngestService
from contract import topics
from contract.messages import ms_to_datetime, now_ms
from ioc.stack import Stack
from simulators.fleet import Fleet, FleetSpec
from simulators.publisher import FleetPublisher
from simulators.runner import SimRunner


def _fleet(stack: Stack, **spec: object) -> Fleet:
    fleet = Fleet(FleetSpec(prefix=f"e2e{uuid.uuid4().hex[:6]}", **spec))  # type: ignore[arg-type]
    with psycopg.connect(stack.dsn) as conn:
        register_devices(conn, fleet.registrations())
    return fleet


def _ids(fleet: Fleet) -> list[str]:
    return [d.device_id for d in fleet.devices]


def test_database_holds_exactly_what_the_fleet_sent_and_duplicates_change_nothing(
    stack: Stack, ingest: IngestService, db: psycopg.Connection
) -> None:
    fleet = _fleet(stack, gateways=12, cameras=3, interval_s=10, samples_per_message=3, fault_rate=0.02, seed=1)
    start = now_ms() - 3_600_000
    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
        runner = SimRunner(fleet, pub, dup_ratio=1.0)  # every message is sent twice
        runner.burst(start, rounds=20)
        assert pub.drain(60), "broker did not acknowledge everything"
    expected, expected_counts = pub.sent.points(), pub.sent.counts()
    assert runner.duplicates_sent == pub.sent.published // 2
    assert len(expected) > 12 * 20 * 3 * 6  # the set is not trivially small
    wait_until(lambda: total_rows(db, _ids(fleet)) >= len(expected), what="all points stored")
    wait_until(lambda: len(stored_counts(db, _ids(fleet))) >= len(expected_counts), what="all counts stored")
    ingest.stop(); ingest.start()  # noqa: E702 - restart: nothing more may appear
    assert stored_points(db, _ids(fleet)) == expected
    assert stored_counts(db, _ids(fleet)) == expected_counts
    # Sensor faults (out-of-range spikes) were rejected into dead letters, not stored.
    faulty = len({m.payload for m in pub.sent.acked if m.rejected_points})  # each sent twice, recorded once
    dead = db.execute("SELECT count(*) FROM dead_letters WHERE device_id = ANY(%s)", (_ids(fleet),)).fetchone()
    assert dead is not None
    assert dead[0] == faulty


def test_each_kind_of_bad_payload_is_dead_lettered_with_a_reason_and_neighbours_are_kept(
    stack: Stack, ingest: IngestService, db: psycopg.Connection
) -> None:
    fleet = _fleet(stack, gateways=6, cameras=0, interval_s=5, seed=2)
    start = now_ms() - 600_000
    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
        runner = SimRunner(fleet, pub, bad_ratio=0.3, seed=3)
        runner.burst(start, rounds=40)
        assert pub.drain(60)
    assert all(n > 0 for n in runner.bad_sent.values()), runner.bad_sent
    expected = pub.sent.points()
    wait_until(lambda: total_rows(db, _ids(fleet)) >= len(expected), what="valid points stored")
    bad_expected = pub.sent.dead_letters_expected()
    topics_of_fleet = [m.topic for m in pub.sent.acked if m.bad]

    def dead_rows() -> list[tuple[str, str]]:
        return db.execute("SELECT topic, reason FROM dead_letters WHERE topic = ANY(%s)",
                          (topics_of_fleet,)).fetchall()

    wait_until(lambda: len(dead_rows()) >= bad_expected, what="dead letters")
    assert stored_points(db, _ids(fleet)) == expected
    reasons = " | ".join(r for _, r in dead_rows())
    for phrase in ("malformed JSON", "unsupported schema version 99", "unknown device 'ghost-",
                   "outside [", "oversize payload"):
        assert phrase in reasons, f"no dead letter says {phrase!r}: {reasons[:500]}"


def test_birth_and_last_will_update_device_status(stack: Stack, ingest: IngestService, db: psycopg.Connection) -> None:
    fleet = _fleet(stack, gateways=2, cameras=0, seed=4)
    ids = _ids(fleet)
    dev, other = fleet.devices

    def online() -> dict[str, bool]:
        rows = db.execute("SELECT device_id, online FROM device_status WHERE device_id = ANY(%s)", (ids,)).fetchall()
        return dict(rows)

    with FleetPublisher(fleet, stack.mqtt_host, stack.mqtt_port, login=stack.credentials("simulator")) as pub:
        wait_until(lambda: online() == dict.fromkeys(ids, True), what="both devices online (birth)")
        pub.cut_link(dev.device_id)  # no DISCONNECT: the broker publishes the last will
        wait_until(lambda: online().get(dev.device_id) is False, what="device offline after its last will")
        assert online()[other.device_id] is True

        # A will from an older connection arriving after a newer birth must not flip the device offline.
        newer_birth = fleet.status(dev, online=True)
        stale_will = json.loads(fleet.status(dev, online=False))
        stale_will["ts"] -= 60_000
        for payload in (newer_birth, json.dumps(stale_will).encode()):
            single.single(topics.state(dev.device_id), payload, qos=1, hostname=stack.mqtt_host, port=stack.mqtt_port,
                          auth=paho_auth(stack))
        marker = fleet.status(other, online=True)
        single.single(topics.state(other.device_id), marker, qos=1, hostname=stack.mqtt_host, port=stack.mqtt_port,
                      auth=paho_auth(stack))
        wait_until(lambda: db.execute("SELECT status_ts FROM device_status WHERE device_id = %s",
                                      (other.device_id,)).fetchone() == (ms_to_datetime(json.loads(marker)["ts"]),),
                   what="marker status processed")
        assert online()[dev.device_id] is True

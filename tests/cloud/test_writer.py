"""BatchWriter against the real database: idempotency and per-message failure isolation."""

from __future__ import annotations

import json
import uuid

import psycopg

from cloud.ingest.decode import Decoded, copy_text, copy_timestamp
from cloud.ingest.writer import BatchWriter, is_data_error
from contract.messages import StatusMessage, now_ms
from ioc.stack import Stack


def _tlm(dev: str, ts: int, value: float) -> Decoded:
    return Decoded(topic=f"tlm/v1/s/{dev}/env", payload=b"{}", device_id=dev,
                   telemetry=[f"{copy_timestamp(ts)}\t{dev}\tpm25\t{value!r}\n",
                              f"{copy_timestamp(ts)}\t{dev}\tpm10\t{value * 2!r}\n"], minutes={ts // 60_000})


def test_a_message_the_database_rejects_is_dead_lettered_and_the_rest_of_the_batch_is_kept(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    dev = f"w-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    ghost = f"ghost-{uuid.uuid4().hex[:8]}"  # not in devices: its status row violates the foreign key
    t = now_ms()
    bad = Decoded(topic=f"state/v1/{ghost}", payload=b'{"status":"online"}', device_id=ghost,
                  status=StatusMessage(device_id=ghost, status="online", boot_id="b", ts=t))
    batch = [_tlm(dev, t, 1.0), bad, _tlm(dev, t + 1000, 2.0)]
    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=True)
    try:
        assert writer.write(batch) == 1
        assert writer.write(batch) == 1  # the whole batch again: duplicates ignored, the dead letter stored once
    finally:
        writer.close()
    rows = db.execute("SELECT metric, value FROM telemetry WHERE device_id = %s ORDER BY ts, metric", (dev,)).fetchall()
    assert rows == [("pm10", 2.0), ("pm25", 1.0), ("pm10", 4.0), ("pm25", 2.0)]
    dead = db.execute("SELECT reason FROM dead_letters WHERE device_id = %s", (ghost,)).fetchall()
    assert len(dead) == 1, "the redelivered bad message is recorded once"
    assert "database rejected" in dead[0][0]
    assert "foreign key" in dead[0][0]


def test_only_data_errors_blame_the_message_everything_else_is_retried() -> None:
    assert is_data_error(psycopg.errors.ForeignKeyViolation("fk"))
    assert is_data_error(psycopg.errors.InvalidTextRepresentation("bad"))
    assert not is_data_error(psycopg.OperationalError("connection refused"))
    assert not is_data_error(psycopg.errors.DeadlockDetected("deadlock"))
    assert not is_data_error(psycopg.errors.AdminShutdown("shutdown"))
    assert not is_data_error(psycopg.errors.UndefinedColumn("schema out of date: retry, never dead-letter"))


def test_counts_of_a_box_restarted_mid_interval_add_up_and_redelivery_does_not(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    cam = f"c-{uuid.uuid4().hex[:8]}"
    register_device(cam, profile="traffic-camera")  # type: ignore[operator]
    t = now_ms() - 60_000

    def counts(boot: str, n: int) -> Decoded:
        return Decoded(topic=f"tlm/v1/s/{cam}/counts", payload=b"{}", device_id=cam,
                       counts=[f"{copy_timestamp(t)}\t{cam}\tnorth\tcar\tin\t60\t{n}\t{boot}\n"])

    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=False)
    try:
        writer.write([counts("boot-a", 5)])
        writer.write([counts("boot-b", 3)])  # after a restart, the rest of the same interval
        writer.write([counts("boot-a", 5)])  # redelivered
    finally:
        writer.close()
    total = db.execute("SELECT sum(count) FROM traffic_counts WHERE device_id = %s", (cam,)).fetchone()
    assert total == (8,)


def test_an_older_config_report_committed_late_never_replaces_a_newer_one(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    """Two writers commit in parallel, so the report a device sent first can be committed last."""
    dev = f"w-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    t = now_ms()

    def report(version: int, ts: int) -> Decoded:
        return Decoded(topic=f"cfg/v1/{dev}/reported", payload=b"{}", device_id=dev,
                       config=(version, f'{{"interval_s": {version}}}', ts))

    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=True)
    try:
        writer.write([report(6, t)])
        writer.write([report(5, t - 5_000)])  # sent earlier, committed later
        assert db.execute("SELECT version FROM device_config_reported WHERE device_id = %s", (dev,)).fetchone() == (6,)
        writer.write([report(7, t + 1_000)])
    finally:
        writer.close()
    assert db.execute("SELECT version, config FROM device_config_reported WHERE device_id = %s",
                      (dev,)).fetchone() == (7, {"interval_s": 7})


def test_bad_messages_are_found_by_bisection_not_one_by_one(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    """Two messages the database refuses in a batch of 512: found in a few dozen partial writes (one by one
    would be 512), each dead-lettered with the database's reason, every other message stored."""
    dev = f"w-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    t = now_ms() - 600_000
    batch = [_tlm(dev, t + i * 1000, float(i)) for i in range(512)]
    for i in (37, 400):  # a device row for an unregistered device violates the foreign key
        ghost = f"ghost-{uuid.uuid4().hex[:8]}"
        batch[i] = Decoded(topic=f"state/v1/{ghost}", payload=ghost.encode(), device_id=ghost,
                           status=StatusMessage(device_id=ghost, status="online", boot_id="b", ts=t))
    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=True)
    try:
        assert writer.write(batch) == 2
    finally:
        writer.close()
    assert writer.partial_writes <= 2 * 2 * 9  # two bad ones, each costs at most two writes per level of 9
    stored = db.execute("SELECT count(*) FROM telemetry WHERE device_id = %s", (dev,)).fetchone()
    assert stored == (2 * 510,)
    dead = db.execute("SELECT payload, reason FROM dead_letters WHERE payload = ANY(%s)",
                      ([batch[37].payload, batch[400].payload],)).fetchall()
    assert len(dead) == 2
    assert all("foreign key" in r for _, r in dead)


def test_a_second_different_value_for_a_stored_point_is_recorded_not_dropped(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    dev = f"w-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    t = now_ms() - 60_000
    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=False)
    try:
        assert writer.write([_tlm(dev, t, 1.0)]) == 0
        assert writer.write([_tlm(dev, t, 1.0)]) == 0  # a redelivery: same values, nothing to say
        assert writer.write([_tlm(dev, t, 5.0), _tlm(dev, t + 1000, 3.0)]) == 1  # pm25 and pm10 differ at t
    finally:
        writer.close()
    rows = db.execute("SELECT metric, value FROM telemetry WHERE device_id = %s ORDER BY ts, metric", (dev,)).fetchall()
    assert rows == [("pm10", 2.0), ("pm25", 1.0), ("pm10", 6.0), ("pm25", 3.0)]  # the first value is kept
    dead = db.execute("SELECT reason, payload FROM dead_letters WHERE device_id = %s", (dev,)).fetchall()
    assert len(dead) == 1
    assert "conflict: 2 point(s)" in dead[0][0]
    shown = json.loads(bytes(dead[0][1]))
    assert {(p["key"], p["stored"], p["refused"]) for p in shown} == {("pm25", 1.0, 5.0), ("pm10", 2.0, 10.0)}


def _evt(dev: str, ts: int, details: dict[str, object], severity: str = "warning") -> Decoded:
    return Decoded(topic=f"evt/v1/s/{dev}/door", payload=json.dumps(details).encode(), device_id=dev,
                   events=[(ts, dev, "door_open", severity, json.dumps(details))])


def test_a_second_different_event_for_the_same_key_is_recorded_not_dropped(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    dev = f"w-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    t = now_ms() - 60_000
    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=False)
    try:
        assert writer.write([_evt(dev, t, {"cabinet": 1, "by": "tech"})]) == 0
        assert writer.write([_evt(dev, t, {"by": "tech", "cabinet": 1})]) == 0  # a redelivery: same details
        assert writer.write([_evt(dev, t, {"cabinet": 2})]) == 1  # stored already with other details
        assert writer.write([_evt(dev, t + 1, {"a": 1}), _evt(dev, t + 1, {"a": 1}, "critical")]) == 1  # in one batch
    finally:
        writer.close()
    rows = db.execute("SELECT severity, details FROM events WHERE device_id = %s ORDER BY ts", (dev,)).fetchall()
    assert rows == [("warning", {"cabinet": 1, "by": "tech"}), ("warning", {"a": 1})]  # the first is kept
    reasons = [r for (r,) in db.execute("SELECT reason FROM dead_letters WHERE device_id = %s ORDER BY id", (dev,))]
    assert len(reasons) == 2
    assert all(r.startswith("conflict: 1 point(s)") and "event door_open" in r for r in reasons)
    assert '"cabinet": 2' in reasons[0]


def test_strings_with_copy_special_characters_are_stored_exactly(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    """Backslash, tab, CR and LF in a counting line name or boot id, escaped for COPY by the decoder's rule."""
    cam = f"c-{uuid.uuid4().hex[:8]}"
    register_device(cam, profile="traffic-camera")  # type: ignore[operator]
    t = now_ms() - 60_000
    names = ["back\\slash", "tab\there", "cr\rlf\n", "\\."]
    boot = "boot\\r"  # a backslash and an r: two characters, not a carriage return
    lines = [f"{copy_timestamp(t)}\t{cam}\t{copy_text(n)}\tcar\tin\t60\t{i + 1}\t{copy_text(boot + n)}\n"
             for i, n in enumerate(names)]
    writer = BatchWriter(stack.dsn, "test-writer", mark_rollups=False)
    try:
        assert writer.write([Decoded(topic=f"tlm/v1/s/{cam}/counts", payload=b"{}", device_id=cam, counts=lines)]) == 0
    finally:
        writer.close()
    rows = db.execute("SELECT line, boot_id, count FROM traffic_counts WHERE device_id = %s ORDER BY count",
                      (cam,)).fetchall()
    assert rows == [(n, boot + n, i + 1) for i, n in enumerate(names)]

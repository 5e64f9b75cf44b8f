"""BatchWriter against the real database: idempotency and per-message failure isolation."""

from __future__ import annotations

import uuid

import psycopg

from cloud.ingest.decode import Decoded, copy_timestamp
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

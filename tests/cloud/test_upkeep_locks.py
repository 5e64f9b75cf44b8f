"""Upkeep never meets a writer in a deadlock: its partition DDL gives up after a short lock wait, less
than PostgreSQL's deadlock_timeout, and does the work on the next pass."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest

from cloud.db.maintenance import run_maintenance
from ioc.stack import Stack


@pytest.mark.backend_only("postgres")  # partition upkeep is the plain-PostgreSQL path
def test_upkeep_steps_aside_while_a_writer_holds_the_partition_it_needs(
    stack: Stack, db: psycopg.Connection, register_device: object
) -> None:
    dev = f"lk-{uuid.uuid4().hex[:8]}"
    register_device(dev)  # type: ignore[operator]
    run_maintenance(db)  # partitions for today and the week ahead exist
    # Late backlog for a day without a partition lands in the default partition: upkeep must attach a
    # partition for that day, which needs the default partition's lock. A writer holds it, mid-transaction.
    db.execute("INSERT INTO telemetry VALUES (now() - interval '40 days', %s, 'pm25', 1)", (dev,))
    with psycopg.connect(stack.dsn) as writer:
        writer.execute("INSERT INTO telemetry VALUES (now() - interval '40 days' + interval '2 s', %s, 'pm25', 3)",
                       (dev,))
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(_maintain(stack.dsn)), daemon=True)
        started = time.monotonic()
        t.start()
        t.join(30)
        waited = time.monotonic() - started
        assert done, "upkeep is still waiting behind the writer"
        res = done[0]
        assert res.skipped is not None, res  # type: ignore[attr-defined]
        assert "lock" in res.skipped  # type: ignore[attr-defined]
        writer.execute("INSERT INTO telemetry VALUES (now() - interval '40 days' + interval '1 s', %s, 'pm25', 2)",
                       (dev,))  # the writer carries on, and commits
        writer.commit()
    assert waited < 10
    res = run_maintenance(db)  # next pass, the writer gone: the partition is made, the rows moved into it
    assert res.skipped is None
    parts = db.execute("SELECT DISTINCT tableoid::regclass::text FROM telemetry WHERE device_id = %s",
                       (dev,)).fetchall()
    assert len(parts) == 1
    assert parts[0][0].startswith("telemetry_p")


def _maintain(dsn: str) -> object:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return run_maintenance(conn)

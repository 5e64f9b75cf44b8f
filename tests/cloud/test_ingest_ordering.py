"""Parallel writers commit batches in whatever order the database finishes them, but acknowledgements
leave in arrival order, and a writer that fails unexpectedly does not hold the others up: it marks the
service crashed so the process is restarted."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from cloud.ingest.consumer import Inbound
from cloud.ingest.decode import Decoded
from cloud.ingest.service import IngestService
from cloud.ingest.settings import IngestSettings


class SlowFirstWriter:
    """Stands in for BatchWriter: the batch marked 'slow' takes a while, the others commit at once."""

    def __init__(self, broken: str | None = None) -> None:
        self.broken = broken

    def write(self, batch: Sequence[Decoded]) -> int:
        if batch[0].topic == self.broken:
            raise RuntimeError("a bug, not a database error")
        if batch[0].topic == "slow":
            time.sleep(0.5)
        return 0

    def close(self) -> None:
        pass


def _run(batches: list[str], writers: list[SlowFirstWriter]) -> tuple[list[str], bool]:
    """The batches through the writer threads: what was acknowledged, in order, and whether the service
    declared itself crashed."""
    svc = IngestService(IngestSettings(dsn="postgresql://unused", writers=len(writers)))
    acked: list[str] = []
    svc._consumer.ack = lambda items: acked.append(items[0].topic) or len(items)  # type: ignore[method-assign]
    threads = [threading.Thread(target=svc._write_loop, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for seq, topic in enumerate(batches):
        svc._decoded.put((seq, [Inbound(1, 1, topic, b"", 0.0, 0)], [Decoded(topic, b"")], False))
    for _ in writers:
        svc._decoded.put(None)
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a writer is stuck waiting for its turn"
    return acked, svc.crashed.is_set()


def test_acks_leave_in_arrival_order_when_a_later_batch_commits_first() -> None:
    assert _run(["slow", "fast-1", "fast-2", "fast-3"], [SlowFirstWriter(), SlowFirstWriter()]) == \
        (["slow", "fast-1", "fast-2", "fast-3"], False)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the bug, on purpose
def test_a_writer_that_fails_unexpectedly_passes_its_turn_on_and_the_service_says_it_crashed() -> None:
    acked, crashed = _run(["slow", "bug", "after"], [SlowFirstWriter(broken="bug"), SlowFirstWriter(broken="bug")])
    assert acked == ["slow", "after"]  # the failed batch stays unacknowledged: the broker sends it again
    assert crashed  # `ioc ingest` exits non-zero on this, so a supervisor starts a fresh process

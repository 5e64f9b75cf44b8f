"""Ingest: MQTT consumer → batcher → writer, acknowledging only after the commit.

Threads: paho's network thread appends to `pending`; the decoder thread takes batches (by size or
age) and decodes them; writer threads (one database connection each) commit batches in parallel, and
each acks its batch once every earlier batch is acked, so PUBACKs leave in arrival order; a stats
thread reports; a maintenance thread keeps partitions and rollups current (plain-PostgreSQL path).
Decoding overlaps the database's work, and the database works on two batches at once: one
connection's COPY is the bound otherwise (see docs/operations.md). Any number of these processes can
share one broker group.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import psycopg

from cloud.db.maintenance import run_maintenance
from cloud.db.migrate import current_backend
from cloud.ingest.consumer import Inbound, MqttConsumer
from cloud.ingest.decode import Decoded, Decoder
from cloud.ingest.liveness import mark_silent
from cloud.ingest.registry import DeviceCache
from cloud.ingest.settings import IngestSettings
from cloud.ingest.stats import IngestStats, Snapshot
from cloud.ingest.watermark import WatermarkTracker, envelope_key
from cloud.ingest.writer import BatchWriter
from contract.messages import now_ms

log = logging.getLogger(__name__)

CommitHook = Callable[[Sequence[Decoded], int], None]
WATERMARK_WAIT_WARN_S = 10.0  # devices resend unacknowledged rows after 15 s by default (edge outbox.resend_after_s)
T = TypeVar("T")

_REPORT = """
INSERT INTO ingest_instances AS i (instance, host, started_at, updated_at, messages, points, dead_letters,
    msg_rate, point_rate, latency_p50_ms, latency_p99_ms, lag_ms, in_flight, db_ok, last_error)
VALUES (%s, %s, %s, now(), %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (instance) DO UPDATE SET host = EXCLUDED.host, started_at = EXCLUDED.started_at,
    updated_at = now(), messages = EXCLUDED.messages, points = EXCLUDED.points,
    dead_letters = EXCLUDED.dead_letters, msg_rate = EXCLUDED.msg_rate, point_rate = EXCLUDED.point_rate,
    latency_p50_ms = EXCLUDED.latency_p50_ms, latency_p99_ms = EXCLUDED.latency_p99_ms,
    lag_ms = EXCLUDED.lag_ms, in_flight = EXCLUDED.in_flight, db_ok = EXCLUDED.db_ok,
    last_error = EXCLUDED.last_error"""


class IngestService:
    def __init__(self, settings: IngestSettings, on_commit: CommitHook | None = None) -> None:
        self.settings = settings
        self.stats = IngestStats()
        self._on_commit = on_commit
        self._pending: list[Inbound] = []
        self._in_pipeline = 0  # messages taken from _pending, not yet acknowledged (or given up)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._done = threading.Event()
        self.crashed = threading.Event()  # a pipeline thread died of a bug: the process should exit and restart
        # Decoded batches waiting for a writer: (sequence number, messages, rows, final flush?). Bounded,
        # so a slow database holds messages back at the broker (unacknowledged), not in our memory.
        self._decoded: queue.Queue[tuple[int, list[Inbound], list[Decoded], bool] | None] = queue.Queue(maxsize=1)
        self._ack_turn = _InOrder()
        self._writers_left = settings.writers
        self._devices = DeviceCache(settings.dsn)
        self._decoder = Decoder(
            self._devices.get, settings.max_payload_bytes,
            max_future_ms=int(settings.max_future_s * 1000), max_age_ms=int(settings.max_age_days * 86_400_000),
        )
        self._consumer = MqttConsumer(settings, self._receive, self.in_flight, on_crash=self._crash)
        self._watermarks = (WatermarkTracker(settings.instance, settings.watermark_interval_s,
                                             settings.watermark_max_rate) if settings.watermark else None)
        self._threads: list[threading.Thread] = []
        self._writers: list[BatchWriter] = []
        self._started_at = datetime.now(UTC)
        self.last_snapshot: Snapshot | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with psycopg.connect(self.settings.dsn) as conn:
            backend = current_backend(conn)
        if backend is None:
            raise RuntimeError("database has no IOC schema: run `ioc db migrate` first")
        seen_written: dict[str, float] = {}
        self._writers = [BatchWriter(self.settings.dsn, self.settings.instance, mark_rollups=True,
                                     seen_written=seen_written) for _ in range(self.settings.writers)]
        self._devices.refresh()
        loops: list[tuple[str, Callable[[], None]]] = [("ingest-decoder", self._decode_loop),
                                                       ("ingest-stats", self._stats_loop),
                                                       ("ingest-maintenance", self._maintenance_loop)]
        if self._watermarks is not None:
            loops.append(("ingest-watermarks", self._watermark_loop))
        loops += [(f"ingest-writer-{i}", functools.partial(self._write_loop, w)) for i, w in enumerate(self._writers)]
        for name, target in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._consumer.start()
        log.info("ingest %s started (backend %s, batch %d msgs / %.0f ms)", self.settings.instance, backend,
                 self.settings.batch_max_messages, self.settings.batch_max_delay_s * 1000)

    def wait_connected(self, timeout: float = 10) -> bool:
        return self._consumer.connected.wait(timeout)

    def stop(self, timeout: float = 10) -> None:
        """Commit and acknowledge what has arrived, then leave; anything unacknowledged stays queued
        at the broker for the next start."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if not self._writers:  # start() never got far enough
            return
        finished = self._done.wait(timeout)
        self._flush_watermarks()
        self._consumer.stop()
        for t in self._threads:
            t.join(timeout=2)
        if finished:  # else a writer thread may still hold its connection; the process exit closes it
            for w in self._writers:
                w.close()
        self._devices.close()
        self._report(self.stats.snapshot(0))
        log.info("ingest %s stopped: %d messages, %d points, %d dead letters", self.settings.instance,
                 self.stats.messages, self.stats.points, self.stats.dead_letters)

    # -- pipeline ----------------------------------------------------------------------------
    def _receive(self, item: Inbound) -> None:
        with self._cond:
            self._pending.append(item)
            if len(self._pending) >= self.settings.batch_max_messages:
                self._cond.notify()

    def _next_batch(self) -> list[Inbound]:
        s = self.settings
        with self._cond:
            while not self._stopping.is_set():
                if len(self._pending) >= s.batch_max_messages:
                    break
                if self._pending:
                    wait = s.batch_max_delay_s - (time.monotonic() - self._pending[0].received)
                    if wait <= 0:
                        break
                else:
                    wait = s.batch_max_delay_s
                self._cond.wait(wait)
            batch = self._pending[: s.batch_max_messages]
            del self._pending[: s.batch_max_messages]
            self._in_pipeline += len(batch)
            return batch

    def _leave_pipeline(self, batch: list[Inbound]) -> None:
        with self._cond:
            self._in_pipeline -= len(batch)

    def _decode_loop(self) -> None:
        """Stage 1: batch and decode, so the next batch is ready while the database commits this one."""
        seq = itertools.count()
        try:
            while not self._stopping.is_set():
                batch = self._next_batch()
                if not batch:
                    continue
                if (decoded := self._decode(batch)) is None:
                    self._leave_pipeline(batch)  # stopping: it stays unacknowledged at the broker
                else:
                    self._decoded.put((next(seq), batch, decoded, False))
            # Final flush of what had arrived when asked to stop; later arrivals stay at the broker.
            with self._cond:
                final, self._pending = self._pending, []
                self._in_pipeline += len(final)
            size = self.settings.batch_max_messages
            for i in range(0, len(final), size):
                chunk = final[i : i + size]
                if (decoded := self._decode(chunk)) is None:
                    self._leave_pipeline(final[i:])
                    break
                self._decoded.put((next(seq), chunk, decoded, True))
        except Exception:
            self._crash("decoder")
            raise
        finally:
            for _ in self._writers:
                self._decoded.put(None)

    def _decode(self, batch: list[Inbound]) -> list[Decoded] | None:
        """Decoding looks devices up in the database; while it is away, wait and retry as a commit does.
        None: stopping with the database away (the batch stays unacknowledged at the broker)."""
        def decode() -> list[Decoded]:
            t = now_ms()
            return [self._decoder.decode(m.topic, m.payload, t) for m in batch]

        return self._until_done(decode, self._devices.close, "device lookup", len(batch),
                                give_up=lambda _attempt: self._stopping.is_set())

    def _until_done(self, action: Callable[[], T], reset: Callable[[], None], what: str, messages: int,
                    give_up: Callable[[int], bool]) -> T | None:
        """Run `action` until the database lets it succeed, backing off; None when give_up(attempt) says
        waiting is pointless (stopping): the messages then stay unacknowledged at the broker."""
        for attempt, delay in enumerate(_backoff(self.settings.retry_max_delay_s)):
            try:
                return action()
            except psycopg.Error as e:
                self.stats.failed(f"{type(e).__name__}: {e}".strip())
                reset()
                if give_up(attempt):
                    log.warning("database unavailable while stopping; %d messages stay queued at the broker",
                                messages)
                    return None
                log.warning("%s failed (%s); retrying in %.1fs, not acknowledging", what, e, delay)
                time.sleep(delay)
        raise AssertionError("unreachable: _backoff never ends")

    def _crash(self, stage: str) -> None:
        log.critical("ingest %s thread died of an unexpected error; nothing more is acknowledged, restart the "
                     "process (unacknowledged messages wait at the broker)", stage, exc_info=True)
        self.crashed.set()

    def _write_loop(self, writer: BatchWriter) -> None:
        """Stage 2, one thread per database connection: commit a batch, then acknowledge it in turn."""
        giving_up = False
        try:
            while (item := self._decoded.get()) is not None:
                seq, batch, decoded, final = item
                dead = None
                try:
                    if not giving_up:
                        dead = self._commit(writer, batch, decoded, give_up_on_failure=final)
                        giving_up = dead is None  # stopping, database down: the rest stays queued at the broker
                finally:  # even after an unexpected error, pass the turn on so later batches are not stuck
                    with self._ack_turn.turn(seq):
                        if dead is not None:
                            self._acknowledge(batch, decoded, dead)
                    self._leave_pipeline(batch)
                if dead is not None and self._watermarks is not None:
                    self._watermarks.committed(_watermark_keys(decoded))
        except Exception:
            self._crash("writer")
            raise
        finally:
            with self._cond:
                self._writers_left -= 1
                if self._writers_left == 0:
                    self._done.set()

    def _commit(self, writer: BatchWriter, batch: list[Inbound], decoded: list[Decoded],
                give_up_on_failure: bool) -> int | None:
        """Number of dead letters once committed; None when given up (stopping, database down)."""
        def give_up(attempt: int) -> bool:
            return give_up_on_failure or (self._stopping.is_set() and attempt >= 3)

        return self._until_done(lambda: writer.write(decoded), writer.close, "database write", len(batch), give_up)

    def _acknowledge(self, batch: list[Inbound], decoded: list[Decoded], dead: int) -> None:
        committed = now_ms()
        self._consumer.ack(batch)
        points = sum(d.points for d in decoded)
        lat = [committed - d.sent_at for d in decoded if d.sent_at is not None]
        lags = [committed - d.newest_ts for d in decoded if d.newest_ts is not None]
        self.stats.committed(len(batch), points, dead, lat, lags)
        if self._on_commit is not None:
            self._on_commit(decoded, committed)

    # -- side loops --------------------------------------------------------------------------
    @property
    def reading_paused(self) -> bool:
        """True while the in-flight bound holds the socket unread (see cloud/ingest/consumer.py)."""
        return self._consumer.paused

    @property
    def watermarks_published(self) -> tuple[int, float]:
        """Watermark messages published so far, and the longest a device waited for one (s); 0s with them off."""
        wm = self._watermarks
        return (wm.published, wm.max_wait_s) if wm is not None else (0, 0.0)

    def in_flight(self) -> int:
        """Messages received and not yet acknowledged: waiting for a batch, being decoded or written."""
        with self._cond:
            return len(self._pending) + self._in_pipeline

    def _report(self, snap: Snapshot) -> None:
        try:
            with psycopg.connect(self.settings.dsn, connect_timeout=3) as conn:
                conn.execute(_REPORT, (
                    self.settings.instance, socket.gethostname(), self._started_at, snap.messages, snap.points,
                    snap.dead_letters, snap.msg_rate, snap.point_rate, snap.latency_p50_ms, snap.latency_p99_ms,
                    snap.lag_ms, snap.in_flight, snap.db_ok, snap.last_error,
                ))
        except psycopg.Error as e:
            log.debug("could not write stats: %s", e)

    def _stats_loop(self) -> None:
        while not self._stopping.wait(self.settings.stats_interval_s):
            snap = self.stats.snapshot(self.in_flight())
            self.last_snapshot = snap
            log.info(
                "%.0f msg/s, %.0f points/s, total %d msgs / %d dead; publish→commit p50 %s p99 %s ms; "
                "waiting %d; db %s",
                snap.msg_rate, snap.point_rate, snap.messages, snap.dead_letters,
                _fmt(snap.latency_p50_ms), _fmt(snap.latency_p99_ms), snap.in_flight,
                "ok" if snap.db_ok else f"DOWN ({snap.last_error})",
            )
            self._report(snap)

    def _watermark_loop(self) -> None:
        """Publish each device's committed (boot_id, seq) ranges, after the commit, coalesced per device and
        bounded in total (see cloud/ingest/watermark.py); say so when devices wait long enough to resend."""
        assert self._watermarks is not None
        tick = min(0.25, self.settings.watermark_interval_s / 4)
        warned = float("-inf")
        while not self._stopping.wait(tick):
            try:
                for topic, payload in self._watermarks.due(room=self._consumer.publish_room()):
                    self._consumer.publish(topic, payload)
            except Exception:
                log.exception("publishing watermarks failed; devices resend what they have not seen acknowledged")
            wait = self._watermarks.oldest_wait_s()
            if wait > WATERMARK_WAIT_WARN_S and time.monotonic() - warned > 60:
                warned = time.monotonic()
                log.warning("devices wait %.0f s for their watermark (more devices than watermark_max_rate %.0f/s "
                            "serves): past their resend_after_s they send again; raise it or add ingest processes",
                            wait, self.settings.watermark_max_rate)

    def _flush_watermarks(self, timeout: float = 2.0) -> None:
        """On the way out: the last commits' watermarks, whatever the rate bound (within what the broker may
        have unacknowledged), so connected devices need not wait for a resend to forget what is stored."""
        if self._watermarks is None:
            return
        sent = [self._consumer.publish(t, p)
                for t, p in self._watermarks.due(force=True, room=self._consumer.publish_room())]
        deadline = time.monotonic() + timeout
        for info in sent:
            with contextlib.suppress(RuntimeError, ValueError):  # not connected: the device resends instead
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))

    def _maintenance_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.settings.dsn, autocommit=True, connect_timeout=3) as conn:
                    try:
                        run_maintenance(conn)
                    finally:  # liveness does not wait for partitions or policies to succeed
                        mark_silent(conn, self.settings.silent_after_heartbeats)
            except psycopg.Error as e:
                log.warning("maintenance failed: %s", e)
            if self._stopping.wait(self.settings.maintenance_interval_s):
                return


def _watermark_keys(decoded: list[Decoded]) -> Iterator[tuple[str, tuple[str, int]]]:
    """(device, (boot_id, seq)) of the committed telemetry and events; a message refused whole still has
    its key read from the payload, so the device stops resending it."""
    for d in decoded:
        if d.device_id is not None and d.topic[:4] in ("tlm/", "evt/"):
            key = d.key if d.key is not None else envelope_key(d.payload) if d.dead is not None else None
            if key is not None:
                yield d.device_id, key


def _backoff(max_delay_s: float) -> Iterator[float]:
    """Jittered exponential delays from 0.25 s up to max_delay_s, for ever."""
    delay = 0.25
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * 2, max_delay_s)


class _InOrder:
    """Turns taken by sequence number: writers commit in parallel but acknowledge in batch order, as
    MQTT asks (PUBACKs in the order the PUBLISHes arrived)."""

    def __init__(self) -> None:
        self._next = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def turn(self, seq: int) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: self._next == seq)
        try:
            yield
        finally:
            with self._cond:
                self._next = seq + 1
                self._cond.notify_all()


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"

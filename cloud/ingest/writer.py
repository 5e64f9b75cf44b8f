"""Write a batch of decoded messages in one transaction: COPY straight into the tables.

Duplicates (same device, metric, time) are ignored by the primary keys, so redelivered messages are
harmless: a batch that holds one (after an ingest crash between commit and ack) fails on the key and
is written again through staging tables with insert-or-ignore. Only such batches pay for it.

Errors are sorted by SQLSTATE class, as Telegraf does: a data error (class 22 or 23) fails
only the message that caused it, which goes to dead letters; anything else (connection lost, server
shutting down, a schema out of date) is raised so the caller retries the batch without acknowledging.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from cloud.ingest.decode import Decoded

log = logging.getLogger(__name__)

_DEVICE_ROWS_LOCK_ID = 0x10C_0003  # transaction-scoped: one writer at a time updates device_status and config
# 22 data exception, 23 integrity constraint violation: the message is at fault, not the database.
_DATA_ERROR_CLASSES = ("22", "23")

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS stage_telemetry (LIKE telemetry) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_traffic_counts (LIKE traffic_counts) ON COMMIT DELETE ROWS;
"""
_TELEMETRY_COLUMNS = "(ts, device_id, metric, value)"
_COUNTS_COLUMNS = "(ts, device_id, line, cls, direction, interval_s, count, boot_id)"
_MARK_DIRTY = """
INSERT INTO rollup_dirty (instance, bucket)
SELECT %s::text, to_timestamp(m * 60) FROM unnest(%s::bigint[]) AS m
ON CONFLICT (instance, bucket) DO UPDATE SET bucket = EXCLUDED.bucket"""  # lock the row: upkeep waits for our commit
_INSERT_EVENTS = """
INSERT INTO events (ts, device_id, kind, severity, details)
VALUES (timestamptz 'epoch' + %s * interval '1 millisecond', %s, %s, %s, %s::jsonb)
ON CONFLICT DO NOTHING"""
_INSERT_DEAD = """
INSERT INTO dead_letters (topic, device_id, reason, payload, payload_size) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (topic, payload_hash) DO NOTHING"""  # a redelivered bad message is recorded once
_UPSERT_STATUS = """
INSERT INTO device_status AS s (device_id, online, boot_id, firmware, config_version, status_ts,
                                status_changed_at, reason, last_seen)
VALUES (%s, %s, %s, %s, %s, timestamptz 'epoch' + %s * interval '1 millisecond', now(), %s,
        CASE WHEN %s THEN now() END)
ON CONFLICT (device_id) DO UPDATE SET
    online = EXCLUDED.online, boot_id = EXCLUDED.boot_id,
    firmware = COALESCE(EXCLUDED.firmware, s.firmware),
    config_version = COALESCE(EXCLUDED.config_version, s.config_version),
    status_ts = EXCLUDED.status_ts, status_changed_at = EXCLUDED.status_changed_at, reason = EXCLUDED.reason,
    last_seen = COALESCE(EXCLUDED.last_seen, s.last_seen)
WHERE s.status_ts IS NULL OR EXCLUDED.status_ts > s.status_ts
    OR (EXCLUDED.status_ts = s.status_ts AND NOT EXCLUDED.online)"""
_UPSERT_SEEN = """
INSERT INTO device_status AS s (device_id, last_seen)
SELECT * FROM unnest(%s::text[], %s::timestamptz[])
ON CONFLICT (device_id) DO UPDATE SET last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)"""
_UPSERT_CONFIG = """
INSERT INTO device_config_reported AS c (device_id, version, config, reported_at, reported_ts)
VALUES (%s, %s, %s::jsonb, now(), timestamptz 'epoch' + %s * interval '1 millisecond')
ON CONFLICT (device_id) DO UPDATE SET version = EXCLUDED.version, config = EXCLUDED.config,
    reported_at = EXCLUDED.reported_at, reported_ts = EXCLUDED.reported_ts
WHERE c.reported_ts IS NULL OR EXCLUDED.reported_ts IS NULL OR EXCLUDED.reported_ts >= c.reported_ts"""

DEAD_PAYLOAD_KEEP = 64 * 1024  # store at most this much of a rejected payload


def _copy(cur: psycopg.Cursor, table: str, columns: str, data: str, dedupe: bool) -> None:
    """COPY straight into the table or, when the batch is known to hold rows already stored, through its
    staging table and INSERT ... ON CONFLICT DO NOTHING (measured: the direct COPY costs the database
    no more than the staging path, and saves the client three round trips a batch)."""
    if not dedupe:
        with cur.copy(f"COPY {table} {columns} FROM STDIN") as copy:
            copy.write(data)
        return
    with cur.copy(f"COPY stage_{table} {columns} FROM STDIN") as copy:
        copy.write(data)
    cur.execute(f"INSERT INTO {table} {columns} SELECT {columns[1:-1]} FROM stage_{table} ON CONFLICT DO NOTHING")


def _minutes(batch: Sequence[Decoded]) -> list[int]:
    """The batch's telemetry minutes, sorted: every writer locks rollup_dirty rows in one order."""
    return sorted(set().union(*(d.minutes for d in batch)))


def is_data_error(e: psycopg.Error) -> bool:
    """True when the content of a message caused the error, so retrying it can never succeed: a server
    data or constraint error, or a value the driver itself refuses (no SQLSTATE, not a connection error)."""
    if e.sqlstate is None:
        return not isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)
    return e.sqlstate[:2] in _DATA_ERROR_CLASSES


class BatchWriter:
    """Owns one database connection; call write() from one thread only."""

    def __init__(self, dsn: str, instance: str, mark_rollups: bool,
                 seen_written: dict[str, float] | None = None) -> None:
        """seen_written: when each device's last_seen was last written; share one among a process's
        writers, or each of them writes it again."""
        self._dsn = dsn
        self._instance = instance
        self._mark_rollups = mark_rollups
        self._conn: psycopg.Connection | None = None
        self._seen_written = {} if seen_written is None else seen_written

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._dsn, application_name=self._instance, connect_timeout=5,
                                         keepalives=1, keepalives_idle=30)
            with self._conn.transaction():
                self._conn.execute(_STAGING)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def write(self, batch: Sequence[Decoded]) -> int:
        """Commit the batch; returns the number of dead letters written. Raises psycopg.Error if the
        database is unreachable (caller retries) — never loses a message silently."""
        conn = self._connection()
        try:
            try:
                with conn.transaction():
                    return self._write(conn, batch, dedupe=False)
            except psycopg.errors.UniqueViolation:  # a redelivery: again, skipping the rows already stored
                with conn.transaction():
                    return self._write(conn, batch, dedupe=True)
        except psycopg.Error as e:
            if not is_data_error(e):
                raise
            log.warning("batch of %d failed (%s: %s); writing message by message", len(batch), e.sqlstate, e)
        return self._write_one_by_one(conn, batch)

    def _write_one_by_one(self, conn: psycopg.Connection, batch: Sequence[Decoded]) -> int:
        dead = 0
        with conn.transaction():
            if self._mark_rollups:  # all of them first, in order, as _write does: no lock-order deadlock
                conn.execute(_MARK_DIRTY, (self._instance, _minutes(batch)))
            for d in batch:
                try:
                    with conn.transaction():  # savepoint
                        conn.execute("DELETE FROM stage_telemetry; DELETE FROM stage_traffic_counts")
                        dead += self._write(conn, [d], dedupe=True)
                except psycopg.Error as e:
                    if not is_data_error(e):
                        raise
                    self._dead_letters(conn, [(d.topic, d.device_id, f"database rejected: {e}", d.payload)])
                    dead += 1
        return dead

    def _write(self, conn: psycopg.Connection, batch: Sequence[Decoded], dedupe: bool) -> int:
        cur = conn.cursor()
        telemetry = "".join(line for d in batch for line in d.telemetry)
        if telemetry:
            _copy(cur, "telemetry", _TELEMETRY_COLUMNS, telemetry, dedupe)
            if self._mark_rollups:
                cur.execute(_MARK_DIRTY, (self._instance, _minutes(batch)))
        counts = "".join(line for d in batch for line in d.counts)
        if counts:
            _copy(cur, "traffic_counts", _COUNTS_COLUMNS, counts, dedupe)
        events = [e for d in batch for e in d.events]
        if events:
            cur.executemany(_INSERT_EVENTS, events)
        dead = [(d.dead.topic, d.dead.device_id, d.dead.reason, d.dead.payload) for d in batch if d.dead]
        self._dead_letters(conn, dead)
        self._device_rows(cur, batch)
        return len(dead)

    def _device_rows(self, cur: psycopg.Cursor, batch: Sequence[Decoded]) -> None:
        """Status, reported config and last seen: rows several writers update. One transaction at a time
        may hold them (an advisory lock, until commit), so two writers never deadlock over them."""
        changes = [d for d in batch if d.status is not None or d.config is not None]
        due = self._seen_due(batch)
        if not changes and not due:
            return
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_DEVICE_ROWS_LOCK_ID,))
        for d in changes:  # in arrival order: the status_ts check keeps the newest state either way
            if d.status is not None:
                s = d.status
                online = s.status == "online"
                cur.execute(_UPSERT_STATUS, (s.device_id, online, s.boot_id, s.firmware, s.config_version, s.ts,
                                             s.reason, online))
            if d.config is not None:
                cur.execute(_UPSERT_CONFIG, (d.device_id, *d.config))
        if due:
            now = datetime.now(UTC)
            cur.execute(_UPSERT_SEEN, (due, [now] * len(due)))
            for dev in due:
                self._seen_written[dev] = now.timestamp()

    def _dead_letters(self, conn: psycopg.Connection, rows: list[tuple[str, str | None, str, bytes]]) -> None:
        if rows:
            conn.cursor().executemany(
                _INSERT_DEAD, [(t, dev, why, p[:DEAD_PAYLOAD_KEEP], len(p)) for t, dev, why, p in rows]
            )

    def _seen_due(self, batch: Sequence[Decoded], every_s: float = 5.0) -> list[str]:
        """Devices whose last_seen is due: written at most every few seconds per device, to spare the hot path."""
        stamp = time.time()
        return sorted({d.device_id for d in batch if d.points and d.device_id
                       and stamp - self._seen_written.get(d.device_id, 0.0) >= every_s})

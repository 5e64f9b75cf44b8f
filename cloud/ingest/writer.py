"""Write a batch of decoded messages in one transaction: COPY straight into the tables.

Duplicates (same device, metric, time) are ignored by the primary keys, so redelivered messages are
harmless: a batch that holds one (after an ingest crash between commit and ack) fails on the key and
is written again through staging tables with insert-or-ignore. Only such batches pay for it.

Errors are sorted by SQLSTATE class, as Telegraf does: a data error (class 22 or 23) fails
only the message that caused it, which goes to dead letters; anything else (connection lost, server
shutting down, a schema out of date) is raised so the caller retries the batch without acknowledging.
The message at fault is found by bisection (halves in savepoints), so one bad message in a batch of
4,000 costs about 2·log2(4000) ≈ 24 partial writes, not 4,000 single ones. The decoder already makes
every value safe for COPY and jsonb; bisection is the net for what it could not foresee.

A second, different value for a key already stored (same device, metric and time) is not stored,
and not dropped silently either: it becomes a dead letter that shows both values.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import psycopg

from cloud.ingest.deadletters import DEAD_PAYLOAD_KEEP
from cloud.ingest.decode import DeadLetter, Decoded

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
# What this transaction reaches back to: the alarm evaluator reads every reading committed since its last
# read from these rows (cloud/alerts/thresholds.py).
_RECORD_COMMIT = "INSERT INTO telemetry_commits (oldest_ts, points) VALUES (to_timestamp(%s), %s)"
_MARK_DIRTY = """
INSERT INTO rollup_dirty (instance, bucket, marked_at)
SELECT %s::text, to_timestamp(m * 60), statement_timestamp() FROM unnest(%s::bigint[]) AS m
ON CONFLICT (instance, bucket) DO UPDATE SET marked_at = EXCLUDED.marked_at"""
# The update locks the row (upkeep waits for our commit) and restarts the minute's grace: upkeep recomputes a
# minute once batches stop reaching it (migration 0120).
# Events in one statement; returns those whose key was already stored with other details or severity (the
# join reads the table as it was before this statement's insert, so new rows never match themselves).
_INSERT_EVENTS = """
WITH incoming AS (
    SELECT timestamptz 'epoch' + ms * interval '1 millisecond' AS ts, ms, device_id, kind, severity, details
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::jsonb[])
        AS i(ms, device_id, kind, severity, details)
), ins AS (
    INSERT INTO events (ts, device_id, kind, severity, details)
    SELECT ts, device_id, kind, severity, details FROM incoming ON CONFLICT DO NOTHING
)
SELECT i.device_id, 'event ' || i.kind, i.ms, e.severity || ' ' || e.details::text, i.severity || ' ' || i.details::text
FROM incoming i JOIN events e USING (device_id, kind, ts)
WHERE e.details IS DISTINCT FROM i.details OR e.severity IS DISTINCT FROM i.severity"""
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
# Staged rows whose key is stored with another value: what a second, different reading looks like.
_CONFLICTS = {
    "telemetry": """
SELECT s.device_id, s.metric, (extract(epoch FROM s.ts) * 1000)::bigint, t.value, s.value
FROM stage_telemetry s JOIN telemetry t USING (device_id, metric, ts)
WHERE t.value IS DISTINCT FROM s.value ORDER BY 1, 2, 3 LIMIT 10000""",
    "traffic_counts": """
SELECT s.device_id, s.line || '/' || s.cls || '/' || s.direction || '@' || s.boot_id,
       (extract(epoch FROM s.ts) * 1000)::bigint, t.count, s.count
FROM stage_traffic_counts s JOIN traffic_counts t USING (device_id, line, cls, direction, ts, boot_id)
WHERE t.count IS DISTINCT FROM s.count OR t.interval_s IS DISTINCT FROM s.interval_s ORDER BY 1, 2, 3 LIMIT 10000""",
}
_CONFLICTS_SHOWN = 100  # conflicting points kept in one dead letter's payload


def _copy(cur: psycopg.Cursor, table: str, columns: str, data: str, dedupe: bool) -> list[tuple]:
    """COPY straight into the table or, when the batch is known to hold rows already stored, through its
    staging table and INSERT ... ON CONFLICT DO NOTHING (measured: the direct COPY costs the database
    no more than the staging path, and saves the client three round trips a batch). Returns the staged
    rows whose key was already stored with a different value: (device, key, ts ms, stored, refused)."""
    if not dedupe:
        with cur.copy(f"COPY {table} {columns} FROM STDIN") as copy:
            copy.write(data)
        return []
    with cur.copy(f"COPY stage_{table} {columns} FROM STDIN") as copy:
        copy.write(data)
    cur.execute(f"INSERT INTO {table} {columns} SELECT {columns[1:-1]} FROM stage_{table} ON CONFLICT DO NOTHING")
    return cur.execute(_CONFLICTS[table]).fetchall()


def _events(cur: psycopg.Cursor, events: list[tuple[int, str, str, str, str]]) -> list[tuple]:
    """Insert events (ts ms, device, kind, severity, details); returns conflicts as `_copy` does, including
    two different events for one key inside this batch (the first is kept)."""
    first: dict[tuple[int, str, str], tuple[int, str, str, str, str]] = {}
    conflicts: list[tuple] = []
    for e in events:
        kept = first.setdefault((e[0], e[1], e[2]), e)
        if kept is not e and (kept[3] != e[3] or json.loads(kept[4]) != json.loads(e[4])):
            conflicts.append((e[1], f"event {e[2]}", e[0], f"{kept[3]} {kept[4]}", f"{e[3]} {e[4]}"))
    rows = list(first.values())
    cur.execute(_INSERT_EVENTS, [list(col) for col in zip(*rows, strict=True)])
    return conflicts + cur.fetchall()


def _conflict_letters(batch: Sequence[Decoded], rows: list[tuple]) -> list[DeadLetter]:
    """One dead letter per device with the points it sent twice with different values (the first is kept)."""
    topic_of = {d.device_id: d.topic for d in batch if d.telemetry or d.counts or d.events}
    by_device: dict[str, list[tuple]] = {}
    for r in rows:
        by_device.setdefault(r[0], []).append(r)
    out = []
    for dev, points in by_device.items():
        shown = [{"key": k, "ts": ts, "stored": old, "refused": new}
                 for _, k, ts, old, new in points[:_CONFLICTS_SHOWN]]
        first = shown[0]
        reason = (f"conflict: {len(points)} point(s) already stored with a different value for the same key; "
                  f"the first value is kept (e.g. {first['key']} at ts {first['ts']}: stored {first['stored']}, "
                  f"refused {first['refused']})")
        out.append(DeadLetter(topic_of.get(dev, f"conflict/{dev}"), reason, json.dumps(shown).encode(), dev))
    return out


def _minutes(batch: Sequence[Decoded]) -> list[int]:
    """The minutes the batch's readings and counts fall in, sorted: writers lock rollup_dirty rows in one order."""
    return sorted(set().union(*(d.minutes for d in batch)))


def mark_dirty(cur: psycopg.Connection | psycopg.Cursor, instance: str, minutes: list[int]) -> None:
    """Mark these minutes (epoch minutes) for upkeep to recompute their rollups or aggregates once settled."""
    cur.execute(_MARK_DIRTY, (instance, minutes))


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
        self.partial_writes = 0  # savepoint writes spent isolating messages the database refused

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
            log.warning("batch of %d failed (%s: %s); finding the bad message(s) by bisection", len(batch),
                        e.sqlstate, e)
        return self._write_bisecting(conn, batch)

    def _write_bisecting(self, conn: psycopg.Connection, batch: Sequence[Decoded]) -> int:
        before = self.partial_writes
        with conn.transaction():
            if self._mark_rollups:  # all of them first, in order, as _write does: no lock-order deadlock
                mark_dirty(conn, self._instance, _minutes(batch))
            mid = len(batch) // 2
            if mid == 0:
                dead = self._write_part(conn, batch)
            else:
                dead = self._write_part(conn, batch[:mid]) + self._write_part(conn, batch[mid:])
        log.info("bisection: batch of %d written in %d partial writes", len(batch), self.partial_writes - before)
        return dead

    def _write_part(self, conn: psycopg.Connection, part: Sequence[Decoded]) -> int:
        """Write `part` in a savepoint; if the database refuses it, split it in two and try each half,
        down to the single message at fault, which becomes a dead letter."""
        self.partial_writes += 1
        try:
            with conn.transaction():  # savepoint
                conn.execute("DELETE FROM stage_telemetry; DELETE FROM stage_traffic_counts")
                return self._write(conn, part, dedupe=True)
        except psycopg.Error as e:
            if not is_data_error(e):
                raise
            if len(part) > 1:
                mid = len(part) // 2
                return self._write_part(conn, part[:mid]) + self._write_part(conn, part[mid:])
            d = part[0]
            log.warning("database refused a message on %s: %s", d.topic, e)
            reason = f"database rejected: {e}".replace("\x00", "")
            self._dead_letters(conn, [DeadLetter(d.topic, reason, d.payload, d.device_id)])
            return 1

    def _write(self, conn: psycopg.Connection, batch: Sequence[Decoded], dedupe: bool) -> int:
        cur = conn.cursor()
        conflicts: list[tuple] = []
        telemetry = "".join(line for d in batch for line in d.telemetry)
        if telemetry:
            conflicts += _copy(cur, "telemetry", _TELEMETRY_COLUMNS, telemetry, dedupe)
            if self._mark_rollups:
                mark_dirty(cur, self._instance, _minutes(batch))
            oldest = min((d.oldest_reading_ts for d in batch if d.oldest_reading_ts is not None), default=None)
            if oldest is not None:
                cur.execute(_RECORD_COMMIT, (oldest / 1000, sum(len(d.telemetry) for d in batch)))
        counts = "".join(line for d in batch for line in d.counts)
        if counts:
            conflicts += _copy(cur, "traffic_counts", _COUNTS_COLUMNS, counts, dedupe)
        events = [e for d in batch for e in d.events]
        if events:
            conflicts += _events(cur, events)
        dead = [d.dead for d in batch if d.dead]
        if conflicts:
            dead += _conflict_letters(batch, conflicts)
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

    def _dead_letters(self, conn: psycopg.Connection, dead: list[DeadLetter]) -> None:
        """Inserted in (topic, payload) order, so two writers storing the same ones never deadlock."""
        if dead:
            ordered = sorted(dead, key=lambda d: (d.topic, d.payload))
            rows = [(d.topic, d.device_id, d.reason, d.payload[:DEAD_PAYLOAD_KEEP],
                     len(d.payload) if d.size < 0 else d.size) for d in ordered]
            conn.cursor().executemany(_INSERT_DEAD, rows)

    def _seen_due(self, batch: Sequence[Decoded], every_s: float = 5.0) -> list[str]:
        """Devices whose last_seen is due: written at most every few seconds per device, to spare the hot path."""
        stamp = time.time()
        return sorted({d.device_id for d in batch if d.points and d.device_id
                       and stamp - self._seen_written.get(d.device_id, 0.0) >= every_s})

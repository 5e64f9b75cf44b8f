"""Store-and-forward outbox: every sample is committed to SQLite (WAL) before anything is published,
and a row is deleted only once the database has it: the broker's PUBACK marks it `AT_BROKER` with the
(boot_id, seq) of the message that carried it, and ingest's watermark (`contract.watermark`) covering
that message deletes it. (With `forget_on: puback` the PUBACK deletes it, as before watermarks.)

One row is one contract item -- a `MetricSample`, `CountSample` or `Event` -- stored as its JSON
body with its topic group (`kind`, `leaf`). Messages are assembled from rows at send time (see
`edge.drain`), so a backlog goes out batched whatever the sampling rate was.

Bounds: total body bytes (`max_bytes`) and row age (`max_age_s`); beyond them the oldest rows are
dropped, and the drop count is kept in the file so it survives restarts and reaches the heartbeat.
The envelope `seq` also survives restarts: it is reserved in blocks in the `meta` table, so a crash
skips numbers but never repeats one.

A row at the broker records the connection (`link`, a persisted counter) it was acknowledged on: after a
reconnect the broker may have lost it (Mosquitto acknowledges before it writes to disk), and the drainer
sends such rows again when no watermark covers them in time (`resend`).

Thread-safety: one connection behind a lock; the sampler thread writes, the session thread reads
and acknowledges.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Kind = Literal["tlm", "counts", "evt"]
SEQ_BLOCK = 1000
TO_SEND, AT_BROKER = 0, 1  # row states

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    leaf    TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    created INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    body    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Added with the end-to-end acknowledgement; an outbox file from before gets them on open.
_SENT_COLUMNS = {"state": "INTEGER NOT NULL DEFAULT 0", "boot": "TEXT", "seq": "INTEGER", "link": "INTEGER"}


@dataclass(frozen=True, slots=True)
class Record:
    """An item to store: its topic group and its JSON body (already validated by the caller)."""

    kind: Kind
    leaf: str
    ts: int
    body: str


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    kind: Kind
    leaf: str
    body: str


class Outbox:
    def __init__(self, path: Path, max_bytes: int, max_age_s: float, sync: str = "full") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_ms = int(max_age_s * 1000)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        have = {r[1] for r in self._db.execute("PRAGMA table_info(outbox)")}
        for col, decl in _SENT_COLUMNS.items():
            if col not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {col} {decl}")
        self._db.execute("CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (boot, seq) WHERE boot IS NOT NULL")
        rows, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        self._rows: int = rows
        self._bytes: int = size
        self._dropped = int(self.get_meta("dropped") or 0)
        # Continue above every seq a previous run may have used, then reserve the next block.
        self._seq = int(self.get_meta("seq_reserved") or 0)
        self._seq_reserved = self._seq
        log.info("outbox %s: %d rows, %d bytes, %d dropped so far", path, rows, size, self._dropped)

    # -- writing ---------------------------------------------------------------------------------

    def put(self, records: Sequence[Record], now_ms: int) -> int:
        """Commit records in one transaction; returns how many old rows were dropped to make room."""
        if not records:
            return 0
        params = [(r.kind, r.leaf, r.ts, now_ms, len(r.body), r.body) for r in records]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO outbox (kind, leaf, ts, created, size, body) VALUES (?, ?, ?, ?, ?, ?)",
                    params,
                )
                self._rows += len(params)
                self._bytes += sum(p[4] for p in params)
                dropped = self._drop_over_bytes()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._reload_totals()
                raise
        if dropped:
            log.warning("outbox full (%d bytes max): dropped %d oldest rows", self.max_bytes, dropped)
        return dropped

    def ack(self, ids: Iterable[int]) -> int:
        """Delete rows the broker acknowledged; rows already dropped are ignored."""
        id_list = list(ids)
        if not id_list:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            removed = 0
            for i in range(0, len(id_list), 900):  # stay under SQLite's bound-parameter limit
                chunk = id_list[i : i + 900]
                marks = ",".join("?" * len(chunk))
                sizes = self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING size", chunk
                ).fetchall()
                removed += len(sizes)
                self._bytes -= sum(s for (s,) in sizes)
            self._rows -= removed
            self._db.execute("COMMIT")
        return removed

    def at_broker(self, ids: Sequence[int], boot: str, seq: int, link: int) -> None:
        """The broker acknowledged the message (boot, seq) carrying these rows on connection `link`."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for i in range(0, len(ids), 900):
                chunk = list(ids[i : i + 900])
                self._db.execute(
                    f"UPDATE outbox SET state = {AT_BROKER}, boot = ?, seq = ?, link = ? "
                    f"WHERE id IN ({','.join('?' * len(chunk))})",
                    [boot, seq, link, *chunk],
                )
            self._db.execute("COMMIT")

    def confirm(self, boot: str, ranges: Iterable[tuple[int, int]], link: int) -> tuple[int, int]:
        """Delete rows whose last message (boot, seq) the database has; returns (rows removed, of which
        acknowledged by the broker on an earlier connection than `link`)."""
        removed = earlier = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            for lo, hi in ranges:
                rows = self._db.execute(
                    "DELETE FROM outbox WHERE boot = ? AND seq BETWEEN ? AND ? RETURNING size, state, link",
                    (boot, lo, hi),
                ).fetchall()
                removed += len(rows)
                earlier += sum(1 for _, st, ln in rows if st == AT_BROKER and ln is not None and ln < link)
                self._bytes -= sum(r[0] for r in rows)
            self._rows -= removed
            self._db.execute("COMMIT")
        return removed, earlier

    def resend(self, *, before_link: int | None = None, boot: str | None = None, below_seq: int | None = None) -> int:
        """Rows at the broker that are due again: acknowledged on a connection before `before_link`, or
        of `boot` with a seq below `below_seq` (a later message was committed, this one was not)."""
        with self._lock:
            if before_link is not None:
                cur = self._db.execute(
                    f"UPDATE outbox SET state = {TO_SEND} WHERE state = {AT_BROKER} AND link < ?", (before_link,)
                )
            else:
                cur = self._db.execute(
                    f"UPDATE outbox SET state = {TO_SEND} WHERE state = {AT_BROKER} AND boot = ? AND seq < ?",
                    (boot, below_seq),
                )
            return cur.rowcount

    def resend_newest(self, *, boot: str, above_seq: int, through_seq: int) -> int:
        """The rows of the newest message of `boot` at the broker with above_seq < seq <= through_seq are due
        again (a probe: if the database gets it, the rows below it become holes to resend)."""
        with self._lock:
            cur = self._db.execute(
                f"UPDATE outbox SET state = {TO_SEND} WHERE state = {AT_BROKER} AND boot = ? AND seq = "
                f"(SELECT max(seq) FROM outbox WHERE state = {AT_BROKER} AND boot = ? AND seq > ? AND seq <= ?)",
                (boot, boot, above_seq, through_seq),
            )
            return cur.rowcount

    def count_at_broker(self, before_link: int) -> int:
        with self._lock:
            (n,) = self._db.execute(
                f"SELECT count(*) FROM outbox WHERE state = {AT_BROKER} AND link < ?", (before_link,)
            ).fetchone()
        return int(n)

    def next_link(self) -> int:
        """A new connection number, persisted: rows acknowledged on older ones may be lost at the broker."""
        with self._lock:
            link = int(self._db.execute("SELECT coalesce(max(value + 0), 0) FROM meta WHERE key = 'link'")
                       .fetchone()[0]) + 1
            self._set_meta_locked("link", str(link))
        return link

    def enforce_age(self, now_ms: int) -> int:
        """Drop rows older than `max_age_s` (by creation time); returns the count dropped."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            sizes = self._db.execute(
                "DELETE FROM outbox WHERE created < ? RETURNING size", (now_ms - self.max_age_ms,)
            ).fetchall()
            self._note_drops(sizes)
            self._db.execute("COMMIT")
        if sizes:
            log.warning("outbox: dropped %d rows older than %.0f s", len(sizes), self.max_age_ms / 1000)
        return len(sizes)

    def _drop_over_bytes(self) -> int:
        """Inside a transaction: delete rows until the byte bound holds. Rows the broker already has go
        first (only a broker crash could still lose them), oldest first; then unsent rows, oldest first,
        which is data lost and counted. Returns the unsent rows dropped."""
        dropped = 0
        while self._bytes > self.max_bytes and self._rows > 0:
            excess = self._bytes - self.max_bytes
            ids, acc = [], 0
            for row_id, size in self._db.execute(
                f"SELECT id, size FROM outbox ORDER BY state = {AT_BROKER} DESC, id LIMIT 5000"
            ):
                acc += size
                ids.append(row_id)
                if acc >= excess:
                    break
            if not ids:
                break
            for i in range(0, len(ids), 900):
                chunk = ids[i : i + 900]
                rows = self._db.execute(
                    f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))}) RETURNING size, state", chunk
                ).fetchall()
                released = [(size,) for size, st in rows if st == AT_BROKER]
                self._rows -= len(released)
                self._bytes -= sum(r[0] for r in released)
                unsent = [(size,) for size, st in rows if st != AT_BROKER]
                self._note_drops(unsent)
                dropped += len(unsent)
        return dropped

    def _note_drops(self, sizes: list[tuple[int]]) -> None:
        if not sizes:
            return
        self._rows -= len(sizes)
        self._bytes -= sum(s for (s,) in sizes)
        self._dropped += len(sizes)
        self._set_meta_locked("dropped", str(self._dropped))

    def _reload_totals(self) -> None:
        self._rows, self._bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox"
        ).fetchone()

    # -- reading -----------------------------------------------------------------------------------

    def fetch(
        self,
        *,
        above: int | None = None,
        below: int | None = None,
        newest_first: bool = False,
        limit: int = 500,
    ) -> list[Row]:
        """Rows still to send with above < id < below, oldest or newest first."""
        sql = f"SELECT id, kind, leaf, body FROM outbox WHERE id > ? AND id < ? AND state = {TO_SEND} ORDER BY id "
        sql += "DESC LIMIT ?" if newest_first else "LIMIT ?"
        lo = -1 if above is None else above
        hi = 2**62 if below is None else below
        with self._lock:
            return [Row(*r) for r in self._db.execute(sql, (lo, hi, limit))]

    def kept_through(self, last_id: int) -> int:
        """Rows still kept, in any state, among those with id <= last_id (taken up to a known point)."""
        with self._lock:
            (n,) = self._db.execute("SELECT count(*) FROM outbox WHERE id <= ?", (last_id,)).fetchone()
        return int(n)

    def max_id(self) -> int:
        with self._lock:
            (v,) = self._db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        return int(v)

    @property
    def depth(self) -> int:
        return self._rows

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def dropped_total(self) -> int:
        return self._dropped

    def next_seq(self) -> int:
        """The next envelope seq; never repeats across restarts, even after a crash."""
        with self._lock:
            seq = self._seq
            self._seq += 1
            if self._seq > self._seq_reserved:
                self._seq_reserved = self._seq + SEQ_BLOCK
                self._set_meta_locked("seq_reserved", str(self._seq_reserved))
        return seq

    # -- meta ------------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._set_meta_locked(key, value)

    def _set_meta_locked(self, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

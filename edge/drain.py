"""Decides what leaves the outbox next and assembles contract messages from its rows.

At each (re)connection the outbox splits in two at its highest row id:

* **live** -- rows written after the connection came up: sent first, as fast as the in-flight
  window allows, so current data is never stuck behind an outage's backlog;
* **backlog** -- rows from before: sent in batches of `batch_size` at `messages_per_s`, oldest- or
  newest-first, through a token bucket. `flush` lifts the rate limit until the backlog is empty.

Rows are only *selected* here; they are deleted by `acked()` once the broker's PUBACK arrives. On a
reconnect everything unacknowledged is selected again (cursors reset), which may resend a message
the broker did get -- ingest stores by natural key, so a resend never becomes a duplicate row.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from contract import topics
from edge.config import DrainSettings
from edge.outbox import Outbox, Row

log = logging.getLogger(__name__)

_ITEMS_KEY = {"tlm": "samples", "counts": "counts", "evt": "events"}


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    payload: bytes
    row_ids: tuple[int, ...]


class Drainer:
    def __init__(self, outbox: Outbox, device_id: str, site: str, boot_id: str, drain: DrainSettings) -> None:
        self.outbox = outbox
        self.device_id, self.site, self.boot_id = device_id, site, boot_id
        self.drain = drain
        self._lock = threading.Lock()
        self._live_cursor = 0
        self._backlog_mark = 0
        self._backlog_cursor = 0
        self._backlog_done = True
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        self._unthrottled = False
        self.reset()

    def set_drain(self, drain: DrainSettings) -> None:
        with self._lock:
            self.drain = drain

    def reset(self) -> None:
        """Called on every (re)connect: whatever is not acknowledged is due again."""
        with self._lock:
            mark = self.outbox.max_id()
            self._live_cursor = mark
            self._backlog_mark = mark
            self._backlog_cursor = 0 if self.drain.order == "oldest" else mark + 1
            self._backlog_done = mark == 0
            self._tokens = 1.0
            self._unthrottled = False
            self._last_refill = time.monotonic()

    def flush(self) -> None:
        """Send the backlog at full speed (bounded only by the in-flight window) until it is empty."""
        with self._lock:
            self._unthrottled = True

    @property
    def backlog_pending(self) -> bool:
        return not self._backlog_done

    def next_messages(self) -> list[OutMessage]:
        """Messages to publish now: live rows first, else one throttled backlog batch, else []."""
        with self._lock:
            batch = self.drain.batch_size
            rows = self.outbox.fetch(above=self._live_cursor, limit=batch)
            if rows:
                self._live_cursor = rows[-1].id
                return self._assemble(rows)
            if self._backlog_done or not self._take_token():
                return []
            if self.drain.order == "oldest":
                rows = self.outbox.fetch(
                    above=self._backlog_cursor, below=self._backlog_mark + 1, limit=batch
                )
                if rows:
                    self._backlog_cursor = rows[-1].id
            else:
                rows = self.outbox.fetch(below=self._backlog_cursor, newest_first=True, limit=batch)
                if rows:
                    self._backlog_cursor = rows[-1].id
                    rows.reverse()
            if not rows:
                self._backlog_done = True
                self._unthrottled = False
                log.info("outbox backlog drained")
                return []
            return self._assemble(rows)

    def _take_token(self) -> bool:
        if self._unthrottled:
            return True
        now = time.monotonic()
        rate = self.drain.messages_per_s
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _assemble(self, rows: list[Row]) -> list[OutMessage]:
        """One message per topic group, keeping row order inside each group."""
        groups: dict[tuple[str, str], list[Row]] = {}
        for r in rows:
            groups.setdefault((r.kind, r.leaf), []).append(r)
        now_ms = int(time.time() * 1000)
        out = []
        for (kind, leaf), group in groups.items():
            if kind == "evt":
                topic = topics.events(self.site, self.device_id, leaf)
            else:
                topic = topics.telemetry(self.site, self.device_id, leaf)
            head = json.dumps(
                {
                    "v": 1,
                    "device_id": self.device_id,
                    "boot_id": self.boot_id,
                    "seq": self.outbox.next_seq(),
                    "sent_at": now_ms,
                },
                separators=(",", ":"),
            )
            payload = f'{head[:-1]},"{_ITEMS_KEY[kind]}":[{",".join(r.body for r in group)}]}}'
            out.append(OutMessage(topic, payload.encode(), tuple(r.id for r in group)))
        return out

    def acked(self, row_ids: tuple[int, ...]) -> None:
        self.outbox.ack(row_ids)

    def rejected(self, row_ids: tuple[int, ...], reason: str) -> None:
        """The broker refused the message (negative PUBACK): retrying cannot help, so drop it."""
        log.error("broker refused %d rows (%s); dropping them", len(row_ids), reason)
        self.outbox.ack(row_ids)

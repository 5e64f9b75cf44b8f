"""Decides what leaves the outbox next and assembles contract messages from its rows.

At each (re)connection the outbox splits in two at its highest row id:

* **live** -- rows written after the connection came up: sent first, as fast as the in-flight
  window allows, so current data is never stuck behind an outage's backlog;
* **backlog** -- rows from before: sent in batches of `batch_size` at `messages_per_s`, oldest- or
  newest-first, through a token bucket. `flush` lifts the rate limit until the backlog is empty.

Rows are only *selected* here. With `forget_on="watermark"` (the agent's default) a PUBACK (`acked()`)
marks them at the broker, and ingest's watermark (`watermark()`) deletes them once the database has the
message; with `"puback"` the PUBACK deletes them. On a reconnect everything not yet at the broker is
selected again (cursors reset), which may resend a message the broker did get -- ingest stores by
natural key, so a resend never becomes a duplicate row.

Rows at the broker but not covered by a watermark are sent again (`tick()`, checked once a second):
* after a reconnect, rows acknowledged on an earlier connection (the broker may have lost them in a
  crash) once `resend_after_s` passed without a watermark covering any of them;
* rows of this boot below a seq that a watermark covered `resend_after_s` ago: a later message is in the
  database, this one is not (a broker crash, or ingest killed between its commit and its watermark);
* the tail, rows above every covered seq: no later message can show them missing, so when no watermark
  raised the newest covered seq for a while, the newest of them goes again as a *probe*. Once a watermark
  covers the probe, the rule above sends the rest. The wait starts at `resend_after_s` after their PUBACK
  and doubles after each probe, up to `resend_max_s`, until a watermark makes progress again: a stopped
  ingest costs one message per wait, not a resend of everything it has not stored.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError

from contract import topics
from contract.watermark import BootAck, Watermark
from edge.config import DrainSettings
from edge.outbox import Outbox, Row

log = logging.getLogger(__name__)

_ITEMS_KEY = {"tlm": "samples", "counts": "counts", "evt": "events"}


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    payload: bytes
    row_ids: tuple[int, ...]
    seq: int = -1


ForgetOn = Literal["watermark", "puback"]


class Drainer:
    def __init__(self, outbox: Outbox, device_id: str, site: str, boot_id: str, drain: DrainSettings,
                 *, forget_on: ForgetOn = "puback", resend_after_s: float = 15.0, resend_max_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.device_id, self.site, self.boot_id = device_id, site, boot_id
        self.drain = drain
        self.forget_on = forget_on
        self.resend_after_s = resend_after_s
        self.resend_max_s = max(resend_max_s, resend_after_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._link = 0
        self._inflight_rows: set[int] = set()  # handed to the session, not yet acknowledged
        self._latest: dict[str, BootAck] = {}  # last watermark seen per boot
        self._linked_at = clock()
        self._earlier_progress = clock()  # last time a watermark covered rows of an earlier link
        self._tops: deque[tuple[float, int]] = deque()  # (when, newest committed seq of this boot)
        self._top_then = -1  # newest committed seq of this boot as of resend_after_s ago
        self._top = -1  # newest committed seq of this boot: above it is the tail
        self._progress = clock()  # last time a watermark raised _top
        self._acked_top = -1  # newest seq of this boot marked at the broker (no watermark had covered it yet)
        self._acks: deque[tuple[float, int]] = deque()  # (tick, _acked_top then)
        self._acked_then = -1  # _acked_top as of resend_after_s ago
        self._probe_wait = resend_after_s  # backoff between probes of the tail
        self._probed = float("-inf")
        self._next_tick = 0.0
        self.resent = 0  # rows sent again because no watermark covered them
        self._live_cursor = 0
        self._backlog_mark = 0
        self._backlog_cursor = 0
        self._backlog_done = True
        self._tokens = 0.0
        self._last_refill = clock()
        self._unthrottled = False
        self.reset()

    def set_drain(self, drain: DrainSettings) -> None:
        with self._lock:
            self.drain = drain

    def reset(self) -> None:
        """Called on every (re)connect: whatever is not acknowledged is due again."""
        with self._lock:
            if self.forget_on == "watermark":
                self._link = self.outbox.next_link()
            self._inflight_rows.clear()
            self._linked_at = self._earlier_progress = self._clock()
            self._rescan()

    def _rescan(self) -> None:
        """Cursors from scratch: live after the newest row, backlog over everything before."""
        mark = self.outbox.max_id()
        self._live_cursor = mark
        self._backlog_mark = mark
        self._backlog_cursor = 0 if self.drain.order == "oldest" else mark + 1
        self._backlog_done = mark == 0
        self._tokens = 1.0
        self._unthrottled = False
        self._last_refill = self._clock()

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
            return self._backlog_batch(batch)

    def _backlog_batch(self, batch: int) -> list[OutMessage]:
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
        now = self._clock()
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
        rows = [r for r in rows if r.id not in self._inflight_rows]  # a rescan meets rows still in flight
        self._inflight_rows.update(r.id for r in rows)
        for r in rows:
            groups.setdefault((r.kind, r.leaf), []).append(r)
        now_ms = int(time.time() * 1000)
        out = []
        for (kind, leaf), group in groups.items():
            if kind == "evt":
                topic = topics.events(self.site, self.device_id, leaf)
            else:
                topic = topics.telemetry(self.site, self.device_id, leaf)
            seq = self.outbox.next_seq()
            head = json.dumps(
                {"v": 1, "device_id": self.device_id, "boot_id": self.boot_id, "seq": seq, "sent_at": now_ms},
                separators=(",", ":"),
            )
            payload = f'{head[:-1]},"{_ITEMS_KEY[kind]}":[{",".join(r.body for r in group)}]}}'
            out.append(OutMessage(topic, payload.encode(), tuple(r.id for r in group), seq))
        return out

    def acked(self, message: OutMessage) -> None:
        """The broker's PUBACK: the rows are at the broker (or, forgetting on PUBACK, done with)."""
        with self._lock:
            self._inflight_rows.difference_update(message.row_ids)
            latest = self._latest.get(self.boot_id)
            if self.forget_on == "puback" or (latest is not None and latest.covers(message.seq)):
                self.outbox.ack(message.row_ids)  # the watermark came first
            else:
                self.outbox.at_broker(message.row_ids, self.boot_id, message.seq, self._link)
                self._acked_top = max(self._acked_top, message.seq)

    def rejected(self, message: OutMessage, reason: str) -> None:
        """The broker refused the message (negative PUBACK): retrying cannot help, so drop it."""
        log.error("broker refused %d rows (%s); dropping them", len(message.row_ids), reason)
        with self._lock:
            self._inflight_rows.difference_update(message.row_ids)
            self.outbox.ack(message.row_ids)

    def watermark(self, payload: bytes) -> int:
        """Ingest's watermark arrived: forget the rows the database has. Returns the rows removed; a
        payload that is not a valid watermark for this device is logged and ignored."""
        try:
            wm = Watermark.model_validate_json(payload)
        except ValidationError as e:
            log.warning("ignoring an invalid watermark: %s", e.errors()[:1])
            return 0
        if wm.device_id != self.device_id:
            log.warning("ignoring a watermark for %r", wm.device_id)
            return 0
        removed = 0
        with self._lock:
            for ack in wm.boots:
                n, earlier = self.outbox.confirm(ack.boot_id, ack.ranges, self._link)
                removed += n
                if earlier:
                    self._earlier_progress = self._clock()
                self._latest[ack.boot_id] = ack
                if ack.boot_id == self.boot_id:
                    self._tops.append((self._clock(), ack.seq))
                    if ack.seq > self._top:
                        self._top, self._progress, self._probe_wait = ack.seq, self._clock(), self.resend_after_s
        return removed

    def tick(self) -> None:
        """Once a second at most: send again rows at the broker that no watermark covered in time."""
        now = self._clock()
        if self.forget_on != "watermark" or now < self._next_tick:
            return
        self._next_tick = now + 1.0
        with self._lock:
            while self._tops and now - self._tops[0][0] >= self.resend_after_s:
                self._top_then = max(self._top_then, self._tops.popleft()[1])
            self._acks.append((now, self._acked_top))
            while self._acks and now - self._acks[0][0] >= self.resend_after_s:
                self._acked_then = max(self._acked_then, self._acks.popleft()[1])
            holes = self.outbox.resend(boot=self.boot_id, below_seq=self._top_then) if self._top_then >= 0 else 0
            lost = 0
            if now - max(self._linked_at, self._earlier_progress) >= self.resend_after_s:
                lost = self.outbox.resend(before_link=self._link)
                self._earlier_progress = now
            probe = self._probe_tail(now)
            if holes or lost or probe:
                self.resent += holes + lost + probe
                log.warning("no watermark covered %d rows the broker had acknowledged (%d before the last "
                            "reconnect, %d probing the tail); sending them again", holes + lost + probe, lost, probe)
                self._rescan_backlog()

    def _probe_tail(self, now: float) -> int:
        """The newest message above every covered seq, acknowledged resend_after_s ago, goes again when no
        watermark made progress for the current wait; returns its rows made due."""
        if self._acked_then <= self._top or now - max(self._progress, self._probed) < self._probe_wait:
            return 0
        rows = self.outbox.resend_newest(boot=self.boot_id, above_seq=self._top, through_seq=self._acked_then)
        if rows:
            self._probed = now
            self._probe_wait = min(self._probe_wait * 2, self.resend_max_s)
        return rows

    def _rescan_backlog(self) -> None:
        """The backlog pass again over every row before the live cursor (rows due again are among them)."""
        self._backlog_mark = self._live_cursor
        self._backlog_cursor = 0 if self.drain.order == "oldest" else self._live_cursor + 1
        self._backlog_done = False

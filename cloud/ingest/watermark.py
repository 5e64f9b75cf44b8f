"""Ingest's side of the end-to-end acknowledgement (`contract.watermark`): after a commit, remember which
(boot_id, seq) of each device are now in the database; publish them per device, coalesced, at most once
per `min_interval_s`, and at most `max_rate` watermark messages a second in all.

The total bound is what keeps a large fleet cheap: 10,000 devices sending 1.5 messages a second each
would otherwise make nearly every message a retained publish of its own (as many publishes as messages,
the broker's work doubled). Devices waiting for a watermark queue oldest first, so with more of them
than the rate allows in `min_interval_s`, each device's interval stretches to (waiting devices /
max_rate) seconds: every device still gets one in bounded time, which must stay well under the edge's
`resend_after_s` (15 s by default); `oldest_wait_s` says how far behind the queue is.

Called from the writer threads after their commit (`committed`, with the (boot_id, seq) the decoder read;
`envelope_key` recovers them from a payload the decoder refused) and from one publisher thread (`due`).
Only what this process committed is ever published, so processes sharing a subscription never claim each
other's messages. State is per device and bounded: `MAX_BOOTS` boots, `MAX_RANGES` ranges each.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from contract import topics
from contract.messages import now_ms
from contract.watermark import MAX_BOOTS, MAX_RANGES, BootAck, Watermark

log = logging.getLogger(__name__)

_BOOT = re.compile(rb'"boot_id"\s*:\s*"([^"\\]{1,64})"')
_SEQ = re.compile(rb'"seq"\s*:\s*(\d{1,19})\s*[,}]')


def envelope_key(payload: bytes) -> tuple[str, int] | None:
    """(boot_id, seq) of an envelope. The hot path reads them with two regular expressions, which is only
    right when each key occurs once; otherwise (a nested "seq" in event details, say) the JSON is parsed
    and the top-level keys are taken. None when the message has no usable envelope."""
    boots, seqs = _BOOT.findall(payload), _SEQ.findall(payload)
    if len(boots) == 1 and len(seqs) == 1:
        try:
            return boots[0].decode(), int(seqs[0])
        except UnicodeDecodeError:  # a payload that is not UTF-8 (found by tests/cloud/test_hostile_fuzz.py)
            return None
    if not boots or not seqs:
        return None
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    boot, seq = raw.get("boot_id"), raw.get("seq")
    if isinstance(boot, str) and 0 < len(boot) <= 64 and type(seq) is int and seq >= 0:
        return boot, seq
    return None


def add_range(ranges: list[list[int]], lo: int, hi: int, bound: int | None = MAX_RANGES) -> None:
    """Insert [lo, hi] into ascending, disjoint, inclusive ranges, merging what it touches; keep the newest
    `bound`. Commits arrive mostly in order, so the search starts from the end, and the usual case, the newest
    range growing, touches nothing else."""
    if ranges and ranges[-1][0] <= lo <= ranges[-1][1] + 1:
        ranges[-1][1] = max(ranges[-1][1], hi)
        return
    i = len(ranges)
    while i > 0 and ranges[i - 1][0] > hi + 1:
        i -= 1
    j = i  # ranges[j:i] overlap or adjoin [lo, hi]: ends ascend, so they are the tail of ranges[:i]
    while j > 0 and ranges[j - 1][1] >= lo - 1:
        j -= 1
    if j < i:
        lo, hi = min(lo, ranges[j][0]), max(hi, ranges[i - 1][1])
    ranges[j:i] = [[lo, hi]]
    if bound is not None and len(ranges) > bound:
        del ranges[: len(ranges) - bound]


def add_seq(ranges: list[list[int]], seq: int, bound: int | None = MAX_RANGES) -> None:
    add_range(ranges, seq, seq, bound)


def runs(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted seqs (duplicates allowed) -> inclusive runs of consecutive numbers."""
    out: list[tuple[int, int]] = []
    lo = prev = seqs[0]
    for seq in seqs[1:]:
        if seq > prev + 1:
            out.append((lo, prev))
            lo = seq
        prev = max(prev, seq)
    out.append((lo, prev))
    return out


@dataclass
class _Boot:
    history: list[list[int]] = field(default_factory=list)  # committed, the newest MAX_RANGES ranges
    fresh: list[list[int]] = field(default_factory=list)  # committed since the last publish, unbounded

    def fell_out(self) -> list[list[int]]:
        """The fresh ranges older than the bounded history: they need messages of their own."""
        return [r for r in self.fresh if r[1] < self.history[0][0]] if self.history else []


@dataclass
class _Device:
    boots: dict[str, _Boot] = field(default_factory=dict)  # insertion order = least recent first
    published: float = float("-inf")

    def message_count(self) -> int:
        """How many messages messages() would return now (without changing anything)."""
        return 1 + sum(-(-len(b.fell_out()) // MAX_RANGES) for b in self.boots.values())

    def messages(self) -> list[list[BootAck]]:
        """The watermarks to publish now: the full state last (that one stays retained), before it, in
        chunks, whatever was committed since the last publish but fell out of the bounded history (one
        device's messages alternating between processes of a share group make one range each)."""
        out: list[list[BootAck]] = []
        for boot, b in self.boots.items():
            older = b.fell_out()
            for i in range(0, len(older), MAX_RANGES):
                chunk = older[i : i + MAX_RANGES]
                out.append([BootAck(boot_id=boot, seq=chunk[-1][1], ranges=[(lo, hi) for lo, hi in chunk])])
            b.fresh = []
        out.append([BootAck(boot_id=boot, seq=b.history[-1][1], ranges=[(lo, hi) for lo, hi in b.history])
                    for boot, b in reversed(self.boots.items()) if b.history])
        return out


BURST_S = 1.0  # a quiet spell (or a late tick on a busy host) saves up at most this many seconds of max_rate


class WatermarkTracker:
    def __init__(self, instance: str, min_interval_s: float = 1.0, max_rate: float = 2000.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._instance = instance
        self._interval = min_interval_s
        self._rate = max_rate
        self._burst = max(1.0, max_rate * BURST_S)
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        # Devices with commits not yet published -> since when; insertion order = oldest first.
        self._waiting: dict[str, float] = {}
        self._allowance = self._burst  # watermark messages that may go out now (a token bucket)
        self._refilled = clock()
        self.published = 0  # watermark messages handed out by due(), for the benchmarks
        self.max_wait_s = 0.0  # the longest a device waited from its commit to its watermark

    def committed(self, keys: Iterable[tuple[str, tuple[str, int]]]) -> None:
        """(device_id, (boot_id, seq)) of messages whose rows (or dead letter) are now committed. A batch
        holds runs of consecutive seqs per device: each run is merged once, not seq by seq."""
        seqs: dict[tuple[str, str], list[int]] = {}
        for dev, (boot, seq) in keys:
            seqs.setdefault((dev, boot), []).append(seq)
        now = self._clock()
        with self._lock:
            for (dev, boot), numbers in seqs.items():
                d = self._devices.get(dev)
                if d is None:
                    d = self._devices[dev] = _Device()
                b = d.boots.get(boot)
                if b is None:
                    b = d.boots[boot] = _Boot()
                    while len(d.boots) > MAX_BOOTS:
                        del d.boots[next(iter(d.boots))]
                elif next(reversed(d.boots)) != boot:
                    d.boots[boot] = d.boots.pop(boot)  # most recently used last
                numbers.sort()
                for lo, hi in runs(numbers):
                    add_range(b.history, lo, hi)
                    add_range(b.fresh, lo, hi, bound=None)
                self._waiting.setdefault(dev, now)

    def oldest_wait_s(self) -> float:
        """How long the device waiting longest for its watermark has waited (0 when none waits)."""
        with self._lock:
            since = next(iter(self._waiting.values()), None)
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def due(self, force: bool = False, room: int | None = None) -> list[tuple[str, bytes]]:
        """(topic, payload) for the devices with new commits whose last watermark is old enough, oldest
        waiting first, as many as the rate bound allows now and at most `room` (what the broker connection
        can take unacknowledged; a device's messages are not split, so one device alone may exceed it); with
        force, every one however recent, the rate aside, still within `room`. A device left out keeps its
        place and is coalesced with its next commits."""
        now = self._clock()
        out: list[tuple[str, list[BootAck]]] = []
        with self._lock:
            self._allowance = min(self._burst, self._allowance + (now - self._refilled) * self._rate)
            self._refilled = now
            done: list[str] = []
            for dev, since in self._waiting.items():
                if not force and self._allowance < 1:
                    break
                d = self._devices[dev]
                if not force and now - d.published < self._interval:
                    continue  # published a moment ago: it keeps its place in the queue
                if room is not None and (len(out) >= room or (out and len(out) + d.message_count() > room)):
                    break
                d.published = now
                done.append(dev)
                self.max_wait_s = max(self.max_wait_s, now - since)
                parts = d.messages()
                if not force:
                    self._allowance -= len(parts)
                out.extend((dev, boots) for boots in parts)
            for dev in done:
                del self._waiting[dev]
        stamp = now_ms()
        messages = []
        for dev, boots in out:
            try:  # a dead-lettered message may name a device the contract cannot address (id too long, ...)
                wm = Watermark(device_id=dev, ts=stamp, instance=self._instance, boots=boots)
                messages.append((topics.watermark(dev), wm.model_dump_json(exclude_none=True).encode()))
            except ValueError as e:  # that device alone gets none; every other one still does
                log.debug("no watermark for %r: %s", dev[:80], e)
        self.published += len(messages)
        return messages

"""Ingest's side of the end-to-end acknowledgement (`contract.watermark`): after a commit, remember which
(boot_id, seq) of each device are now in the database; publish them per device, coalesced, at most once
per `min_interval_s`.

Called from the writer threads after their commit (`committed`) and from one publisher thread (`due`).
Only what this process committed is ever published, so processes sharing a subscription never claim each
other's messages. State is per device and bounded: `MAX_BOOTS` boots, `MAX_RANGES` ranges each.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from contract import topics
from contract.messages import now_ms
from contract.watermark import MAX_BOOTS, MAX_RANGES, BootAck, Watermark

_BOOT = re.compile(rb'"boot_id"\s*:\s*"([^"\\]{1,64})"')
_SEQ = re.compile(rb'"seq"\s*:\s*(\d{1,19})\s*[,}]')


def envelope_key(payload: bytes) -> tuple[str, int] | None:
    """(boot_id, seq) of an envelope. The hot path reads them with two regular expressions, which is only
    right when each key occurs once; otherwise (a nested "seq" in event details, say) the JSON is parsed
    and the top-level keys are taken. None when the message has no usable envelope."""
    boots, seqs = _BOOT.findall(payload), _SEQ.findall(payload)
    if len(boots) == 1 and len(seqs) == 1:
        return boots[0].decode(), int(seqs[0])
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


def add_seq(ranges: list[list[int]], seq: int, bound: int | None = MAX_RANGES) -> None:
    """Insert seq into ascending, disjoint, inclusive ranges, merging neighbours; keep the newest `bound`."""
    i = len(ranges)
    while i > 0 and ranges[i - 1][0] > seq:  # commits arrive mostly in order: search from the end
        i -= 1
    if i > 0 and ranges[i - 1][1] >= seq:
        return  # already there (a resend)
    joins_prev = i > 0 and ranges[i - 1][1] == seq - 1
    joins_next = i < len(ranges) and ranges[i][0] == seq + 1
    if joins_prev and joins_next:
        ranges[i - 1][1] = ranges[i][1]
        del ranges[i]
    elif joins_prev:
        ranges[i - 1][1] = seq
    elif joins_next:
        ranges[i][0] = seq
    else:
        ranges.insert(i, [seq, seq])
    if bound is not None and len(ranges) > bound:
        del ranges[: len(ranges) - bound]


@dataclass
class _Boot:
    history: list[list[int]] = field(default_factory=list)  # committed, the newest MAX_RANGES ranges
    fresh: list[list[int]] = field(default_factory=list)  # committed since the last publish, unbounded


@dataclass
class _Device:
    boots: dict[str, _Boot] = field(default_factory=dict)  # insertion order = least recent first
    dirty: bool = False
    published: float = float("-inf")

    def messages(self) -> list[list[BootAck]]:
        """The watermarks to publish now: the full state last (that one stays retained), before it, in
        chunks, whatever was committed since the last publish but fell out of the bounded history (one
        device's messages alternating between processes of a share group make one range each)."""
        out: list[list[BootAck]] = []
        for boot, b in self.boots.items():
            if b.history:
                older = [r for r in b.fresh if r[1] < b.history[0][0]]
                for i in range(0, len(older), MAX_RANGES):
                    chunk = older[i : i + MAX_RANGES]
                    out.append([BootAck(boot_id=boot, seq=chunk[-1][1], ranges=[(lo, hi) for lo, hi in chunk])])
            b.fresh = []
        out.append([BootAck(boot_id=boot, seq=b.history[-1][1], ranges=[(lo, hi) for lo, hi in b.history])
                    for boot, b in reversed(self.boots.items()) if b.history])
        return out


class WatermarkTracker:
    def __init__(self, instance: str, min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._instance = instance
        self._interval = min_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}

    def committed(self, messages: Iterable[tuple[str, bytes]]) -> None:
        """(device_id, payload) of messages whose rows (or dead letter) are now committed."""
        keys = [(dev, key) for dev, payload in messages if (key := envelope_key(payload)) is not None]
        with self._lock:
            for dev, (boot, seq) in keys:
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
                add_seq(b.history, seq)
                add_seq(b.fresh, seq, bound=None)
                d.dirty = True

    def due(self, force: bool = False) -> list[tuple[str, bytes]]:
        """(topic, payload) for every device with new commits whose last watermark is old enough (or, with
        force, however recent)."""
        now = self._clock()
        out: list[tuple[str, list[BootAck]]] = []
        with self._lock:
            for dev, d in self._devices.items():
                if d.dirty and (force or now - d.published >= self._interval):
                    d.dirty, d.published = False, now
                    out.extend((dev, boots) for boots in d.messages())
        stamp = now_ms()
        return [(topics.watermark(dev), Watermark(device_id=dev, ts=stamp, instance=self._instance, boots=boots)
                 .model_dump_json(exclude_none=True).encode()) for dev, boots in out]

"""A budget for what dead letters may store, so junk cannot turn the table into a free disk.

Every rejected message is still recorded (topic, device, reason, size), but only the first
`per_device_per_minute` of a device, the first `per_topic_per_minute` of a topic, and the first
`total_per_minute` overall (a flood under made-up device ids has a new device and topic every time)
keep their payload (up to `keep_bytes`) each minute; beyond that the payload is cut to
`truncated_bytes` and the reason says so, with the count. Retention of the table is
upkeep's (cloud/db/maintenance.py, setting `dead_letter_retention_days`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cloud.ingest.decode import DeadLetter

DEAD_PAYLOAD_KEEP = 64 * 1024  # the most of one rejected payload ever stored
TRUNCATED_KEEP = 256  # what is kept of a payload beyond the rate limit: enough to recognise it


class DeadLetterLimiter:
    """Not thread-safe: one per decoder thread."""

    def __init__(self, per_device_per_minute: int = 60, per_topic_per_minute: int = 60,
                 total_per_minute: int = 1000, keep_bytes: int = DEAD_PAYLOAD_KEEP,
                 truncated_bytes: int = TRUNCATED_KEEP) -> None:
        self._per_device = per_device_per_minute
        self._per_topic = per_topic_per_minute
        self._total_limit = total_per_minute
        self._total = 0
        self._keep = keep_bytes
        self._truncated = truncated_bytes
        self._minute = -1
        self._by_device: dict[str, int] = {}
        self._by_topic: dict[str, int] = {}

    def bound(self, dead: DeadLetter, now_ms: int) -> DeadLetter:
        """The dead letter as it may be stored: payload cut to the budget, size of the original kept."""
        minute = now_ms // 60_000
        if minute != self._minute:  # fixed one-minute windows: both maps stay as small as one minute's junk
            self._minute = minute
            self._by_device.clear()
            self._by_topic.clear()
            self._total = 0
        size = len(dead.payload) if dead.size < 0 else dead.size
        keep, reason = self._keep, dead.reason
        over = []
        if dead.device_id is not None:
            n = self._by_device[dead.device_id] = self._by_device.get(dead.device_id, 0) + 1
            if n > self._per_device:
                over.append(f"dead letter {n} this minute from device {dead.device_id!r} (limit {self._per_device})")
        n = self._by_topic[dead.topic] = self._by_topic.get(dead.topic, 0) + 1
        if n > self._per_topic:
            over.append(f"dead letter {n} this minute on this topic (limit {self._per_topic})")
        self._total += 1
        if self._total > self._total_limit:
            over.append(f"dead letter {self._total} this minute in all (limit {self._total_limit})")
        if over:
            keep = self._truncated
            if size > keep:
                reason = f"{reason} [payload truncated to {keep} of {size} bytes: {'; '.join(over)}]"
        if len(dead.payload) <= keep and dead.size == size:
            return dead
        return dataclasses.replace(dead, payload=dead.payload[:keep], reason=reason, size=size)

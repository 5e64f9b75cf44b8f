"""Drive a fleet: real-time pacing for the demo, or a fixed burst of history for tests.

Bad payloads and duplicates are mixed in at configurable ratios; the publisher's SentLog records what
the broker acknowledged, including which messages should land in dead letters.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable

from contract.messages import now_ms
from simulators.bad_payloads import BAD_KINDS, make_bad
from simulators.fleet import Fleet
from simulators.publisher import FleetPublisher


class SimRunner:
    def __init__(self, fleet: Fleet, publisher: FleetPublisher, bad_ratio: float = 0.0, dup_ratio: float = 0.0,
                 seed: int = 7) -> None:
        self.fleet = fleet
        self.publisher = publisher
        self.bad_ratio = bad_ratio
        self.dup_ratio = dup_ratio
        self._rng = random.Random(seed)
        self.bad_sent: dict[str, int] = dict.fromkeys(BAD_KINDS, 0)
        self.duplicates_sent = 0

    def emit(self, device_index: int, ts_ms: int) -> None:
        dev = self.fleet.devices[device_index]
        for good in self.fleet.messages(dev, ts_ms):
            msg = good
            if not dev.is_camera and self.bad_ratio and self._rng.random() < self.bad_ratio:
                kind = self._rng.choice(BAD_KINDS)
                self.bad_sent[kind] += 1
                msg = make_bad(kind, good, dev, self._rng)
            self.publisher.publish(msg, via=dev.device_id)
            if self.dup_ratio and self._rng.random() < self.dup_ratio:
                self.duplicates_sent += 1
                self.publisher.publish(msg, via=dev.device_id)

    def burst(self, start_ms: int, rounds: int) -> None:
        """`rounds` messages per device at interval spacing from start_ms, sent as fast as the window allows."""
        step = int(self.fleet.spec.interval_s * 1000)
        for r in range(rounds):
            for i in range(len(self.fleet.devices)):
                self.emit(i, start_ms + r * step)

    def run(self, stop: threading.Event, duration_s: float | None = None,
            on_second: Callable[[], None] | None = None) -> None:
        """Each device sends every interval_s, phases spread so the load is even."""
        interval = self.fleet.spec.interval_s
        t0 = time.monotonic()
        due = [(t0 + interval * self._rng.random(), i) for i in range(len(self.fleet.devices))]
        heapq.heapify(due)
        next_report = t0 + 1
        while not stop.is_set() and (duration_s is None or time.monotonic() - t0 < duration_s):
            now = time.monotonic()
            while due and due[0][0] <= now:
                t, i = heapq.heappop(due)
                self.emit(i, now_ms())
                heapq.heappush(due, (t + interval, i))
            if on_second and now >= next_report:
                on_second()
                next_report += 1
            wait = min(due[0][0] if due else now + 0.1, next_report) - time.monotonic()
            if wait > 0:
                stop.wait(wait)

"""Counters and latency figures of one ingest process, reported to the log and to ingest_instances."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Snapshot:
    messages: int
    points: int
    dead_letters: int
    msg_rate: float
    point_rate: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    lag_ms: float | None
    in_flight: int
    db_ok: bool
    last_error: str | None


@dataclass
class IngestStats:
    messages: int = 0
    points: int = 0
    dead_letters: int = 0
    db_ok: bool = True
    last_error: str | None = None
    _latencies: list[float] = field(default_factory=list)
    _lags: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _last: tuple[float, int, int] = field(default_factory=lambda: (time.monotonic(), 0, 0))

    def committed(self, messages: int, points: int, dead: int, latencies: Sequence[float],
                  lags: Sequence[float]) -> None:
        with self._lock:
            self.messages += messages
            self.points += points
            self.dead_letters += dead
            self._latencies.extend(latencies)
            self._lags.extend(lags)
            self.db_ok = True

    def failed(self, error: str) -> None:
        with self._lock:
            self.db_ok = False
            self.last_error = error

    def snapshot(self, in_flight: int) -> Snapshot:
        """Rates and percentiles since the previous snapshot."""
        with self._lock:
            lat, self._latencies = self._latencies, []
            lags, self._lags = self._lags, []
            now = time.monotonic()
            t0, m0, p0 = self._last
            self._last = (now, self.messages, self.points)
            dt = max(now - t0, 1e-9)
            return Snapshot(
                messages=self.messages, points=self.points, dead_letters=self.dead_letters,
                msg_rate=(self.messages - m0) / dt, point_rate=(self.points - p0) / dt,
                latency_p50_ms=float(np.percentile(lat, 50)) if lat else None,
                latency_p99_ms=float(np.percentile(lat, 99)) if lat else None,
                lag_ms=float(np.median(lags)) if lags else None,
                in_flight=in_flight, db_ok=self.db_ok, last_error=self.last_error,
            )

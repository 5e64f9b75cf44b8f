"""Sampling: per-metric intervals, windowed aggregation and local threshold checks.

Each metric reports once per `interval_s` (aligned to the wall-clock grid, so the sample time stamps
of a restarted agent land on the same grid and stay unique). Within an interval it is read
`reads_per_interval` times; the window keeps mean/min/max/last and publishes the statistic chosen
by `aggregate`, stamped with the window start. Every single reading is checked at once -- against
the profile range (a sensor fault, reported as an `out_of_range` event and discarded) and against
the configured `high`/`low` thresholds (a `threshold` event on crossing, `threshold_clear` on return,
with a small hysteresis so a value hovering at the limit does not flood the event stream).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from contract.messages import Event, MetricSample
from contract.profiles import DeviceProfile, MetricSpec
from edge.config import MetricSettings, Settings
from edge.sensors.base import SensorDriver, SensorError
from edge.source import Sink, Source

log = logging.getLogger(__name__)

HYSTERESIS = 0.02  # of the profile range


@dataclass
class _Window:
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    last: float = 0.0

    def add(self, v: float) -> None:
        self.n += 1
        self.total += v
        self.lo, self.hi, self.last = min(self.lo, v), max(self.hi, v), v

    def value(self, aggregate: str) -> float:
        return {"mean": self.total / max(self.n, 1), "min": self.lo, "max": self.hi, "last": self.last}[
            aggregate
        ]


class ThresholdChecker:
    """Edge-triggered high/low checks with hysteresis; returns events to raise now."""

    def __init__(self) -> None:
        self._state: dict[str, str] = {}

    def check(self, name: str, value: float, ms: MetricSettings, spec: MetricSpec, ts: int) -> list[Event]:
        band = (spec.max - spec.min) * HYSTERESIS
        state = self._state.get(name, "normal")
        new = state
        if ms.high is not None and value > ms.high:
            new = "high"
        elif ms.low is not None and value < ms.low:
            new = "low"
        elif state == "high":
            new = "normal" if ms.high is None or value < ms.high - band else state
        elif state == "low":
            new = "normal" if ms.low is None or value > ms.low + band else state
        if new == state:
            return []
        self._state[name] = new
        limit = ms.high if (new == "high" or state == "high") else ms.low
        details = {
            "metric": name,
            "value": value,
            "limit": limit,
            "unit": spec.unit,
            "direction": new if new != "normal" else state,
        }
        if new == "normal":
            return [Event(ts=ts, kind="threshold_clear", severity="info", details=details)]
        return [Event(ts=ts, kind="threshold", severity=ms.severity, details=details)]

    def reset(self, name: str) -> None:
        self._state.pop(name, None)


@dataclass
class _Metric:
    name: str
    spec: MetricSpec
    settings: MetricSettings
    driver: SensorDriver
    interval_ms: int
    period_ms: int
    next_ms: int = 0
    window_start: int = -1
    window: _Window | None = None
    out_of_range: bool = False


def _next_grid(now_ms: int, period_ms: int) -> int:
    return (now_ms // period_ms + 1) * period_ms


class Sampler(Source):
    """Reads the sensor drivers on schedule and feeds the sink. Runs in its own thread."""

    name = "sampler"

    def __init__(self, profile: DeviceProfile, drivers: list[SensorDriver], settings: Settings) -> None:
        self.profile = profile
        self.drivers = drivers
        self.thresholds = ThresholdChecker()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush = False
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._metrics: dict[str, _Metric] = {}
        self._faulty: set[str] = set()
        self.reads = 0
        self.apply(settings)

    @property
    def metric_names(self) -> frozenset[str]:
        return frozenset(m for d in self.drivers for m in d.metrics)

    def apply(self, settings: Settings) -> None:
        """Take new settings live: changed metrics restart their window on the new grid."""
        with self._lock:
            old = self._metrics
            self._metrics = {}
            for driver in self.drivers:
                for name in sorted(driver.metrics):
                    ms = settings.metrics.get(name, MetricSettings())
                    if not ms.enabled:
                        continue
                    spec = self.profile.metrics[name]
                    interval_ms = round((ms.interval_s or spec.interval_s) * 1000)
                    m = _Metric(
                        name, spec, ms, driver, interval_ms, max(1, interval_ms // ms.reads_per_interval)
                    )
                    prev = old.get(name)
                    if prev is not None and (prev.interval_ms, prev.period_ms) == (
                        m.interval_ms,
                        m.period_ms,
                    ):
                        m.next_ms, m.window_start, m.window = prev.next_ms, prev.window_start, prev.window
                    if prev is not None and prev.settings != ms:
                        self.thresholds.reset(name)
                    self._metrics[name] = m
        self._wake.set()

    def intervals(self) -> dict[str, float]:
        with self._lock:
            return {n: m.interval_ms / 1000 for n, m in self._metrics.items()}

    # -- Source ------------------------------------------------------------------------------------

    def start(self, sink: Sink) -> None:
        self._sink = sink
        for d in self.drivers:
            try:
                d.open()
            except SensorError as exc:
                log.warning("sensor open failed, retrying on read: %s", exc)
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        for d in self.drivers:
            d.close()

    def flush(self) -> None:
        self._flush = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = int(time.time() * 1000)
            try:
                if self._flush:
                    self._flush = False
                    self.emit_partial()
                due = self.tick(now)
            except Exception:
                # e.g. the outbox disk is full: keep the schedule alive, retry on the next tick
                log.exception("sampling step failed")
                due = now + 1000
            self._wake.wait(max(0.0, (due - int(time.time() * 1000)) / 1000))
            self._wake.clear()

    # -- one scheduling step (pure enough to test without threads) -------------------------------

    def tick(self, now_ms: int) -> int:
        """Read every metric due at `now_ms`; returns when the next one is due."""
        assert self._sink is not None, "start() or attach a sink first"
        with self._lock:
            due = [m for m in self._metrics.values() if m.next_ms <= now_ms]
            for m in due:
                if m.next_ms == 0:  # first scheduling: wait for the grid
                    m.next_ms = _next_grid(now_ms, m.period_ms)
            ready = [m for m in due if m.next_ms <= now_ms]
            by_driver: dict[int, list[_Metric]] = defaultdict(list)
            for m in ready:
                by_driver[id(m.driver)].append(m)
            samples: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
            events: list[Event] = []
            for group in by_driver.values():
                self._read_group(group, samples, events)
            for m in ready:
                m.next_ms = _next_grid(now_ms, m.period_ms)
            next_due = min((m.next_ms for m in self._metrics.values()), default=now_ms + 1000)
        self._emit(samples, events)
        return next_due

    def attach(self, sink: Sink) -> None:
        """Use a sink without starting the thread (tests, benchmarks)."""
        self._sink = sink

    def _read_group(
        self, group: list[_Metric], samples: dict[tuple[str, int], dict[str, float]], events: list[Event]
    ) -> None:
        driver = group[0].driver
        # Readings are stamped with their scheduled grid time, not the (jittery) read time.
        t = group[0].next_ms
        try:
            values = driver.read([m.name for m in group], t)
        except SensorError as exc:
            if driver.name not in self._faulty:
                self._faulty.add(driver.name)
                log.warning("sensor read failed: %s", exc)
                events.append(
                    Event(
                        ts=t,
                        kind="sensor_fault",
                        severity="warning",
                        details={"driver": driver.name, "error": str(exc)[:200]},
                    )
                )
            values = {}
        else:
            if driver.name in self._faulty:
                self._faulty.discard(driver.name)
                events.append(Event(ts=t, kind="sensor_recovered", details={"driver": driver.name}))
        self.reads += len(values)
        for m in group:
            t = m.next_ms
            v = values.get(m.name)
            if v is not None:
                reason = m.spec.check(m.name, v)
                if reason:
                    if not m.out_of_range:
                        events.append(
                            Event(
                                ts=t,
                                kind="out_of_range",
                                severity="warning",
                                details={
                                    "metric": m.name,
                                    "value": v if math.isfinite(v) else None,
                                    "reason": reason,
                                },
                            )
                        )
                    m.out_of_range = True
                    v = None
                else:
                    m.out_of_range = False
                    events.extend(self.thresholds.check(m.name, v, m.settings, m.spec, t))
            start = t // m.interval_ms * m.interval_ms
            if start != m.window_start:
                self._close_window(m, samples)  # a stalled loop skipped its last read: still report it
                m.window_start, m.window = start, _Window()
            if v is not None and m.window is not None:
                m.window.add(v)
            if t + m.period_ms >= start + m.interval_ms:  # last read of this window
                self._close_window(m, samples)

    def _close_window(self, m: _Metric, samples: dict[tuple[str, int], dict[str, float]]) -> None:
        if m.window is not None and m.window.n:
            samples[(m.spec.stream, m.window_start)][m.name] = round(m.window.value(m.settings.aggregate), 6)
        m.window = None

    def emit_partial(self) -> None:
        """Publish every open window now (flush command)."""
        samples: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)
        with self._lock:
            for m in self._metrics.values():
                self._close_window(m, samples)
        self._emit(samples, [])

    def _emit(self, samples: Mapping[tuple[str, int], dict[str, float]], events: list[Event]) -> None:
        assert self._sink is not None
        if events:
            self._sink.events(events)
        by_stream: dict[str, list[MetricSample]] = defaultdict(list)
        for (stream, ts), values in sorted(samples.items()):
            by_stream[stream].append(MetricSample(ts=ts, values=values))
        for stream, batch in by_stream.items():
            self._sink.metrics(stream, batch)

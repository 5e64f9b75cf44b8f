"""Per-interval aggregation into the wire contract's CountSample and MetricSample.

Intervals are aligned to multiples of their length in epoch time (a 60 s interval starts on the
minute), so counts from many boxes line up in the database. Every configured line x class x direction
gets a sample, zeros included: a zero says "watched, nothing passed", a gap says "camera down".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from contract.messages import CountSample, MetricSample
from edge.camera.congestion import congestion_level
from edge.camera.zones import ZoneReading

DIRECTIONS = ("in", "out")


@dataclass
class IntervalClock:
    """Tells when an aligned interval has ended; `start_ms` is the open interval's start."""

    interval_s: int
    start_ms: int | None = None

    def advance(self, now_ms: int) -> int | None:
        """The start of the interval that just closed, if `now_ms` left it."""
        length = self.interval_s * 1000
        if self.start_ms is None:
            self.start_ms = now_ms - now_ms % length
            return None
        if now_ms < self.start_ms + length:
            return None
        closed, self.start_ms = self.start_ms, now_ms - now_ms % length
        return closed


def count_samples(
    start_ms: int, interval_s: int, line: str, classes: Iterable[str], counts: Mapping[tuple[str, str], int]
) -> list[CountSample]:
    return [
        CountSample.model_validate(
            {
                "ts": start_ms,
                "interval_s": interval_s,
                "line": line,
                "class": cls,
                "direction": d,
                "count": counts.get((cls, d), 0),
            }
        )
        for cls in classes
        for d in DIRECTIONS
    ]


@dataclass
class SpeedTally:
    """Mean speed of the vehicles seen in an interval: each track weighs once, whatever its dwell."""

    per_track: dict[int, list[float]] = field(default_factory=dict)

    def add(self, speeds: dict[int, float]) -> None:
        for tid, kmh in speeds.items():
            acc = self.per_track.setdefault(tid, [0.0, 0.0])
            acc[0] += kmh
            acc[1] += 1

    def take(self) -> float | None:
        means = [s / n for s, n in self.per_track.values() if n]
        self.per_track = {}
        return sum(means) / len(means) if means else None


def traffic_sample(
    start_ms: int, readings: list[ZoneReading], speed_kmh: float | None, free_flow_kmh: float
) -> MetricSample | None:
    """speed_mean, occupancy, queue_length, congestion; the busiest zone speaks for the camera."""
    occ = [r.occupancy_pct for r in readings if r.occupancy_pct is not None]
    queues = [r.queue_m for r in readings if r.queue_m is not None]
    occupancy = max(occ) if occ else None
    values: dict[str, float] = {}
    if speed_kmh is not None:
        values["speed_mean"] = round(min(speed_kmh, 250.0), 2)
    if occupancy is not None:
        values["occupancy"] = round(occupancy, 2)
    if queues:
        values["queue_length"] = round(min(max(queues), 2000.0), 2)
    level = congestion_level(occupancy, speed_kmh, free_flow_kmh)
    if level is not None:
        values["congestion"] = float(level)
    return MetricSample(ts=start_ms, values=values) if values else None

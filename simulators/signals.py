"""Plausible city signals: daily cycles, rush hours, weather, noise, and occasional sensor faults."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

HOUR_MS = 3_600_000


def hour_of_day(ts_ms: int, utc_offset_h: float = 7.0) -> float:
    """Local hour (the default offset is a South-East-Asian province's)."""
    return ((ts_ms / HOUR_MS) + utc_offset_h) % 24.0


def traffic_intensity(hour: float) -> float:
    """0..1: two rush-hour peaks on top of a day/night baseline."""
    morning = math.exp(-((hour - 7.5) ** 2) / 1.5)
    evening = math.exp(-((hour - 17.5) ** 2) / 2.0)
    day = 0.35 * max(0.0, math.sin(math.pi * (hour - 5) / 17)) if 5 <= hour <= 22 else 0.03
    return min(1.0, day + 0.65 * morning + 0.7 * evening)


@dataclass
class EnvState:
    """Slow state of one station: weather and water carry over between samples."""

    rng: random.Random
    base_pm: float
    raining: bool = False
    water_level: float = 1.2

    def sample(self, ts_ms: int) -> dict[str, float]:
        h = hour_of_day(ts_ms)
        traffic = traffic_intensity(h)
        if self.rng.random() < (0.02 if not self.raining else 0.05):
            self.raining = not self.raining
        rain = self.rng.uniform(0.5, 25.0) if self.raining else 0.0
        self.water_level += 0.002 * rain - 0.0008 * (self.water_level - 1.2)
        temp = 27 + 5 * math.sin(2 * math.pi * (h - 9) / 24) - (2.0 if self.raining else 0.0)
        pm25 = max(0.0, self.base_pm * (0.6 + 0.9 * traffic) * (0.5 if self.raining else 1.0) + self.rng.gauss(0, 3))
        return {
            "pm25": round(pm25, 1),
            "pm10": round(pm25 * self.rng.uniform(1.4, 1.9), 1),
            "co2": round(415 + 180 * traffic + self.rng.gauss(0, 8), 1),
            "noise": round(min(120.0, 48 + 24 * traffic + self.rng.gauss(0, 2.5)), 1),
            "temperature": round(temp + self.rng.gauss(0, 0.3), 2),
            "humidity": round(min(100.0, max(20.0, 75 - 2.2 * (temp - 27) + (15 if self.raining else 0)
                                             + self.rng.gauss(0, 2))), 1),
            "rain": round(rain, 1),
            "water_level": round(self.water_level + self.rng.gauss(0, 0.005), 3),
        }


@dataclass
class SensorFaults:
    """What real stations do now and then: a stuck reading, a spike out of range, a dropout."""

    rng: random.Random
    rate: float = 0.002
    _stuck: dict[str, float] | None = None

    def apply(self, values: dict[str, float], ranges: dict[str, tuple[float, float]]) -> dict[str, float]:
        if self._stuck is not None:
            if self.rng.random() < 0.1:
                self._stuck = None
            else:
                return {**values, **self._stuck}
        if self.rng.random() >= self.rate:
            return values
        name = self.rng.choice(sorted(values))
        kind = self.rng.choice(["spike", "stuck", "dropout"])
        if kind == "spike":
            return {**values, name: ranges[name][1] * 10 + 1}  # out of range: ingest must reject it
        if kind == "stuck":
            self._stuck = {name: values[name]}
            return values
        return {k: v for k, v in values.items() if k != name}


def camera_interval(rng: random.Random, ts_ms: int, lines: list[str], classes: list[str],
                    interval_s: int) -> tuple[dict[tuple[str, str, str], int], dict[str, float]]:
    """Counts per (line, class, direction) for one interval, and the traffic metrics."""
    traffic = traffic_intensity(hour_of_day(ts_ms))
    share = {"car": 0.45, "motorbike": 0.35, "bus": 0.03, "truck": 0.05, "bicycle": 0.04, "person": 0.08}
    counts: dict[tuple[str, str, str], int] = {}
    per_minute = 40 * traffic * interval_s / 60
    for line in lines:
        for cls in classes:
            for direction, bias in (("in", 1.1), ("out", 0.9)):
                lam = per_minute * share.get(cls, 0.05) * bias
                counts[(line, cls, direction)] = max(0, round(rng.gauss(lam, math.sqrt(lam + 0.25))))
    occupancy = min(100.0, max(0.0, 85 * traffic ** 2 + rng.gauss(0, 3)))
    speed = max(3.0, 55 * (1 - 0.8 * occupancy / 100) + rng.gauss(0, 3))
    congestion = float(min(4, int(occupancy // 20)))
    metrics = {
        "speed_mean": round(speed, 1),
        "occupancy": round(occupancy, 1),
        "queue_length": round(max(0.0, (occupancy - 40) * 3 + rng.gauss(0, 4)), 1),
        "congestion": congestion,
    }
    return counts, metrics

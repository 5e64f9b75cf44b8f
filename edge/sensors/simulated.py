"""Simulated driver with signals that look like a street-side station, so dashboards and thresholds
can be exercised without hardware: a daily cycle, slow correlated drift (AR(1)) and rare spikes."""

from __future__ import annotations

import math
import random
from collections.abc import Collection

from contract.profiles import DeviceProfile
from edge.sensors.base import SensorDriver
from edge.sensors.config import SignalShape, SimulatedSensorConfig

# Shapes for the env-gateway metrics; peaks at rush hour (8:00) or mid-afternoon (15:00).
_RUSH = 8 * 3600.0
_AFTERNOON = 15 * 3600.0
DEFAULT_SHAPES: dict[str, SignalShape] = {
    "pm25": SignalShape(base=14, amplitude=6, noise=1.5, spike_prob=0.002, spike_size=60, phase_s=_RUSH),
    "pm10": SignalShape(base=25, amplitude=10, noise=2.5, spike_prob=0.002, spike_size=90, phase_s=_RUSH),
    "co2": SignalShape(base=450, amplitude=60, noise=8, phase_s=_RUSH),
    "noise": SignalShape(base=58, amplitude=9, noise=2.0, spike_prob=0.01, spike_size=25, phase_s=_RUSH),
    "temperature": SignalShape(base=14, amplitude=6, noise=0.2, phase_s=_AFTERNOON),
    "humidity": SignalShape(base=65, amplitude=-15, noise=1.0, phase_s=_AFTERNOON),
    "rain": SignalShape(base=0, noise=0.3, spike_prob=0.003, spike_size=12),
    "water_level": SignalShape(base=1.2, amplitude=0.15, noise=0.01, period_s=12.42 * 3600),
    "speed_mean": SignalShape(base=38, amplitude=-12, noise=3, phase_s=_RUSH),
    "occupancy": SignalShape(base=25, amplitude=20, noise=4, phase_s=_RUSH),
    "queue_length": SignalShape(base=20, amplitude=25, noise=5, phase_s=_RUSH),
    "congestion": SignalShape(base=1, amplitude=1, noise=0.3, phase_s=_RUSH),
}


def _generic_shape(lo: float, hi: float) -> SignalShape:
    span = hi - lo
    return SignalShape(base=lo + span * 0.3, amplitude=span * 0.1, noise=span * 0.01)


class _Signal:
    __slots__ = ("drift", "hi", "lo", "shape")

    def __init__(self, shape: SignalShape, lo: float, hi: float) -> None:
        self.shape, self.lo, self.hi, self.drift = shape, lo, hi, 0.0

    def value(self, t_s: float, rng: random.Random) -> float:
        s = self.shape
        # AR(1) drift: correlated from read to read, mean-reverting so it never wanders off.
        self.drift = 0.95 * self.drift + rng.gauss(0.0, s.noise) if s.noise else 0.0
        v = s.base + s.amplitude * math.cos(2 * math.pi * (t_s - s.phase_s) / s.period_s) + self.drift
        if s.spike_prob and rng.random() < s.spike_prob:
            v += s.spike_size * (0.5 + rng.random())
        return min(self.hi, max(self.lo, v))


class SimulatedDriver(SensorDriver):
    name = "simulated"

    def __init__(self, config: SimulatedSensorConfig, profile: DeviceProfile) -> None:
        self._rng = random.Random(config.seed)
        self._signals: dict[str, _Signal] = {}
        for metric in config.provided_metrics(profile):
            spec = profile.metrics[metric]
            shape = (
                config.signals.get(metric) or DEFAULT_SHAPES.get(metric) or _generic_shape(spec.min, spec.max)
            )
            self._signals[metric] = _Signal(shape, spec.min, spec.max)

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(self._signals)

    def read(self, metrics: Collection[str], now_ms: int) -> dict[str, float]:
        t = now_ms / 1000.0
        return {m: round(self._signals[m].value(t, self._rng), 4) for m in metrics if m in self._signals}

"""Sampling: grid-aligned intervals, window aggregation, thresholds with hysteresis, faults."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest

from contract.messages import CountSample, Event, MetricSample
from contract.profiles import get_profile
from edge.config import MetricSettings, Settings
from edge.sampling import Sampler
from edge.sensors.base import SensorDriver, SensorError
from edge.sensors.config import SimulatedSensorConfig
from edge.sensors.simulated import SimulatedDriver

PROFILE = get_profile("env-gateway")


class ScriptedDriver(SensorDriver):
    """Returns queued values per metric; raises while `broken`."""

    name = "scripted"

    def __init__(self, values: dict[str, list[float]]) -> None:
        self.values = values
        self.broken = False

    @property
    def metrics(self) -> frozenset[str]:
        return frozenset(self.values)

    def read(self, metrics: Collection[str], now_ms: int) -> dict[str, float]:
        if self.broken:
            raise SensorError(self.name, "timeout")
        return {m: self.values[m].pop(0) for m in metrics if self.values[m]}


class ListSink:
    def __init__(self) -> None:
        self.samples: list[tuple[str, MetricSample]] = []
        self.raised: list[Event] = []

    def metrics(self, stream: str, samples: Sequence[MetricSample]) -> None:
        self.samples.extend((stream, s) for s in samples)

    def counts(self, counts: Sequence[CountSample]) -> None:  # pragma: no cover - unused
        raise AssertionError

    def events(self, events: Sequence[Event]) -> None:
        self.raised.extend(events)


def _run(sampler: Sampler, start: int, end: int) -> None:
    """Drive tick() the way the thread does, without sleeping."""
    now = start
    while now < end:
        now = max(now + 1, sampler.tick(now))


def _sampler(
    values: dict[str, list[float]], **metrics: MetricSettings
) -> tuple[Sampler, ListSink, ScriptedDriver]:
    driver = ScriptedDriver(values)
    sampler = Sampler(PROFILE, [driver], Settings(metrics=metrics))
    sink = ListSink()
    sampler.attach(sink)  # type: ignore[arg-type]
    return sampler, sink, driver


@pytest.mark.parametrize(
    ("aggregate", "expected"), [("mean", 20.0), ("min", 10.0), ("max", 30.0), ("last", 30.0)]
)
def test_window_aggregates(aggregate: str, expected: float) -> None:
    sampler, sink, _ = _sampler(
        {"pm25": [10, 20, 30, 99]},
        pm25=MetricSettings(interval_s=3, reads_per_interval=3, aggregate=aggregate),
    )
    _run(sampler, 2_999, 6_000)  # reads at 3000, 4000, 5000: one window stamped with its start
    assert [(s.ts, s.values) for _, s in sink.samples] == [(3_000, {"pm25": expected})]


def test_intervals_follow_settings_and_change_live() -> None:
    sampler, sink, _ = _sampler(
        {"pm25": [1.0] * 100, "co2": [400.0] * 100},
        pm25=MetricSettings(interval_s=1),
        co2=MetricSettings(interval_s=5),
    )
    _run(sampler, 0, 10_000)
    pm = [s.ts for _, s in sink.samples if "pm25" in s.values]
    co2 = [s.ts for _, s in sink.samples if "co2" in s.values]
    assert pm == list(range(1_000, 10_000, 1_000))
    assert co2 == [5_000]
    sampler.apply(
        Settings(metrics={"pm25": MetricSettings(interval_s=2), "co2": MetricSettings(interval_s=5)})
    )
    sink.samples.clear()
    _run(sampler, 10_000, 16_000)
    # a changed metric restarts on its new grid: the first 2 s window after 10 s starts at 12 s
    assert [s.ts for _, s in sink.samples if "pm25" in s.values] == [12_000, 14_000]
    assert all(stream == "env" for stream, _ in sink.samples)


def test_threshold_raises_at_once_and_clears_with_hysteresis() -> None:
    values = [10, 60, 70, 45, 25, 25]
    sampler, sink, _ = _sampler({"pm25": list(values)}, pm25=MetricSettings(interval_s=1, high=50))
    _run(sampler, 0, 7_000)
    kinds = [(e.kind, e.ts) for e in sink.raised]
    # 60 crosses (event at that read); 70 stays high; 45 is inside the band (2 % of 0..1000); 25 clears.
    assert kinds == [("threshold", 2_000), ("threshold_clear", 5_000)]
    assert sink.raised[0].details["value"] == 60
    assert sink.raised[0].severity == "warning"


def test_out_of_range_reading_is_an_event_not_a_sample() -> None:
    sampler, sink, _ = _sampler({"co2": [400, 50_000, 410]}, co2=MetricSettings(interval_s=1))
    _run(sampler, 0, 4_000)
    assert [s.values["co2"] for _, s in sink.samples] == [400, 410]
    assert [e.kind for e in sink.raised] == ["out_of_range"]


def test_sensor_fault_reported_once_then_recovery() -> None:
    sampler, sink, driver = _sampler({"pm25": [1.0] * 10}, pm25=MetricSettings(interval_s=1))
    driver.broken = True
    _run(sampler, 0, 4_000)
    driver.broken = False
    _run(sampler, 4_000, 6_000)
    assert [e.kind for e in sink.raised] == ["sensor_fault", "sensor_recovered"]


def test_flush_emits_open_windows() -> None:
    sampler, sink, _ = _sampler(
        {"pm25": [5.0, 7.0, 9.0]}, pm25=MetricSettings(interval_s=10, reads_per_interval=10)
    )
    _run(sampler, 0, 2_500)
    sampler.emit_partial()
    assert [s.values for _, s in sink.samples] == [{"pm25": 6.0}]


def test_simulated_signals_stay_in_profile_range() -> None:
    driver = SimulatedDriver(SimulatedSensorConfig(seed=3), PROFILE)
    assert driver.metrics == {n for n, m in PROFILE.metrics.items() if m.stream == "env"}
    for t in range(0, 86_400_000, 600_000):
        for name, v in driver.read(driver.metrics, t).items():
            assert PROFILE.metrics[name].check(name, v) is None

"""The Source plugin API as the camera pipeline will use it: counts, metrics, events and extra health
through one runtime, with the profile checks applied at the sink."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from edge_helpers import free_port

from contract.messages import CountSample, Event, MetricSample
from edge.agent import Agent
from edge.config import DeviceConfig
from edge.source import Sink, Source


class FakeCamera(Source):
    name = "camera"

    def __init__(self) -> None:
        self.sink: Sink | None = None
        self.stopped = False

    def start(self, sink: Sink) -> None:
        self.sink = sink

    def stop(self) -> None:
        self.stopped = True

    def health(self) -> Mapping[str, float]:
        return {"analysis_fps": 9.5, "inference_ms": 14.0, "not_a_health_metric": 1.0}


def _agent(tmp_path: Path, cam: FakeCamera) -> Agent:
    cfg = DeviceConfig.model_validate(
        {
            "device_id": "cam-1",
            "site": "x",
            "profile": "traffic-camera",
            "broker": {"port": free_port()},  # nobody listens: everything stays in the outbox
            "outbox": {"path": str(tmp_path / "ob.sqlite3"), "sync": "normal"},
            "settings": {"metrics": {"congestion": {"high": 3}}},
        }
    )
    return Agent(cfg, sources=[cam])


def _rows(agent: Agent) -> list[tuple[str, str, dict]]:
    return [(r.kind, r.leaf, json.loads(r.body)) for r in agent.outbox.fetch(limit=1000)]


def test_camera_source_feeds_the_same_outbox_with_profile_checks(tmp_path: Path) -> None:
    cam = FakeCamera()
    agent = _agent(tmp_path, cam)
    assert agent.sampler is None  # no sensors configured: the camera is the only source
    cam.start(agent.sink)
    assert cam.sink is not None
    cam.sink.counts(
        [
            CountSample(ts=60_000, interval_s=60, line="north", cls="car", direction="in", count=12),
            CountSample(ts=60_000, interval_s=60, line="north", cls="unicorn", direction="in", count=1),
        ]
    )
    cam.sink.metrics(
        "traffic",
        [
            MetricSample(
                ts=60_000, values={"occupancy": 31.0, "congestion": 4.0, "speed_mean": 999.0, "bogus": 1.0}
            )
        ],
    )
    cam.sink.events([Event(ts=61_000, kind="camera_tamper", severity="warning")])
    rows = _rows(agent)
    counts = [b for k, _, b in rows if k == "counts"]
    assert counts == [
        {"ts": 60_000, "interval_s": 60, "line": "north", "class": "car", "direction": "in", "count": 12}
    ]
    (sample,) = [b for k, leaf, b in rows if k == "tlm" and leaf == "traffic"]
    assert sample["values"] == {"occupancy": 31.0, "congestion": 4.0}  # out of range and unknown dropped
    kinds = sorted(leaf for k, leaf, _ in rows if k == "evt")
    assert kinds == ["camera_tamper", "out_of_range", "threshold"]

    beat = agent.heartbeat()
    assert beat["analysis_fps"] == 9.5
    assert "not_a_health_metric" not in beat
    assert beat["link_up"] == 0
    agent.outbox.close()

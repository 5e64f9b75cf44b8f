"""The pipeline on real footage and on synthetic video: counts, contract messages, motion gate,
frame source (the snapshot: test_camera_snapshot.py)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv
import yaml

from contract.messages import CountSample
from edge.camera.config import CameraConfig, MotionConfig, SourceConfig, load_config
from edge.camera.detector import class_names
from edge.camera.motion import MotionGate
from edge.camera.pipeline import CameraPipeline
from edge.camera.source import FrameSource

SAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "edge" / "camera" / "sample-camera.yaml"
FILM_S = 30.0  # of sample.mp4's 60 s: enough crossings to add up, half the detector work


def test_sample_config_is_valid_and_strict() -> None:
    cfg = load_config(SAMPLE_CONFIG)
    assert {line.name for line in cfg.lines} == {"crosswalk", "kerb-left"}
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["motion"]["treshold"] = 3
    with pytest.raises(ValueError, match="treshold"):
        CameraConfig.model_validate(raw)
    raw = yaml.safe_load(SAMPLE_CONFIG.read_text())
    raw["lines"][1]["classes"] = ["tram"]
    with pytest.raises(ValueError, match="tram"):
        CameraConfig.model_validate(raw)


def synthetic_video(path: Path, frames: int = 60, fps: float = 10.0) -> Path:
    """A white square crossing y=120 downwards on a still background."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 240))
    for i in range(frames):
        img = np.full((240, 320, 3), 60, np.uint8)
        y = 20 + 3 * i
        cv2.rectangle(img, (140, y), (180, y + 40), (255, 255, 255), -1)
        writer.write(img)
    writer.release()
    return path


class SquareDetector:
    """Finds the bright square: lets the pipeline be tested without a model."""

    model_id = "square"
    input_size = 320

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, frame: np.ndarray, conf: float | None = None) -> sv.Detections:
        self.calls += 1
        ys, xs = np.nonzero(frame[..., 0] > 200)
        if len(xs) == 0:
            return sv.Detections.empty()
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return sv.Detections(
            xyxy=box,
            confidence=np.array([0.9], np.float32),
            class_id=np.array([2]),
            data={"class_name": np.array(["car"], dtype=object)},
        )


def square_config(video: Path, **source: object) -> CameraConfig:
    return CameraConfig.model_validate(
        {
            "source": {"uri": str(video), "analysis_fps": 0, **source},
            "lines": [{"name": "mid", "points": [[0, 120], [320, 120]]}],
            "zones": [{"name": "all", "polygon": [[0, 0], [320, 0], [320, 240], [0, 240]], "classes": ["car"]}],
            "intervals": {"counts_s": 60, "metrics_s": 60, "health_s": 1},
        }
    )


def test_pipeline_counts_and_emits_contract_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock a second into a minute: the 6 s clip falls in one interval (a minute boundary among its first
    # frames would close an interval before the square's track exists, with an occupancy near 0).
    real_time = time.time
    offset = 60 - real_time() % 60 + 1
    monkeypatch.setattr(time, "time", lambda: real_time() + offset)
    video = synthetic_video(tmp_path / "square.avi")
    pipeline = CameraPipeline(square_config(video), detector=SquareDetector())
    counts: list[CountSample] = []
    metrics = []
    summary = pipeline.run(on_counts=counts.extend, on_metrics=metrics.append)
    assert summary.frames == 60
    assert dict(summary.totals) == {("mid", "car", "in"): 1}
    got: Counter[tuple[str, str, str]] = Counter()
    for c in counts:
        got[(c.line, c.cls, c.direction)] += c.count
    assert got[("mid", "car", "in")] == 1
    assert len(counts) == 12  # 6 classes x 2 directions in the one interval
    assert sum(got.values()) == 1  # zero rows for the other classes and directions
    assert all(c.interval_s == 60 and c.ts % 60000 == 0 for c in counts)
    assert counts[0].model_dump(by_alias=True)["class"] in {
        "car",
        "motorbike",
        "bus",
        "truck",
        "bicycle",
        "person",
    }
    assert metrics
    assert all(m.values["occupancy"] > 90 for m in metrics)  # the square is in the frame-sized zone all along


def test_a_clip_across_a_minute_boundary_counts_the_crossing_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_time = time.time
    offset = 60 - real_time() % 60 - 3  # a minute boundary 3 s into the 6 s clip
    monkeypatch.setattr(time, "time", lambda: real_time() + offset)
    counts: list[CountSample] = []
    metrics = []
    pipeline = CameraPipeline(square_config(synthetic_video(tmp_path / "square.avi")), detector=SquareDetector())
    summary = pipeline.run(on_counts=counts.extend, on_metrics=metrics.append)
    assert dict(summary.totals) == {("mid", "car", "in"): 1}
    assert len(counts) == 24  # two intervals, 6 classes x 2 directions each
    assert sum(c.count for c in counts) == 1
    assert len({c.ts for c in counts}) == 2
    assert all(c.ts % 60000 == 0 for c in counts)
    assert len(metrics) == 2
    assert metrics[-1].values["occupancy"] > 90  # the square fills the zone all through the second interval


def test_motion_gate_skips_a_still_scene(tmp_path: Path) -> None:
    still = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(still), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for _ in range(50):
        writer.write(np.full((240, 320, 3), 90, np.uint8))
    writer.release()
    detector = SquareDetector()
    list(CameraPipeline(square_config(still), detector=detector).frames())
    assert detector.calls <= 3  # the first frame and the 2 s refreshes only

    moving = SquareDetector()
    pipeline = CameraPipeline(square_config(synthetic_video(tmp_path / "m.avi", 50)), detector=moving)
    list(pipeline.frames())
    # All motion is on the tracked square: the detector runs every track_interval_s (0.25 s), the
    # Kalman prediction fills in, and the crossing is still counted exactly once.
    assert 10 <= moving.calls <= 30
    assert dict(pipeline.totals) == {("mid", "car", "in"): 1}

    always = SquareDetector()
    cfg = square_config(synthetic_video(tmp_path / "a.avi", 50))
    cfg = cfg.model_copy(update={"motion": MotionConfig(track_interval_s=0)})
    list(CameraPipeline(cfg, detector=always).frames())
    assert always.calls >= 45


def test_motion_region_crops_around_the_movement() -> None:
    gate = MotionGate(MotionConfig(), detector_size=320)
    frame = np.full((720, 1280, 3), 50, np.uint8)
    gate.decide(frame, 0.0)
    moved = frame.copy()
    cv2.rectangle(moved, (900, 500), (960, 600), (255, 255, 255), -1)
    decision = gate.decide(moved, 0.1)
    assert decision.run
    assert decision.region is not None
    x0, y0, x1, y1 = decision.region
    assert x0 <= 900
    assert y0 <= 500
    assert x1 >= 960
    assert y1 >= 600
    assert (x1 - x0) == (y1 - y0) == 320


def test_file_source_skips_to_the_analysis_rate(tmp_path: Path) -> None:
    video = synthetic_video(tmp_path / "v.avi", frames=60, fps=30.0)
    source = FrameSource(SourceConfig(uri=str(video), analysis_fps=10))
    frames = list(source)
    assert len(frames) == 20
    assert frames[1].t == pytest.approx(0.1, abs=0.034)
    assert source.stats.read == 60
    assert source.stats.dropped == 0


def test_paced_source_stops_on_request(tmp_path: Path) -> None:
    video = synthetic_video(tmp_path / "v.avi", frames=300, fps=30.0)
    stop = threading.Event()
    source = FrameSource(SourceConfig(uri=str(video), realtime=True, analysis_fps=5), stop)
    got = 0
    for _ in source:
        got += 1
        if got == 3:
            stop.set()
    assert got <= 4


def test_real_footage_end_to_end(model_320: Path, sample_video: Path) -> None:
    """The first FILM_S seconds of the street film: the sample lines see people, a truck and a car cross
    there (20 crossings at these settings), and the count messages must add up to what the box counted."""
    cfg = load_config(SAMPLE_CONFIG)
    # The film's camera moves (its crossings are artefacts, see test_camera_motion.py); suspension is
    # off here because this test checks that the messages add up to what the box counted.
    motion = cfg.motion.model_copy(update={"camera_motion": False})
    cfg = cfg.model_copy(update={"source": SourceConfig(uri=str(sample_video), analysis_fps=5), "motion": motion})
    pipeline = CameraPipeline(cfg)
    counts: list[CountSample] = []
    classes: Counter[str] = Counter()
    stop = threading.Event()
    for result in pipeline.frames(stop):  # stopping still closes the open intervals (the final result)
        counts += result.counts
        classes.update(set(class_names(result.tracked)))
        if result.frame.t >= FILM_S:
            stop.set()
    assert {"person", "car"} <= set(classes)
    per_class: Counter[tuple[str, str, str]] = Counter()
    for c in counts:
        per_class[(c.line, c.cls, c.direction)] += c.count
    assert +per_class == +pipeline.totals  # messages add up to what the box logged
    assert sum(per_class.values()) >= 5  # people and vehicles do cross the crosswalk line

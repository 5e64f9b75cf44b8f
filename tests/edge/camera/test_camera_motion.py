"""Camera-motion detection on real footage: the tram-mounted street film moves, vtest.avi does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.camera.config import SourceConfig, load_config
from edge.camera.evaluation import ClipRun
from edge.camera.pipeline import CameraPipeline

SAMPLE_CONFIG = Path(__file__).resolve().parents[3] / "edge" / "camera" / "sample-camera.yaml"


@pytest.mark.timeout(900)  # may be the test that sets up the whole-clip run (test_camera_counting.py)
def test_fixed_camera_is_never_taken_for_a_moving_one(clip_runs: dict[Path, ClipRun]) -> None:
    """People walk and tape flutters all through vtest.avi; the camera stays put. Judged on the box's
    own run over the whole clip at its defaults, the one the counting tests score."""
    run = next(r for p, r in clip_runs.items() if "vtest" in p.stem)
    assert run.frames >= 795
    assert run.camera_moving_frames == 0


def test_moving_camera_reports_no_crossing_speed_or_congestion(model_320: Path, sample_video: Path) -> None:
    """sample.mp4 is filmed from a moving tram: its people and cars cross the sample lines in pixels
    only because the camera moves. Nothing may be counted; one event says why."""
    cfg = load_config(SAMPLE_CONFIG)
    cfg = cfg.model_copy(update={"source": SourceConfig(uri=str(sample_video), analysis_fps=10)})
    pipeline = CameraPipeline(cfg)
    events, crossings, speeds, moving_frames, frames = [], [], [], 0, 0
    for result in pipeline.frames():
        events += result.events
        crossings += result.crossings
        if result.metrics is not None:
            speeds += [result.metrics.values[k] for k in ("speed_mean", "queue_length") if k in result.metrics.values]
        frames += not result.final
        moving_frames += bool(pipeline.camera_motion and pipeline.camera_motion.moving)
        if frames >= 150:
            break
    kinds = [e.kind for e in events]
    assert kinds[:1] == ["camera_moving"]
    assert "reason" in events[0].details
    assert moving_frames >= 0.9 * frames
    assert crossings == []
    assert speeds == []
    assert pipeline.tally.per_track == {}  # no vehicle speed measured in the open interval either
    assert not any(k.startswith("congestion") or k == "stopped_vehicle" for k in kinds)
    assert sum(pipeline.totals.values()) == 0

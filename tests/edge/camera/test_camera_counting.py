"""Counts against crossings counted by hand, frame by frame, on real footage (tests/data/*.yaml).

The whole pipeline runs once per session at the box defaults (detector input, gate, tracker) over the
first FRAMES frames of each clip; every line and direction is then judged on precision and recall of
crossings matched to the hand counts within the set's tolerance - not on the exact numbers of a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.camera import media
from edge.camera.config import CameraConfig, SourceConfig
from edge.camera.evaluation import ClipRun, Score, clip_config, count_clip, load_hand_counts, score_line
from edge.camera.pipeline import CameraPipeline

DATA = Path(__file__).resolve().parents[2] / "data"
FRAMES = 400  # CI time: the first 40 s of vtest.avi, where both lines were counted
SETS = sorted(DATA.glob("*.yaml"))
LINES = [(path, line.name) for path in SETS for line in load_hand_counts(path)[0].lines]
# Measured at the defaults (bench/counting.py): the gap to the 95 % targets is two pairs of people who
# pass each other on the line and swap track identities, and a couple walking so close together that
# the detector gives them one box - see models/yolov3-tiny-coco.md.
MIN_PRECISION = 0.85
MIN_RECALL = 0.75


@pytest.fixture(scope="session")
def clip_runs(model_320: Path) -> dict[Path, ClipRun]:
    runs = {}
    for path in SETS:
        spec, _ = load_hand_counts(path)
        try:
            media.resolve_uri(spec.clip)
        except media.MediaMissingError as exc:
            pytest.skip(f"media file missing: {exc}")
        cfg = clip_config(spec, CameraConfig(source=SourceConfig(uri=spec.clip)))
        runs[path] = count_clip(CameraPipeline(cfg), last_frame=FRAMES)
    return runs


def _scores(path: Path, line_name: str, run: ClipRun) -> dict[str, Score]:
    spec, truth = load_hand_counts(path)
    line = next(x for x in spec.lines if x.name == line_name)
    span = (line.frames[0], min(line.frames[1], FRAMES))
    return score_line(truth[line_name], run.crossings[line_name], span, spec.tolerance_frames)


@pytest.mark.parametrize(("path", "line_name"), LINES, ids=[f"{p.stem}-{n}" for p, n in LINES])
def test_crossings_match_the_hand_counts(path: Path, line_name: str, clip_runs: dict[Path, ClipRun]) -> None:
    scores = _scores(path, line_name, clip_runs[path])
    for direction, s in scores.items():
        print(f"{line_name} {direction}: P {s.precision:.2f} R {s.recall:.2f} miss {s.misses} extra {s.extra}")
    assert sum(s.truth for s in scores.values()) >= 5  # the span really has crossings to judge
    for direction, s in scores.items():
        # a window this short has 2-10 crossings a direction: one miss or one extra is allowed below the bar
        assert s.precision >= MIN_PRECISION or s.counted - s.matched <= 1, (direction, s)
        assert s.recall >= MIN_RECALL or s.truth - s.matched <= 1, (direction, s)


def test_motion_gate_skips_detector_work_on_the_fixed_camera(clip_runs: dict[Path, ClipRun]) -> None:
    """vtest.avi always has someone walking (and tape fluttering): the gate must still save work."""
    run = next(r for p, r in clip_runs.items() if "vtest" in p.stem)
    assert run.frames >= FRAMES
    assert run.detector_runs <= 0.8 * run.frames


def test_scoring_matches_each_hand_count_once() -> None:
    from edge.camera.evaluation import Counted

    truth = [Counted(100, "in"), Counted(104, "in"), Counted(200, "out")]
    counted = [Counted(103, "in"), Counted(150, "in"), Counted(201, "in"), Counted(900, "out")]
    scores = score_line(truth, counted, (0, 500), tolerance=5)
    assert (scores["in"].matched, scores["in"].counted, scores["in"].truth) == (1, 3, 2)
    assert scores["in"].misses in ([100], [104])
    assert scores["out"].recall == 0.0
    assert scores["out"].counted == 0  # frame 900 lies outside the counted span: not judged

"""Counts against crossings counted by hand, frame by frame, on real footage (tests/data/*.yaml).

The whole pipeline runs once per session at the box defaults (detector input, gate, tracker) over each
whole clip (the `clip_runs` fixture in conftest.py); every line and direction is then judged on
precision and recall of crossings matched to the hand counts within the set's tolerance - not on the
exact numbers of a run. The bars are the issue's targets (95 %), per direction.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.camera.evaluation import ClipRun, Score, load_hand_counts, score_line
from tests.edge.camera.conftest import HAND_COUNTED

LINES = [(path, line.name) for path in HAND_COUNTED for line in load_hand_counts(path)[0].lines if line.asserted]
# One pass over the 795 frames at input 416: under the load of several parallel jobs on the 2 cores it
# took over 300 s, the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(900)
MIN_PRECISION = 0.95
MIN_RECALL = 0.95


def _scores(path: Path, line_name: str, run: ClipRun) -> dict[str, Score]:
    spec, truth = load_hand_counts(path)
    line = next(x for x in spec.lines if x.name == line_name)
    return score_line(truth[line_name], run.crossings[line_name], line.frames, spec.tolerance_frames)


@pytest.mark.parametrize(("path", "line_name"), LINES, ids=[f"{p.stem}-{n}" for p, n in LINES])
def test_crossings_match_the_hand_counts(path: Path, line_name: str, clip_runs: dict[Path, ClipRun]) -> None:
    scores = _scores(path, line_name, clip_runs[path])
    for direction, s in scores.items():
        print(f"{line_name} {direction}: P {s.precision:.2f} R {s.recall:.2f} miss {s.misses} extra {s.extra}")
    assert sum(s.truth for s in scores.values()) >= 5  # the span really has crossings to judge
    for direction, s in scores.items():
        assert s.truth >= 1  # each direction has crossings to judge
        assert s.precision >= MIN_PRECISION, (direction, s)
        assert s.recall >= MIN_RECALL, (direction, s)


def test_motion_gate_skips_detector_work_on_the_fixed_camera(clip_runs: dict[Path, ClipRun]) -> None:
    """vtest.avi always has someone walking (and tape fluttering): the gate must still save work."""
    run = next(r for p, r in clip_runs.items() if "vtest" in p.stem)
    assert run.frames >= 795
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

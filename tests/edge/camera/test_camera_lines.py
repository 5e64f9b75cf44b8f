"""Counting lines on synthetic tracks with known crossings: exact counts."""

from __future__ import annotations

import numpy as np
import pytest

from edge.camera.config import LineConfig
from edge.camera.lines import LineCounter

CLASSES = ["car", "person", "bicycle"]


def horizontal(**kw: object) -> LineCounter:
    """y = 100 from x 0 to 200; "in" is moving down the screen (to the right of p1 -> p2)."""
    return LineCounter(
        LineConfig.model_validate({"name": "l", "points": [[0, 100], [200, 100]], **kw}), CLASSES
    )


def feed(
    counter: LineCounter, tracks: dict[int, tuple[str, list[tuple[float, float]]]]
) -> list[tuple[int, str]]:
    """Play tracks frame by frame (all the same length); returns (track, direction) per crossing."""
    out = []
    length = max(len(path) for _, path in tracks.values())
    for i in range(length):
        ids = [t for t, (_, path) in tracks.items() if i < len(path)]
        pts = np.array([tracks[t][1][i] for t in ids], float)
        names = [tracks[t][0] for t in ids]
        out += [(c.tracker_id, c.direction) for c in counter.trigger_points(pts, ids, names)]
    return out


def straight(x: float, y0: float, y1: float, steps: int = 20) -> list[tuple[float, float]]:
    return [(x, y) for y in np.linspace(y0, y1, steps)]


def test_both_directions_counted_per_class() -> None:
    line = horizontal()
    crossings = feed(
        line,
        {
            1: ("car", straight(50, 40, 160)),  # down: in
            2: ("car", straight(80, 170, 30)),  # up: out
            3: ("person", straight(120, 20, 180)),  # in
            4: ("bicycle", straight(150, 180, 20)),  # out
            5: ("car", straight(60, 10, 90)),  # stops short of the line: nothing
        },
    )
    assert sorted(crossings) == [(1, "in"), (2, "out"), (3, "in"), (4, "out")]
    assert line.take_counts() == {
        ("car", "in"): 1,
        ("car", "out"): 1,
        ("person", "in"): 1,
        ("bicycle", "out"): 1,
    }
    assert line.take_counts() == {}  # reset per interval


def test_jitter_on_the_line_counts_once() -> None:
    rng = np.random.default_rng(7)
    approach = straight(100, 60, 100, 10)
    wobble = [
        (100 + rng.normal(0, 2), 100 + rng.uniform(-3.5, 3.5)) for _ in range(40)
    ]  # inside the 4 px band
    leave = straight(100, 100, 140, 10)
    line = horizontal()
    assert feed(line, {7: ("car", approach + wobble + leave)}) == [(7, "in")]


def test_jitter_across_the_line_without_band_would_overcount() -> None:
    path = (
        straight(100, 60, 100, 5)
        + [(100, 100 + (3 if i % 2 else -3)) for i in range(20)]
        + straight(100, 100, 140, 5)
    )
    assert len(feed(horizontal(band_px=0), {1: ("car", path)})) > 2
    assert feed(horizontal(band_px=4), {1: ("car", path)}) == [(1, "in")]


def test_object_that_turns_back() -> None:
    line = horizontal()
    before = straight(50, 40, 98) + straight(50, 98, 40)  # reaches the line, turns back: nothing
    after = straight(150, 40, 130) + straight(150, 130, 40)  # crosses, comes back: in then out
    assert feed(line, {1: ("person", before), 2: ("person", after)}) == [(2, "in"), (2, "out")]


def test_crossing_beside_the_segment_is_not_counted() -> None:
    assert feed(horizontal(), {1: ("car", straight(260, 40, 160))}) == []


@pytest.mark.parametrize(("invert", "expected"), [(False, "in"), (True, "out")])
def test_invert_swaps_direction(invert: bool, expected: str) -> None:
    assert feed(horizontal(invert=invert), {1: ("car", straight(50, 40, 160))}) == [(1, expected)]


def test_wrong_way_and_class_filter() -> None:
    line = horizontal(allowed="in", classes=["car"])
    cars = [
        line.trigger_points(np.array([[50.0, y], [90.0, 200 - y]]), [1, 2], ["car", "car"]) for y in (40, 160)
    ]
    flags = {c.tracker_id: (c.direction, c.wrong_way) for frame in cars for c in frame}
    assert flags == {1: ("in", False), 2: ("out", True)}
    people = [line.trigger_points(np.array([[50.0, y]]), [3], ["person"]) for y in (40, 160)]
    assert people == [[], []]


def test_fast_object_skipping_frames_is_still_counted() -> None:
    assert feed(horizontal(), {1: ("car", [(100, 20), (100, 190)])}) == [(1, "in")]


def test_companions_crossing_side_by_side_both_count() -> None:
    """Two people walking abreast cross at almost the same place in the same instant: two crossings."""
    crossings = feed(horizontal(), {1: ("person", straight(100, 40, 160)), 2: ("person", straight(112, 44, 164))})
    assert sorted(crossings) == [(1, "in"), (2, "in")]


def test_a_second_track_on_a_vanished_object_counts_once() -> None:
    """Track 1 crosses and is lost; a new track on the same object starts too far back for the hand-off
    (more than a box height from where 1 was last seen) and crosses the same place 0.6 s later."""
    line = horizontal()
    out = feed(line, {1: ("person", straight(100, 40, 120, 9))})  # crosses, lost at y 120
    out += feed(line, {2: ("person", straight(100, 60, 140, 8))})
    assert out == [(1, "in")]

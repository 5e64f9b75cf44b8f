"""Counting lines: pure stateful objects fed tracked points, returning the crossings they saw.

A track has a side of the line only once its anchor point is more than `band_px` away from it; a
crossing is counted when that side flips, so jitter on the line never counts and an object that turns
back before reaching the far side counts nothing. The crossing point must fall on the segment, not
its extension.

Tracks fragment near lines (occlusion by a passer-by, a missed detection), so one physical crossing
must not depend on one track id:
- a track first seen inside the band takes the side it was born on, and counts when it leaves the band
  on the other side;
- a new track takes over the side of a track that vanished near it moments ago (`handoff_s`, within
  one box height), so the fragment after the line does not count again, and the one before it still
  counts the crossing it completes;
- a crossing in the same direction at the same place along the line within `dedupe_s` of another
  track's crossing is the same object seen twice (a duplicate track) and is not counted again - unless
  that other track is still seen in the same frame: then it is a second object walking alongside.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import supervision as sv

from edge.camera.config import LineConfig
from edge.camera.detector import class_names

Direction = Literal["in", "out"]
ANCHORS = {"bottom_center": sv.Position.BOTTOM_CENTER, "center": sv.Position.CENTER}
DEFAULT_SIZE_PX = 50.0  # object size assumed when the caller gives no box heights
FRAME_S = 0.1  # time step assumed when the caller gives no time


@dataclass(frozen=True)
class Crossing:
    line: str
    tracker_id: int
    cls: str
    direction: Direction
    wrong_way: bool


@dataclass
class _Side:
    side: int  # +1 / -1 once seen outside the band; 0 while only seen inside it
    born: int  # sign of the distance where the track was first seen (for tracks born in the band)
    outside: np.ndarray  # last point outside the band (the start of a crossing)
    last: np.ndarray  # last point seen
    t: float  # when last seen
    size: float  # box height when last seen


class LineCounter:
    def __init__(self, cfg: LineConfig, classes: Iterable[str]) -> None:
        self.cfg = cfg
        self.p1 = np.asarray(cfg.points[0], np.float64)
        self.vec = np.asarray(cfg.points[1], np.float64) - self.p1
        self.length = float(np.hypot(*self.vec))
        if self.length == 0:
            raise ValueError(f"line {cfg.name}: the two points coincide")
        self.classes = set(cfg.classes or classes)
        self.sides: dict[int, _Side] = {}
        self.recent: list[tuple[float, float, str, int]] = []  # (t, position along line, direction, track)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.removed: set[int] = set()  # tracks the tracker dropped, kept a while for hand-off
        self._tick = 0.0

    def _signed_distance(self, points: np.ndarray) -> np.ndarray:
        rel = points - self.p1
        return np.asarray((self.vec[0] * rel[:, 1] - self.vec[1] * rel[:, 0]) / self.length)  # >0: right of p1->p2

    def _along(self, point: np.ndarray) -> float:
        """Position of a point's projection along the segment, 0..1 on it."""
        return float(np.dot(point - self.p1, self.vec)) / self.length**2

    def _hit(self, a: np.ndarray, b: np.ndarray) -> float | None:
        """Where the path a -> b meets the line, as a position along the segment; None if beside it."""
        da, db = (float(v) for v in self._signed_distance(np.stack([a, b])))
        hit = a + (b - a) * (da / (da - db)) if da != db else b
        u = self._along(hit)
        return u if 0.0 <= u <= 1.0 else None

    def _handoff(self, tid: int, point: np.ndarray, t: float, size: float) -> _Side | None:
        """The state of a track that vanished near `point` moments ago, taken over by track `tid`."""
        best, best_d = None, np.inf
        for other, state in self.sides.items():
            gap = t - state.t
            if other == tid or gap <= 0 or gap > self.cfg.handoff_s:
                continue
            d = float(np.hypot(*(state.last - point)))
            if d <= max(size, state.size) and d < best_d:
                best, best_d = other, d
        return self.sides.pop(best) if best is not None else None

    def _duplicate(self, t: float, u: float, direction: str, tid: int, size: float, present: set[int]) -> bool:
        """Another track crossed here just before and is gone now: a fragment of this object. One still
        seen beside this one in the same frame is another object (a companion walking alongside)."""
        self.recent = [r for r in self.recent if t - r[0] <= self.cfg.dedupe_s]
        reach = 0.5 * size / self.length
        return any(
            d == direction and other != tid and other not in present and abs(v - u) <= reach
            for _, v, d, other in self.recent
        )

    def trigger_points(
        self,
        points: np.ndarray,
        tracker_ids: Iterable[int],
        names: Iterable[str],
        t: float | None = None,
        sizes: Iterable[float] | None = None,
    ) -> list[Crossing]:
        """Feed one frame of anchor points (and, if known, the time and box heights); returns the
        crossings completed in it."""
        if t is None:
            self._tick += FRAME_S
            t = self._tick
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        ids = [int(i) for i in tracker_ids]
        present = set(ids)
        size_list = list(sizes) if sizes is not None else [DEFAULT_SIZE_PX] * len(ids)
        dist = self._signed_distance(pts)
        out: list[Crossing] = []
        for point, d, tid, name, size in zip(pts, dist, ids, names, size_list, strict=True):
            if name not in self.classes:
                continue
            sign = 1 if d > 0 else -1
            state = self.sides.get(tid) or self._handoff(tid, point, t, float(size))
            if state is None:
                state = _Side(0, sign, point, point, t, float(size))
            state.last, state.t, state.size = point, t, float(size)
            self.sides[tid] = state
            if abs(d) <= self.cfg.band_px:
                continue
            start, prev = state.outside, state.side
            state.side, state.outside = sign, point
            if prev == sign or (prev == 0 and state.born == sign):
                continue
            u = self._hit(start, point) if prev != 0 else self._along(point)
            if u is None or not 0.0 <= u <= 1.0:
                continue
            direction: Direction = "in" if (sign > 0) != self.cfg.invert else "out"
            if self._duplicate(t, u, direction, tid, float(size), present):
                continue
            self.recent.append((t, u, direction, tid))
            self.counts[(str(name), direction)] += 1
            wrong = self.cfg.allowed not in ("both", direction)
            out.append(Crossing(self.cfg.name, tid, str(name), direction, wrong))
        self._expire(t)
        return out

    def trigger(self, tracked: sv.Detections, t: float | None = None) -> list[Crossing]:
        if len(tracked) == 0 or tracked.tracker_id is None:
            return []
        points = tracked.get_anchors_coordinates(ANCHORS[self.cfg.anchor])
        heights = tracked.xyxy[:, 3] - tracked.xyxy[:, 1]
        return self.trigger_points(points, tracked.tracker_id, class_names(tracked), t, heights)

    def forget(self, tracker_ids: Iterable[int]) -> None:
        """Tracks the tracker dropped: their state stays `handoff_s` longer for a successor, then goes."""
        self.removed.update(int(tid) for tid in tracker_ids)

    def _expire(self, t: float) -> None:
        gone = [k for k in self.removed if k not in self.sides or t - self.sides[k].t > self.cfg.handoff_s]
        for k in gone:
            self.sides.pop(k, None)
            self.removed.discard(k)

    def take_counts(self) -> Counter[tuple[str, str]]:
        """Counts since the last call (one aggregation interval), then reset."""
        counts, self.counts = self.counts, Counter()
        return counts

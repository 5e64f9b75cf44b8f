"""Counting lines: pure stateful objects fed tracked points, returning the crossings they saw.

A track has a side of the line only once its anchor point is more than `band_px` away from it; a
crossing is counted when that side flips, so jitter on the line never counts and an object that turns
back before reaching the far side counts nothing. The crossing point must fall on the segment, not
its extension.
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


@dataclass(frozen=True)
class Crossing:
    line: str
    tracker_id: int
    cls: str
    direction: Direction
    wrong_way: bool


class LineCounter:
    def __init__(self, cfg: LineConfig, classes: Iterable[str]) -> None:
        self.cfg = cfg
        self.p1 = np.asarray(cfg.points[0], np.float64)
        self.vec = np.asarray(cfg.points[1], np.float64) - self.p1
        self.length = float(np.hypot(*self.vec))
        if self.length == 0:
            raise ValueError(f"line {cfg.name}: the two points coincide")
        self.classes = set(cfg.classes or classes)
        self.sides: dict[int, tuple[int, np.ndarray]] = {}  # track -> (side, last point outside the band)
        self.counts: Counter[tuple[str, str]] = Counter()

    def _signed_distance(self, points: np.ndarray) -> np.ndarray:
        rel = points - self.p1
        return np.asarray(
            (self.vec[0] * rel[:, 1] - self.vec[1] * rel[:, 0]) / self.length
        )  # >0: right of p1->p2

    def _on_segment(self, a: np.ndarray, da: float, b: np.ndarray, db: float) -> bool:
        hit = a + (b - a) * (da / (da - db))
        t = float(np.dot(hit - self.p1, self.vec)) / self.length**2
        return 0.0 <= t <= 1.0

    def trigger_points(
        self, points: np.ndarray, tracker_ids: Iterable[int], names: Iterable[str]
    ) -> list[Crossing]:
        """Feed one frame of anchor points; returns the crossings completed in it."""
        out: list[Crossing] = []
        dist = self._signed_distance(np.asarray(points, np.float64).reshape(-1, 2))
        for point, d, tid, name in zip(points, dist, tracker_ids, names, strict=True):
            if name not in self.classes or abs(d) <= self.cfg.band_px:
                continue
            side = 1 if d > 0 else -1
            prev = self.sides.get(int(tid))
            self.sides[int(tid)] = (side, np.asarray(point, np.float64))
            if prev is None or prev[0] == side:
                continue
            prev_d = float(self._signed_distance(prev[1][None])[0])
            if not self._on_segment(prev[1], prev_d, np.asarray(point, np.float64), float(d)):
                continue
            direction: Direction = "in" if (side > 0) != self.cfg.invert else "out"
            self.counts[(str(name), direction)] += 1
            wrong = self.cfg.allowed not in ("both", direction)
            out.append(Crossing(self.cfg.name, int(tid), str(name), direction, wrong))
        return out

    def trigger(self, tracked: sv.Detections) -> list[Crossing]:
        if len(tracked) == 0 or tracked.tracker_id is None:
            return []
        points = tracked.get_anchors_coordinates(ANCHORS[self.cfg.anchor])
        return self.trigger_points(points, tracked.tracker_id, class_names(tracked))

    def forget(self, tracker_ids: Iterable[int]) -> None:
        for tid in tracker_ids:
            self.sides.pop(int(tid), None)

    def take_counts(self) -> Counter[tuple[str, str]]:
        """Counts since the last call (one aggregation interval), then reset."""
        counts, self.counts = self.counts, Counter()
        return counts

"""Ground-plane speed: a homography from four image points to metres, and per-track speed from it.

Speed is the slope of a least-squares line through a track's ground positions over the last
`window_s` seconds, which averages out the box jitter a two-point difference would amplify.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import cv2
import numpy as np

from edge.camera.config import HomographyConfig


class GroundPlane:
    def __init__(self, cfg: HomographyConfig) -> None:
        src = np.asarray(cfg.image_points, np.float32)
        dst = np.asarray(cfg.world(), np.float32)
        self.matrix = cv2.getPerspectiveTransform(src, dst)

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Image pixels [N,2] -> ground metres [N,2]."""
        pts = np.asarray(points, np.float64).reshape(-1, 1, 2)
        if len(pts) == 0:
            return np.zeros((0, 2))
        return np.asarray(cv2.perspectiveTransform(pts, self.matrix)).reshape(-1, 2)


class SpeedEstimator:
    """Per-track ground speed in km/h from timestamped ground positions."""

    def __init__(self, window_s: float = 1.0, min_span_s: float = 0.4) -> None:
        self.window_s = window_s
        self.min_span_s = min_span_s
        self.history: dict[int, deque[tuple[float, float, float]]] = {}

    def update(self, t: float, tracker_ids: Iterable[int], world: np.ndarray) -> dict[int, float]:
        """Add one frame of positions; returns the speeds known so far for these tracks."""
        speeds: dict[int, float] = {}
        for tid, (x, y) in zip(tracker_ids, world, strict=True):
            hist = self.history.setdefault(int(tid), deque())
            hist.append((t, float(x), float(y)))
            while hist and hist[0][0] < t - self.window_s:
                hist.popleft()
            speed = self.speed(int(tid))
            if speed is not None:
                speeds[int(tid)] = speed
        return speeds

    def speed(self, tracker_id: int) -> float | None:
        hist = self.history.get(tracker_id)
        if not hist or len(hist) < 3 or hist[-1][0] - hist[0][0] < self.min_span_s:
            return None
        arr = np.asarray(hist)
        t = arr[:, 0] - arr[0, 0]
        vx = np.polyfit(t, arr[:, 1], 1)[0]
        vy = np.polyfit(t, arr[:, 2], 1)[0]
        return float(np.hypot(vx, vy) * 3.6)

    def forget(self, tracker_ids: Iterable[int]) -> None:
        for tid in tracker_ids:
            self.history.pop(int(tid), None)

"""Camera-motion detection: is the camera itself moving (panned, shaken, carried on a vehicle)?

Counting lines, speeds, zones and queues are drawn in image pixels of a fixed view; once the camera
moves, every object seems to move and the numbers are artefacts. A sparse optical flow (Lucas-Kanade)
of background corners on a small grey frame tells the two apart cheaply: on a fixed camera only the
few corners on moving objects move, while camera motion moves most of them, whatever its kind (pan,
shake, or driving forward, where the view expands and a global shift alone would read zero).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

WIDTH = 320  # analysis width of the grey frame
MIN_POINTS = 12


@dataclass(frozen=True)
class CameraMotionState:
    moving: bool
    changed: bool  # moving started or ended with this frame
    moving_share: float  # share of background corners that moved
    since_s: float  # how long the current state has lasted


class CameraMotionDetector:
    """`update(frame, t)` once per analysed frame; moving starts at once and ends after `settle_s` still."""

    def __init__(self, move_px: float = 1.0, share: float = 0.3, settle_s: float = 1.0) -> None:
        self.move_px, self.share, self.settle_s = move_px, share, settle_s
        self.prev: np.ndarray | None = None
        self.moving = False
        self.state_t = 0.0
        self.last_moving_t = -np.inf

    def _grey(self, frame: np.ndarray) -> np.ndarray:
        h, w = frame.shape[:2]
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)  # first: the resize then has a third of the data
        return cv2.resize(grey, (WIDTH, max(1, round(h * WIDTH / w))), interpolation=cv2.INTER_AREA)

    def moved_share(self, prev: np.ndarray, cur: np.ndarray, dt: float) -> float:
        """Share of corners of `prev` that moved more than `move_px` (per 0.1 s) by `cur`."""
        corners = cv2.goodFeaturesToTrack(prev, maxCorners=150, qualityLevel=0.01, minDistance=12)
        if corners is None or len(corners) < MIN_POINTS:
            return 0.0
        found, status, _ = cv2.calcOpticalFlowPyrLK(
            prev, cur, corners, np.empty_like(corners), winSize=(15, 15), maxLevel=2
        )
        ok = status.reshape(-1) == 1
        if ok.sum() < MIN_POINTS:
            return 1.0  # the view changed too much to follow: treat as moving
        flow = np.linalg.norm((found - corners).reshape(-1, 2)[ok], axis=1)
        return float(np.mean(flow > self.move_px * max(dt, 1e-3) / 0.1))

    def update(self, frame: np.ndarray, t: float, dt: float = 0.1) -> CameraMotionState:
        cur = self._grey(frame)
        share = 0.0 if self.prev is None else self.moved_share(self.prev, cur, dt)
        self.prev = cur
        now_moving = share >= self.share
        if now_moving:
            self.last_moving_t = t
        changed = False
        if now_moving and not self.moving:
            self.moving, self.state_t, changed = True, t, True
        elif self.moving and not now_moving and t - self.last_moving_t >= self.settle_s:
            self.moving, self.state_t, changed = False, t, True
        return CameraMotionState(self.moving, changed, share, t - self.state_t)

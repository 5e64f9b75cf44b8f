"""Motion gate (as Frigate does): decide cheaply whether and where the detector runs.

Frame differencing against a running-average background on a small grey frame costs well under a
millisecond; a static scene then costs almost nothing. Moving regions are merged into one square
crop at least the detector's input size, so small distant objects are seen at full resolution;
large motion or the periodic refresh (for objects that stopped) gives the whole frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from edge.camera.config import MotionConfig

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


@dataclass(frozen=True)
class MotionDecision:
    run: bool
    region: Region | None  # None with run=True: the whole frame
    boxes: np.ndarray  # moving blobs [N,4] in frame pixels
    reason: str  # motion | refresh | full_motion | still | disabled | first


class MotionGate:
    def __init__(self, cfg: MotionConfig, detector_size: int) -> None:
        self.cfg = cfg
        self.detector_size = detector_size
        self.background: np.ndarray | None = None
        self.last_full: float | None = None
        self.activity: np.ndarray | None = None  # how often each pixel moved lately (0..1)
        self.last_reason = "first"

    def _small_grey(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        h, w = frame.shape[:2]
        scale = self.cfg.height / h
        # grey first: the area resize then handles a third of the data (~1 ms a 768x576 frame saved)
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        small = cv2.resize(grey, (max(1, round(w * scale)), self.cfg.height), interpolation=cv2.INTER_AREA)
        grey = cv2.GaussianBlur(small, (5, 5), 0)
        return grey, scale

    def boxes(self, frame: np.ndarray) -> np.ndarray:
        """Moving blobs in frame pixels; updates the background."""
        grey, scale = self._small_grey(frame)
        if self.background is None:
            self.background = grey.astype(np.float32)
            return np.zeros((0, 4), np.float32)
        diff = cv2.absdiff(grey, cv2.convertScaleAbs(self.background))
        cv2.accumulateWeighted(grey, self.background, self.cfg.alpha)
        mask = cv2.threshold(diff, self.cfg.threshold, 255, cv2.THRESH_BINARY)[1]
        moving = (mask > 0).astype(np.float32)
        if self.activity is None:
            self.activity = np.zeros_like(moving)
        cv2.accumulateWeighted(moving, self.activity, 0.05)
        # Pixels that move nearly all the time (a flag, tape or leaves in the wind) are not objects.
        mask[self.activity > self.cfg.flicker] = 0
        mask = cv2.dilate(mask, np.ones((3, 3), np.uint8), iterations=2)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        min_area = self.cfg.min_area * grey.size
        blobs = stats[1:n][stats[1:n, cv2.CC_STAT_AREA] >= min_area]
        x, y, w, h = blobs[:, 0], blobs[:, 1], blobs[:, 2], blobs[:, 3]
        xyxy = np.column_stack([x, y, x + w, y + h])
        return xyxy.astype(np.float32) / scale

    def decide(self, frame: np.ndarray, t: float) -> MotionDecision:
        decision = self._decide(frame, t)
        self.last_reason = decision.reason
        return decision

    def _decide(self, frame: np.ndarray, t: float) -> MotionDecision:
        if not self.cfg.enabled:
            return MotionDecision(True, None, np.zeros((0, 4), np.float32), "disabled")
        first = self.background is None
        boxes = self.boxes(frame)
        if first or self.last_full is None or t - self.last_full >= self.cfg.refresh_s:
            self.last_full = t
            return MotionDecision(True, None, boxes, "first" if first else "refresh")
        if len(boxes) == 0:
            return MotionDecision(False, None, boxes, "still")
        region = self.region(boxes, frame.shape[1], frame.shape[0])
        if region is None:
            self.last_full = t
            return MotionDecision(True, None, boxes, "full_motion")
        return MotionDecision(True, region, boxes, "motion")

    def region(self, boxes: np.ndarray, width: int, height: int) -> Region | None:
        """One square crop around all motion (with a margin), or None when the whole frame is better."""
        x0, y0 = boxes[:, :2].min(axis=0)
        x1, y1 = boxes[:, 2:].max(axis=0)
        margin = 0.1 * max(x1 - x0, y1 - y0) + 8
        side = int(max(x1 - x0 + 2 * margin, y1 - y0 + 2 * margin, self.detector_size))
        if side >= min(width, height) or side * side > self.cfg.full_frame_fraction * width * height:
            return None
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(np.clip(cx - side / 2, 0, width - side))
        top = int(np.clip(cy - side / 2, 0, height - side))
        return left, top, left + side, top + side

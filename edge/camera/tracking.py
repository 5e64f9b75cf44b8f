"""Multi-object tracking, ByteTrack style, on `supervision.Detections`.

supervision 0.31 no longer ships ByteTrack (it moved to the `trackers` package, which requires the
non-headless `opencv-python` and would clobber the box's OpenCV), so this is the same algorithm kept
small: constant-velocity prediction, IoU matching by the Hungarian method (scipy), high-score detections
first, then low-score ones to keep existing tracks alive through occlusion. Time-based (seconds), so it
stays correct when the motion gate skips frames. Classes are voted over a track's life so a car that
flickers to "truck" for a frame is still counted as a car.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import supervision as sv
from scipy.optimize import linear_sum_assignment

from edge.camera.config import TrackerConfig
from edge.camera.detector import class_names


@dataclass
class Track:
    track_id: int
    xyxy: np.ndarray
    confidence: float
    last_t: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # px/s per box edge
    hits: int = 1
    votes: Counter[str] = field(default_factory=Counter)

    def predict(self, t: float) -> np.ndarray:
        return self.xyxy + self.velocity * (t - self.last_t)

    def update(self, xyxy: np.ndarray, confidence: float, name: str, t: float) -> None:
        dt = t - self.last_t
        if dt > 0:
            measured = (xyxy - self.xyxy) / dt
            self.velocity = 0.6 * self.velocity + 0.4 * measured if self.hits > 1 else measured
        self.xyxy, self.confidence, self.last_t = xyxy, confidence, t
        self.hits += 1
        self.votes[name] += 1

    @property
    def class_name(self) -> str:
        return self.votes.most_common(1)[0][0]


def _match(tracks: np.ndarray, dets: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    if len(tracks) == 0 or len(dets) == 0:
        return []
    iou = sv.box_iou_batch(tracks, dets)
    rows, cols = linear_sum_assignment(-iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if iou[r, c] >= min_iou]


class ByteTracker:
    """`update(detections, t)` returns the confirmed tracks seen in this frame, with `tracker_id`."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self.tracks: list[Track] = []
        self.next_id = 1
        self.removed: list[int] = []  # ids dropped by the last update, for per-track state elsewhere

    def update(self, detections: sv.Detections, t: float) -> sv.Detections:
        names = class_names(detections)
        conf = detections.confidence if detections.confidence is not None else np.ones(len(detections))
        high = np.flatnonzero(conf >= self.cfg.high_conf)
        low = np.flatnonzero((conf >= self.cfg.low_conf) & (conf < self.cfg.high_conf))
        predicted = np.array([tr.predict(t) for tr in self.tracks], np.float32).reshape(-1, 4)
        matched: dict[int, int] = {}  # track index -> detection index

        for r, c in _match(predicted, detections.xyxy[high], self.cfg.match_iou):
            matched[r] = int(high[c])
        rest = [i for i in range(len(self.tracks)) if i not in matched]
        for r, c in _match(predicted[rest], detections.xyxy[low], 0.5):
            matched[rest[r]] = int(low[c])

        for r, d in matched.items():
            self.tracks[r].update(detections.xyxy[d].astype(np.float32), float(conf[d]), str(names[d]), t)
        used = set(matched.values())
        for i in high.tolist():
            if i not in used:
                track = Track(self.next_id, detections.xyxy[i].astype(np.float32), float(conf[i]), t)
                track.votes[str(names[i])] += 1
                self.tracks.append(track)
                self.next_id += 1

        keep: list[Track] = []
        self.removed = []
        for tr in self.tracks:
            tentative_lost = tr.hits < self.cfg.min_hits and tr.last_t < t
            if tentative_lost or t - tr.last_t > self.cfg.lost_s:
                self.removed.append(tr.track_id)
            else:
                keep.append(tr)
        self.tracks = keep
        return self.current(t)

    def current(self, t: float) -> sv.Detections:
        """Confirmed tracks updated at time t."""
        return _as_detections([tr for tr in self.tracks if tr.hits >= self.cfg.min_hits and tr.last_t == t])

    def confirmed(self) -> sv.Detections:
        """All confirmed tracks at their last position (carried over while the detector is idle)."""
        return _as_detections([tr for tr in self.tracks if tr.hits >= self.cfg.min_hits])


def _as_detections(live: list[Track]) -> sv.Detections:
    if not live:
        return sv.Detections.empty()
    return sv.Detections(
        xyxy=np.array([tr.xyxy for tr in live], np.float32),
        confidence=np.array([tr.confidence for tr in live], np.float32),
        class_id=np.zeros(len(live), int),
        tracker_id=np.array([tr.track_id for tr in live], int),
        data={"class_name": np.array([tr.class_name for tr in live], dtype=object)},
    )

"""Multi-object tracking, SORT/ByteTrack style, on `supervision.Detections`.

Each track is a constant-velocity Kalman filter on (centre x, centre y, aspect w/h, height), so a
coasting prediction moves the whole box and keeps its shape (extrapolating each box edge on its own
shrinks or inverts it). Association is two-stage as in ByteTrack: high-score detections first, then
low-score ones to keep tracks alive through partial occlusion. The gate accepts a pair when the boxes
overlap enough *or* the centres are close relative to the box height, because small boxes that move a
box width between frames have no overlap at all; the gate widens with the time a track has been
unseen, which re-identifies an object after a short gap (an occlusion, a missed detection, frames the
motion gate skipped) instead of starting a second track that would count it again.

Time-based (seconds), so it stays correct when frames are skipped. Classes are voted over a track's
life so a car that flickers to "truck" for a frame is still counted as a car.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np
import supervision as sv
from scipy.optimize import linear_sum_assignment

from edge.camera.config import TrackerConfig
from edge.camera.detector import class_names

INVALID = 1e6
BESIDE_OVERLAP = 0.6  # share of the smaller box inside a tracked one: the same object seen twice
LOOK_WEIGHT = 2.0  # cost of fully different colours, against 1 for no overlap
# Noise scaled by the box height, per 0.1 s (ByteTrack/DeepSORT weights at 10 frames/s).
STD_POS, STD_VEL = 1 / 20, 1 / 160
H = np.hstack([np.eye(4), np.zeros((4, 4))])


def xyxy_to_xyah(b: np.ndarray) -> np.ndarray:
    w, h = b[2] - b[0], max(float(b[3] - b[1]), 1.0)
    return np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2, w / h, h], np.float64)


def xyah_to_xyxy(s: np.ndarray) -> np.ndarray:
    cx, cy, a, h = s[:4]
    h = max(float(h), 1.0)
    w = max(float(a), 0.05) * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


@dataclass
class Track:
    track_id: int
    mean: np.ndarray  # cx, cy, a, h and their rates per second
    cov: np.ndarray
    confidence: float
    last_t: float
    hits: int = 1
    votes: Counter[str] = field(default_factory=Counter)
    look: np.ndarray | None = None  # colour histogram, averaged over the track's matches

    @classmethod
    def start(cls, track_id: int, xyxy: np.ndarray, confidence: float, name: str, t: float) -> Track:
        z = xyxy_to_xyah(xyxy)
        h = z[3]
        std = np.array(
            [2 * STD_POS * h, 2 * STD_POS * h, 1e-2, 2 * STD_POS * h]
            + [10 * STD_VEL * h * 10] * 2
            + [1e-4, 10 * STD_VEL * h * 10]
        )
        track = cls(track_id, np.r_[z, np.zeros(4)], np.diag(std**2), confidence, t)
        track.votes[name] += 1
        return track

    def predict(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """State mean and covariance at time t (the track itself is not changed)."""
        dt = max(t - self.last_t, 0.0)
        f = np.eye(8)
        f[:4, 4:] = dt * np.eye(4)
        h = self.mean[3]
        scale = dt / 0.1
        q = (
            np.array(
                [
                    STD_POS * h,
                    STD_POS * h,
                    1e-2,
                    STD_POS * h,
                    STD_VEL * h * 10,
                    STD_VEL * h * 10,
                    1e-5,
                    STD_VEL * h * 10,
                ]
            )
            ** 2
            * scale
        )
        return f @ self.mean, f @ self.cov @ f.T + np.diag(q)

    def box_at(self, t: float) -> np.ndarray:
        return xyah_to_xyxy(self.predict(t)[0])

    def update(self, xyxy: np.ndarray, confidence: float, name: str, t: float, look: np.ndarray | None = None) -> None:
        if look is not None:
            self.look = look if self.look is None else 0.8 * self.look + 0.2 * look
        mean, cov = self.predict(t)
        h = mean[3]
        r = np.diag([STD_POS * h, STD_POS * h, 1e-1, STD_POS * h]) ** 2
        s = H @ cov @ H.T + r
        gain = cov @ H.T @ np.linalg.inv(s)
        self.mean = mean + gain @ (xyxy_to_xyah(xyxy) - H @ mean)
        self.cov = (np.eye(8) - gain @ H) @ cov
        self.confidence, self.last_t = confidence, t
        self.hits += 1
        self.votes[name] += 1

    @property
    def xyxy(self) -> np.ndarray:
        return xyah_to_xyxy(self.mean)

    @property
    def class_name(self) -> str:
        return self.votes.most_common(1)[0][0]


def appearance(image: np.ndarray | None, boxes: np.ndarray) -> list[np.ndarray | None]:
    """Hue-saturation histogram of each box's middle (clothes, paint): tells apart two objects that
    pass each other, where position and motion alone swap their identities."""
    if image is None:
        return [None] * len(boxes)
    out: list[np.ndarray | None] = []
    height, width = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        w, h = x1 - x0, y1 - y0
        a, b = int(max(0, x0 + 0.2 * w)), int(min(width, x1 - 0.2 * w))
        c, d = int(max(0, y0 + 0.1 * h)), int(min(height, y1 - 0.1 * h))
        if b - a < 2 or d - c < 2:
            out.append(None)
            continue
        hsv = cv2.cvtColor(image[c:d, a:b], cv2.COLOR_BGR2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, [12, 4], [0, 180, 0, 256]).ravel()
        out.append(hist / max(float(hist.sum()), 1.0))
    return out


def _look_distance(tracks: list[Track], looks: list[np.ndarray | None]) -> np.ndarray:
    """Bhattacharyya distance 0 (same colours) .. 1 (disjoint); 0.3 where either is unknown."""
    out = np.full((len(tracks), len(looks)), 0.3)
    for i, tr in enumerate(tracks):
        if tr.look is None:
            continue
        for j, look in enumerate(looks):
            if look is not None:
                bc = float(np.sum(np.sqrt(tr.look * look)))
                out[i, j] = float(np.sqrt(max(0.0, 1.0 - bc)))
    return out


def _cost(
    predicted: np.ndarray,
    gaps: np.ndarray,
    dets: np.ndarray,
    min_iou: float,
    max_dist: float,
    looks: np.ndarray | None = None,
) -> np.ndarray:
    """Pair cost (lower is better), INVALID outside the gate: overlap, or centres within
    `max_dist` box heights (wider for tracks unseen longer), with a similar height; colours break ties."""
    iou = sv.box_iou_batch(predicted, dets)
    pc = (predicted[:, :2] + predicted[:, 2:]) / 2
    dc = (dets[:, :2] + dets[:, 2:]) / 2
    ph = np.maximum(predicted[:, 3] - predicted[:, 1], 1.0)
    dh = np.maximum(dets[:, 3] - dets[:, 1], 1.0)
    dist = np.linalg.norm(pc[:, None, :] - dc[None, :, :], axis=2) / ph[:, None]
    ratio = dh[None, :] / ph[:, None]
    reach = max_dist * (1.0 + np.minimum(gaps, 2.0))[:, None]
    ok = ((iou >= min_iou) | (dist <= reach)) & (ratio > 0.6) & (ratio < 1.67)
    cost = (1.0 - iou) + 0.5 * dist
    if looks is not None and looks.size:
        cost = cost + LOOK_WEIGHT * looks
    return np.where(ok, cost, INVALID)


def _beside(box: np.ndarray, taken: list[np.ndarray]) -> bool:
    """A second box on an object already tracked this frame (NMS keeps pairs that overlap little
    by IoU, e.g. a whole person and their legs): starting a track on it would count the object twice.
    The test is how much of the smaller box lies inside the other, not how close the centres are: two
    people walking side by side have centres well within half a body height yet overlap little, and
    are two objects (NMS at IoU 0.45 leaves equal boxes sharing at most ~62 % of their area)."""
    if not taken:
        return False
    others = np.asarray(taken, np.float32)
    w = np.clip(np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0]), 0, None)
    h = np.clip(np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1]), 0, None)
    area = max(float((box[2] - box[0]) * (box[3] - box[1])), 1.0)
    other_area = np.maximum((others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]), 1.0)
    return bool((w * h / np.minimum(area, other_area) >= BESIDE_OVERLAP).any())


def _match(cost: np.ndarray) -> list[tuple[int, int]]:
    if cost.size == 0:
        return []
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < INVALID]


class ByteTracker:
    """`update(detections, t)` returns the confirmed tracks seen in this frame, with `tracker_id`."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self.cfg = cfg
        self.tracks: list[Track] = []
        self.next_id = 1
        self.removed: list[int] = []  # ids dropped by the last update, for per-track state elsewhere

    def update(self, detections: sv.Detections, t: float, image: np.ndarray | None = None) -> sv.Detections:
        """Associate this frame's detections; `image` (the frame they came from) adds colour cues."""
        names = class_names(detections)
        conf = detections.confidence if detections.confidence is not None else np.ones(len(detections))
        high = np.flatnonzero(conf >= self.cfg.high_conf)
        low = np.flatnonzero((conf >= self.cfg.low_conf) & (conf < self.cfg.high_conf))
        predicted = np.array([tr.box_at(t) for tr in self.tracks], np.float32).reshape(-1, 4)
        gaps = np.array([t - tr.last_t for tr in self.tracks], np.float64)
        boxes = detections.xyxy.astype(np.float32)
        looks = appearance(image, boxes)
        colour = _look_distance(self.tracks, looks)
        matched: dict[int, int] = {}  # track index -> detection index

        cost = _cost(predicted, gaps, boxes[high], self.cfg.match_iou, self.cfg.match_distance, colour[:, high])
        for r, c in _match(cost):
            matched[r] = int(high[c])
        rest = [i for i in range(len(self.tracks)) if i not in matched]
        cost = _cost(predicted[rest], gaps[rest], boxes[low], 0.5, 0.5 * self.cfg.match_distance, colour[rest][:, low])
        for r, c in _match(cost):
            matched[rest[r]] = int(low[c])

        for r, d in matched.items():
            self.tracks[r].update(boxes[d], float(conf[d]), str(names[d]), t, looks[d])
        used = set(matched.values())
        taken = [boxes[d] for d in used]
        for i in high.tolist():
            if i not in used and not _beside(boxes[i], taken):
                track = Track.start(self.next_id, boxes[i], float(conf[i]), str(names[i]), t)
                track.look = looks[i]
                self.tracks.append(track)
                self.next_id += 1
                taken.append(boxes[i])

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

    def predicted(self, t: float, max_gap_s: float) -> sv.Detections:
        """Confirmed tracks seen within `max_gap_s`, at their Kalman prediction for time t (frames the
        motion gate let the detector skip)."""
        live = [tr for tr in self.tracks if tr.hits >= self.cfg.min_hits and t - tr.last_t <= max_gap_s]
        dets = _as_detections(live)
        if live:
            dets.xyxy = np.array([tr.box_at(t) for tr in live], np.float32)
        return dets

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

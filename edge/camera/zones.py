"""Zones: time occupancy, queue length and stopped vehicles, fed tracked objects frame by frame.

Occupancy is what a loop detector reports: the share of time at least one object is in the zone.
Queue length is the ground distance from the zone's `queue_head` to the farthest stopped vehicle in it
(needs the homography). A vehicle stopped in the zone for `stopped_after_s` raises one event per track.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.camera.config import ZoneConfig


@dataclass
class ZoneFrame:
    """What a zone needs about the tracked objects of one frame (parallel arrays)."""

    t: float
    tracker_ids: np.ndarray
    names: np.ndarray
    points: np.ndarray  # image anchor points [N,2]
    world: np.ndarray | None  # ground metres [N,2], None without homography
    stopped: np.ndarray  # bool [N]


@dataclass
class ZoneReading:
    occupancy_pct: float | None = None
    queue_m: float | None = None


@dataclass
class ZoneMonitor:
    cfg: ZoneConfig
    head_world: np.ndarray | None = None
    polygon: np.ndarray = field(init=False)
    _last_t: float | None = None
    _occupied: bool = False
    _interval: list[float] = field(default_factory=lambda: [0.0, 0.0])  # occupied s, observed s
    _queue_max: float | None = None
    _window: deque[tuple[float, float, bool]] = field(default_factory=deque)  # (t, dt, occupied)
    _stopped_since: dict[int, float] = field(default_factory=dict)
    _reported: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.polygon = np.asarray(self.cfg.polygon, np.float32).reshape(-1, 1, 2)

    def inside(self, points: np.ndarray) -> np.ndarray:
        return np.array(
            [cv2.pointPolygonTest(self.polygon, (float(x), float(y)), False) >= 0 for x, y in points], bool
        )

    def update(self, frame: ZoneFrame) -> list[int]:
        """Account one frame; returns tracker ids that have just been stopped for too long."""
        wanted = np.isin(frame.names.astype(str), self.cfg.classes) if len(frame.names) else np.zeros(0, bool)
        inside = self.inside(frame.points) & wanted if len(frame.points) else np.zeros(0, bool)
        if self._last_t is not None and frame.t > self._last_t:
            dt = frame.t - self._last_t
            self._interval[0] += dt if self._occupied else 0.0
            self._interval[1] += dt
            self._window.append((frame.t, dt, self._occupied))
        self._last_t, self._occupied = frame.t, bool(inside.any())
        queue = inside & frame.stopped
        if self.cfg.queue_head is not None and frame.world is not None and self.head_world is not None:
            length = (
                float(np.linalg.norm(frame.world[queue] - self.head_world, axis=1).max())
                if queue.any()
                else 0.0
            )
            self._queue_max = max(self._queue_max or 0.0, length)
        return self._stopped_events(frame, queue)

    def _stopped_events(self, frame: ZoneFrame, stopped_inside: np.ndarray) -> list[int]:
        if self.cfg.stopped_after_s is None:
            return []
        now_stopped = {int(t) for t in frame.tracker_ids[stopped_inside]}
        for tid in list(self._stopped_since):
            if tid not in now_stopped:
                del self._stopped_since[tid]
        fired = []
        for tid in now_stopped:
            since = self._stopped_since.setdefault(tid, frame.t)
            if frame.t - since >= self.cfg.stopped_after_s and tid not in self._reported:
                self._reported.add(tid)
                fired.append(tid)
        return fired

    def window_occupancy(self, now: float, window_s: float) -> float | None:
        while self._window and self._window[0][0] < now - window_s:
            self._window.popleft()
        total = sum(dt for _, dt, _ in self._window)
        return 100.0 * sum(dt for _, dt, occ in self._window if occ) / total if total > 0 else None

    def take(self) -> ZoneReading:
        """This interval's occupancy and longest queue, then reset."""
        occupied, observed = self._interval
        reading = ZoneReading(100.0 * occupied / observed if observed > 0 else None, self._queue_max)
        self._interval, self._queue_max = [0.0, 0.0], None
        return reading

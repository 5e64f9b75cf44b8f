"""The camera pipeline: source -> motion gate -> detector -> tracker -> lines, zones, speed -> numbers.

`CameraPipeline.process(frame)` is one analysed frame with no I/O (tests drive it directly);
`run(...)` reads the source and hands contract objects to the caller's callbacks, which the edge agent
wires to its outbox. No MQTT here, and no image leaves except through `snapshot()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import supervision as sv

from contract.messages import CountSample, Event, MetricSample, now_ms
from edge.camera.aggregate import IntervalClock, SpeedTally, count_samples, traffic_sample
from edge.camera.backends import build_detector
from edge.camera.camera_motion import CameraMotionDetector
from edge.camera.config import VEHICLES, CameraConfig
from edge.camera.congestion import CongestionState, congestion_level
from edge.camera.detector import Detector, class_names
from edge.camera.lines import ANCHORS, Crossing, LineCounter
from edge.camera.media import resolve_uri
from edge.camera.motion import MotionGate
from edge.camera.snapshot import snapshot_jpeg
from edge.camera.source import Frame, FrameSource, open_capture
from edge.camera.speed import GroundPlane, SpeedEstimator
from edge.camera.tracking import ByteTracker
from edge.camera.zones import ZoneFrame, ZoneMonitor

log = logging.getLogger(__name__)

PIXEL_STOPPED = 0.1 * 3.6  # without a ground plane: under 0.1 box heights per second is "stopped"
SNAPSHOT_CONF = 0.15  # redact on weaker evidence than we count on
SNAPSHOT_FRAMES = 15  # frames read for a snapshot: what moved in them is redacted


@dataclass
class FrameResult:
    """What one analysed frame produced."""

    frame: Frame
    tracked: sv.Detections
    ran_detector: bool
    inference_ms: float | None
    crossings: list[Crossing] = field(default_factory=list)
    counts: list[CountSample] = field(default_factory=list)
    metrics: MetricSample | None = None
    events: list[Event] = field(default_factory=list)
    final: bool = False  # the end-of-stream flush, not an analysed frame


@dataclass
class RunSummary:
    frames: int = 0
    detector_runs: int = 0
    wall_s: float = 0.0
    dropped_frames: int = 0
    totals: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (line, class, direction)
    inference_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


class CameraPipeline:
    def __init__(self, config: CameraConfig, detector: Detector | None = None) -> None:
        self.config = config
        self.detector = detector or build_detector(config.model, config.classes)
        self.model_id = self.detector.model_id
        self.gate = MotionGate(config.motion, self.detector.input_size)
        self.tracker = ByteTracker(config.tracker)
        # ByteTrack's second stage needs the weak detections too: ask the detector down to low_conf.
        self.detect_conf = min(config.tracker.low_conf, getattr(config.model, "conf", 1.0))
        self.lines = [LineCounter(cfg, config.classes) for cfg in config.lines]
        self.ground = GroundPlane(config.homography) if config.homography else None
        self.zones = [ZoneMonitor(z, self._head_world(z.queue_head)) for z in config.zones]
        self.speed = SpeedEstimator()
        self.pixel_speed = SpeedEstimator()
        self.tally = SpeedTally()
        self.congestion = CongestionState(config.congestion.event_level)
        self.count_clock = IntervalClock(config.intervals.counts_s)
        self.metric_clock = IntervalClock(config.intervals.metrics_s)
        self.totals: Counter[tuple[str, str, str]] = Counter()
        self.last_tracked = sv.Detections.empty()
        self.last_frame: Frame | None = None  # the newest analysed frame (for the snapshot command)
        self.last_motion = np.zeros((0, 4), np.float32)  # the gate's moving blobs in that frame
        self._speed_window: deque[tuple[float, float]] = deque()
        self._moved_in_interval = False  # a metrics interval the camera moved in reports nothing
        self._last_detect_t = -np.inf
        self.camera_motion = CameraMotionDetector() if config.motion.camera_motion else None
        self._last_t: float | None = None
        self._next_congestion_t = 0.0

    def _head_world(self, point: tuple[float, float] | None) -> np.ndarray | None:
        if point is None or self.ground is None:
            return None
        return self.ground.to_world(np.array([point]))[0]

    # -- one frame -------------------------------------------------------------------------------
    def _detect(self, frame: Frame) -> tuple[sv.Detections | None, float | None]:
        decision = self.gate.decide(frame.image, frame.t)
        self.last_motion = decision.boxes
        if not decision.run:
            return None, None
        if decision.reason in ("motion", "full_motion") and self._motion_is_tracked(decision.boxes, frame.t):
            return None, None
        self._last_detect_t = frame.t
        image, (x0, y0) = frame.image, (0, 0)
        if decision.region is not None:
            x0, y0, x1, y1 = decision.region
            image = frame.image[y0:y1, x0:x1]
        started = time.perf_counter()
        dets = self.detector.detect(image, conf=self.detect_conf)
        ms = (time.perf_counter() - started) * 1000
        if decision.region is None:
            return dets, ms
        dets.xyxy = dets.xyxy + np.array([x0, y0, x0, y0], np.float32)
        return sv.Detections.merge([dets, self._carried_outside(decision.region)]), ms

    def _motion_is_tracked(self, blobs: np.ndarray, t: float) -> bool:
        """Every moving blob lies on a track seen moments ago, whose motion the Kalman filter predicts:
        the detector can wait (at most `motion.track_interval_s`); a blob elsewhere is something new."""
        if t - self._last_detect_t >= self.config.motion.track_interval_s:
            return False
        boxes = self.tracker.predicted(t, max_gap_s=self.config.motion.track_interval_s).xyxy
        if len(boxes) == 0:
            return False
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        grown = boxes + np.stack([-0.3 * w, -0.2 * h, 0.3 * w, 0.2 * h], axis=1)
        cx, cy = (blobs[:, 0] + blobs[:, 2]) / 2, (blobs[:, 1] + blobs[:, 3]) / 2
        inside = (
            (cx[:, None] >= grown[None, :, 0])
            & (cx[:, None] <= grown[None, :, 2])
            & (cy[:, None] >= grown[None, :, 1])
            & (cy[:, None] <= grown[None, :, 3])
        )
        return bool(inside.any(axis=1).all())

    def _carried_outside(self, region: tuple[int, int, int, int]) -> sv.Detections:
        """Tracks wholly outside the crop did not move (no motion there): keep them as detections."""
        prev = self.last_tracked
        if len(prev) == 0:
            return sv.Detections.empty()
        x0, y0, x1, y1 = region
        b = prev.xyxy
        outside = (b[:, 2] <= x0) | (b[:, 0] >= x1) | (b[:, 3] <= y0) | (b[:, 1] >= y1)
        if not outside.any():
            return sv.Detections.empty()
        return sv.Detections(
            xyxy=b[outside],
            confidence=np.maximum(np.asarray(prev.confidence)[outside], self.config.tracker.high_conf),
            class_id=np.zeros(int(outside.sum()), int),
            data={"class_name": class_names(prev)[outside]},
        )

    def process(self, frame: Frame) -> FrameResult:
        self.last_frame = frame
        still = FrameResult(frame, sv.Detections.empty(), False, None)
        if self._camera_moving(frame, still):  # nothing is reported meanwhile: the detector rests too
            self.last_tracked = sv.Detections.empty()
            self._close_intervals(frame.epoch_ms, still)
            return still
        dets, ms = self._detect(frame)
        if dets is not None:
            tracked = self.tracker.update(dets, frame.t, frame.image)
            gone = self.tracker.removed
            for counter in self.lines:
                counter.forget(gone)
            self.speed.forget(gone)
            self.pixel_speed.forget(gone)
            self.last_tracked = tracked
        elif self.gate.last_reason in ("motion", "full_motion"):
            # moving, but only where tracks are: their Kalman predictions stand in for the detector
            tracked = self.tracker.predicted(frame.t, max_gap_s=self.config.motion.track_interval_s)
        else:
            tracked = self.last_tracked  # nothing moved: same objects, same places
        result = FrameResult(frame, tracked, dets is not None, ms, events=still.events)
        for counter in self.lines:
            for crossing in counter.trigger(tracked, frame.t):
                self.totals[(crossing.line, crossing.cls, crossing.direction)] += 1
                result.crossings.append(crossing)
                if crossing.wrong_way:
                    result.events.append(self._event(frame, "wrong_way", "warning", crossing.__dict__))
        self._measure(frame, tracked, result)
        self._close_intervals(frame.epoch_ms, result)
        return result

    def _camera_moving(self, frame: Frame, result: FrameResult) -> bool:
        """While the camera itself moves, pixel geometry means nothing: no crossings, speeds, zones or
        congestion; one event says so when it starts and one when the view is steady again."""
        if self.camera_motion is None:
            return False
        dt = frame.t - self._last_t if self._last_t is not None else 0.1
        self._last_t = frame.t
        state = self.camera_motion.update(frame.image, frame.t, dt)
        self._moved_in_interval |= state.moving
        if state.changed:
            kind = "camera_moving" if state.moving else "camera_steady"
            details: dict[str, object] = {
                "reason": "global image motion: counts, speeds and congestion suspended"
                if state.moving
                else "view steady again: counting resumed",
                "moving_share": round(state.moving_share, 2),
            }
            result.events.append(self._event(frame, kind, "warning" if state.moving else "info", details))
            for counter in self.lines:  # sides seen from a moving camera are not sides of the line
                counter.sides.clear()
            self.speed = SpeedEstimator()
            self.pixel_speed = SpeedEstimator()
            self._speed_window.clear()
        return state.moving

    def _measure(self, frame: Frame, tracked: sv.Detections, result: FrameResult) -> None:
        n = len(tracked)
        ids = tracked.tracker_id if tracked.tracker_id is not None else np.zeros(0, int)
        names = class_names(tracked)
        points = tracked.get_anchors_coordinates(ANCHORS["bottom_center"]) if n else np.zeros((0, 2))
        world = self.ground.to_world(points) if self.ground is not None else None
        stopped = np.zeros(n, bool)
        if world is not None:
            kmh = self.speed.update(frame.t, ids, world)
            vehicle = {int(t): kmh[int(t)] for t, c in zip(ids, names, strict=True) if c in VEHICLES and int(t) in kmh}
            self.tally.add(vehicle)
            stopped = np.array([kmh.get(int(t), np.inf) < self.config.congestion.stopped_kmh for t in ids], bool)
            if vehicle and frame.t >= self._next_congestion_t:
                self._speed_window.append((frame.t, float(np.mean(list(vehicle.values())))))
        elif self.zones:  # pixel speeds only serve the zones' stopped-vehicle judgement
            heights = (tracked.xyxy[:, 3] - tracked.xyxy[:, 1]).clip(min=1.0) if n else np.zeros(0)
            pix = self.pixel_speed.update(frame.t, ids, np.asarray(points) / heights.reshape(-1, 1))
            stopped = np.array([pix.get(int(t), np.inf) < PIXEL_STOPPED for t in ids], bool)
        zone_frame = ZoneFrame(frame.t, np.asarray(ids), np.asarray(names), points, world, stopped)
        for zone in self.zones:
            for tid in zone.update(zone_frame):
                cls = str(names[list(ids).index(tid)])
                details = {"zone": zone.cfg.name, "tracker_id": tid, "class": cls}
                result.events.append(self._event(frame, "stopped_vehicle", "warning", details))
        if frame.t >= self._next_congestion_t:
            self._next_congestion_t = frame.t + 1.0
            self._judge_congestion(frame, result)

    def _judge_congestion(self, frame: Frame, result: FrameResult) -> None:
        window = self.config.congestion.window_s
        while self._speed_window and self._speed_window[0][0] < frame.t - window:
            self._speed_window.popleft()
        occ = [o for z in self.zones if (o := z.window_occupancy(frame.t, window)) is not None]
        speed = float(np.mean([s for _, s in self._speed_window])) if self._speed_window else None
        level = congestion_level(max(occ) if occ else None, speed, self.config.congestion.free_flow_kmh)
        change = self.congestion.update(frame.t, level)
        if change is not None:
            severity = "warning" if change.kind == "congestion_start" else "info"
            details: dict[str, object] = {
                "level": change.level,
                "occupancy_pct": max(occ) if occ else None,
                "speed_kmh": speed,
            }
            if change.duration_s is not None:
                details["duration_s"] = round(change.duration_s, 1)
            result.events.append(self._event(frame, change.kind, severity, details))

    def _event(self, frame: Frame, kind: str, severity: str, details: dict[str, object]) -> Event:
        payload = {"camera": self.config.camera_id, **details}
        return Event.model_validate({"ts": frame.epoch_ms, "kind": kind, "severity": severity, "details": payload})

    # -- intervals -------------------------------------------------------------------------------
    def _close_intervals(self, epoch_ms: int, result: FrameResult, final: bool = False) -> None:
        closed = self.count_clock.start_ms if final else self.count_clock.advance(epoch_ms)
        if closed is not None:
            for counter in self.lines:
                classes = [c for c in self.config.classes if c in counter.classes]
                result.counts += count_samples(
                    closed, self.config.intervals.counts_s, counter.cfg.name, classes, counter.take_counts()
                )
        closed = self.metric_clock.start_ms if final else self.metric_clock.advance(epoch_ms)
        if closed is not None:
            readings = [z.take() for z in self.zones]
            speed = self.tally.take()
            if not self._moved_in_interval:  # queues and speeds seen from a moving camera are not real
                result.metrics = traffic_sample(closed, readings, speed, self.config.congestion.free_flow_kmh)
            self._moved_in_interval = bool(self.camera_motion and self.camera_motion.moving)

    # -- driving it ------------------------------------------------------------------------------
    def frames(self, stop_event: threading.Event | None = None) -> Iterator[FrameResult]:
        """Iterate analysed frames from the configured source; the open intervals close at the end."""
        source = FrameSource(self.config.source, stop_event)
        self.source = source
        last: Frame | None = None
        for frame in source:
            last = frame
            yield self.process(frame)
        if last is not None:
            tail = FrameResult(last, self.last_tracked, False, None, final=True)
            self._close_intervals(last.epoch_ms, tail, final=True)
            yield tail

    def run(
        self,
        on_counts: Callable[[list[CountSample]], None] | None = None,
        on_metrics: Callable[[MetricSample], None] | None = None,
        on_event: Callable[[Event], None] | None = None,
        on_health: Callable[[MetricSample], None] | None = None,
        stop_event: threading.Event | None = None,
        max_seconds: float | None = None,
    ) -> RunSummary:
        """Blocking loop for the edge agent: call from a thread; set `stop_event` to end it."""
        summary = RunSummary()
        started = time.monotonic()
        health_due = started + self.config.intervals.health_s
        window_frames, window_ms, window_start = 0, [], started
        stop = stop_event or threading.Event()
        for res in self.frames(stop):
            summary.frames += not res.final
            window_frames += 1
            if res.inference_ms is not None:
                summary.detector_runs += 1
                summary.inference_ms.append(res.inference_ms)
                window_ms.append(res.inference_ms)
            if res.counts and on_counts:
                on_counts(res.counts)
            if res.metrics and on_metrics:
                on_metrics(res.metrics)
            for event in res.events:
                if on_event:
                    on_event(event)
            now = time.monotonic()
            if now >= health_due and on_health:
                on_health(self.health_sample(window_frames / (now - window_start), window_ms))
                health_due, window_frames, window_ms, window_start = (
                    now + self.config.intervals.health_s,
                    0,
                    [],
                    now,
                )
            if max_seconds is not None and now - started >= max_seconds:
                stop.set()
        summary.wall_s = time.monotonic() - started
        summary.dropped_frames = self.source.stats.dropped
        summary.totals = self.totals
        log.info("camera %s done: %d frames, totals %s", self.config.camera_id, summary.frames, dict(self.totals))
        return summary

    def health_sample(self, fps: float, inference_ms: list[float]) -> MetricSample:
        values = {"analysis_fps": round(fps, 2), "dropped_frames": float(self.source.stats.dropped)}
        if inference_ms:
            values["inference_ms"] = round(float(np.mean(inference_ms)), 2)
        return MetricSample(ts=now_ms(), values=values)

    def snapshot(self, image: np.ndarray | None = None) -> bytes:
        """One redacted JPEG of `image`, or of a fresh frame from the source: the source is read for
        `SNAPSHOT_FRAMES` frames so that whatever moves in them is redacted too."""
        moving = np.zeros((0, 4), np.float32)
        if image is None:
            image, moving = read_with_motion(self.config)
        return snapshot_jpeg(image, self.detector.detect(image, conf=SNAPSHOT_CONF), moving=moving)


def read_with_motion(config: CameraConfig, frames: int = SNAPSHOT_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """The last of `frames` frames read from the source, and every blob [N,4] the motion gate saw move
    in them (frame pixels)."""
    gate = MotionGate(config.motion.model_copy(update={"enabled": True}), config.model.input_size)
    cap = open_capture(resolve_uri(config.source.uri))
    image, blobs = None, [np.zeros((0, 4), np.float32)]
    try:
        for _ in range(frames):
            ok, frame = cap.read()
            if not ok:
                break
            image = frame
            blobs.append(gate.boxes(frame))
    finally:
        cap.release()
    if image is None:
        raise RuntimeError(f"no frame from {config.source.uri!r}")
    return image, np.concatenate(blobs)


def snapshot(config: CameraConfig, image: np.ndarray | None = None) -> bytes:
    """The technician's snapshot: one small JPEG with every detection and moving region pixelated."""
    return CameraPipeline(config).snapshot(image)

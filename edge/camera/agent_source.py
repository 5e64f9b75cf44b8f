"""The camera pipeline as a `Source` of the edge runtime: one box, one session, one outbox, one heartbeat.

`CameraSource` runs `CameraPipeline.run` in its own thread and forwards what it produces to the
agent's sink: per-interval counts, `traffic` metrics and events. Its health (analysis_fps,
inference_ms, dropped_frames) rides on the agent's heartbeat, and it answers the technician's
`snapshot` command -- the only way an image leaves the box:

    cmd/v1/{device_id}/snapshot   {"quality": 85}   (arguments optional)
    -> CommandReply.result = {"jpeg_b64": "<base64 of one JPEG>", "width": 320, "height": 180,
                              "frame_ts": <epoch ms of the frame>, "redacted": <regions pixelated>,
                              "model_id": "yolov3-tiny-coco@320"}

The JPEG is the newest analysed frame shrunk to 320 px on its long side, with every detection and
every moving region pixelated (`snapshot.py`: privacy that holds where the detector misses); it is
base64 inside the usual JSON reply so the reply topic carries one format for every command.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field

from contract.messages import CountSample, Event, MetricSample, now_ms
from edge.camera.backends import build_detector
from edge.camera.config import CameraConfig
from edge.camera.detector import Detector
from edge.camera.pipeline import SNAPSHOT_CONF, CameraPipeline, RunSummary
from edge.camera.snapshot import redaction_boxes, snapshot_jpeg, snapshot_size
from edge.remote import CommandError
from edge.source import CommandHandler, Sink, Source

log = logging.getLogger(__name__)
JOIN_S = 15.0


class SnapshotArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: int = Field(default=85, ge=30, le=95, description="JPEG quality")


class _SerialDetector:
    """One detector shared by the pipeline thread and the snapshot command, one call at a time."""

    def __init__(self, inner: Detector) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.input_size = inner.input_size
        self._lock = threading.Lock()

    def detect(self, frame: np.ndarray, conf: float | None = None) -> sv.Detections:
        with self._lock:
            return self.inner.detect(frame, conf)


class CameraSource(Source):
    """Video analytics feeding the agent. The model loads here, so a bad model fails before start."""

    name = "camera"

    def __init__(
        self, config: CameraConfig, *, detector: Detector | None = None, max_seconds: float | None = None
    ) -> None:
        self.config = config
        self.max_seconds = max_seconds
        self.pipeline = CameraPipeline(
            config, detector=_SerialDetector(detector or build_detector(config.model, config.classes))
        )
        self.sent: Counter[tuple[str, str, str]] = Counter()  # (line, class, direction) handed to the sink
        self.samples_sent = 0  # CountSamples handed to the sink, zeros included
        self.summary: RunSummary | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._stop = threading.Event()
        self._health: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._sink: Sink | None = None

    # -- Source ----------------------------------------------------------------------------------
    def start(self, sink: Sink) -> None:
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.config.camera_id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the pipeline; its open intervals are flushed to the sink before this returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_S)
            if self._thread.is_alive():
                log.warning("camera %s did not stop within %.0f s", self.config.camera_id, JOIN_S)

    def health(self) -> Mapping[str, float]:
        values = dict(self._health)
        source = getattr(self.pipeline, "source", None)
        if source is not None:
            values["dropped_frames"] = float(source.stats.dropped)
        if self.done.is_set():
            values["analysis_fps"] = 0.0  # the source ended or failed: nothing is being analysed
        return values

    def commands(self) -> Mapping[str, CommandHandler]:
        return {"snapshot": self.snapshot}

    def wait(self, timeout: float | None = None) -> RunSummary | None:
        """Block until the pipeline has ended (its source ran out, max_seconds, stop or failure)."""
        self.done.wait(timeout)
        return self.summary

    # -- the pipeline thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.summary = self.pipeline.run(
                on_counts=self._counts,
                on_metrics=self._metrics,
                on_event=self._event,
                on_health=self._on_health,
                stop_event=self._stop,
                max_seconds=self.max_seconds,
            )
        except Exception as exc:
            self.error = exc
            log.exception("camera %s failed", self.config.camera_id)
            self._event(
                Event(
                    ts=now_ms(),
                    kind="camera_fault",
                    severity="critical",
                    details={"camera": self.config.camera_id, "error": str(exc)[:500]},
                )
            )
        finally:
            self.done.set()

    def _counts(self, counts: Sequence[CountSample]) -> None:
        assert self._sink is not None
        self._sink.counts(counts)
        self.samples_sent += len(counts)
        for c in counts:
            self.sent[(c.line, c.cls, c.direction)] += c.count

    def _metrics(self, sample: MetricSample) -> None:
        assert self._sink is not None
        self._sink.metrics("traffic", [sample])

    def _event(self, event: Event) -> None:
        assert self._sink is not None
        self._sink.events([event])

    def _on_health(self, sample: MetricSample) -> None:
        self._health = {**self._health, **sample.values}

    # -- the snapshot command (agent thread) ----------------------------------------------------------
    def snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """The newest analysed frame as one JPEG with people and plates pixelated."""
        quality = SnapshotArgs.model_validate(args).quality
        frame = self.pipeline.last_frame
        if frame is None:
            raise CommandError("no frame analysed yet")
        image, moving = frame.image, self.pipeline.last_motion
        detections = self.pipeline.detector.detect(image, conf=SNAPSHOT_CONF)
        jpeg = snapshot_jpeg(image, detections, quality, moving=moving)
        height, width = snapshot_size(*image.shape[:2])
        log.info("snapshot of frame %d sent (%d bytes)", frame.index, len(jpeg))
        return {
            "jpeg_b64": base64.b64encode(jpeg).decode("ascii"),
            "width": width,
            "height": height,
            "frame_ts": frame.epoch_ms,
            "redacted": len(redaction_boxes(detections, image.shape[0], image.shape[1], moving=moving)),
            "model_id": self.pipeline.model_id,
        }

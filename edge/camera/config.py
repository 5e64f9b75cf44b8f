"""Camera box configuration: one YAML file per camera, validated once at start.

All image coordinates are pixels of the source frame (x right, y down). A counting line's "in"
direction is a crossing from the left-hand side of the directed segment p1 -> p2 to its right-hand
side as seen on screen; set `invert: true` to swap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Point = tuple[float, float]
CONTRACT_CLASSES = ["car", "motorbike", "bus", "truck", "bicycle", "person"]
VEHICLES = ["car", "motorbike", "bus", "truck"]


class _Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Cfg):
    uri: str = Field(description="video file path, rtsp:// or http:// URL, or a device index such as '0'")
    analysis_fps: float = Field(
        default=10.0, ge=0, le=120, description="frames analysed per second; 0 = every frame"
    )
    realtime: bool | None = Field(
        default=None, description="pace files at their native rate; default: live sources only"
    )
    loop: bool = Field(default=False, description="restart a file at its end (demo)")
    reconnect_min_s: float = Field(default=0.5, gt=0, description="first wait after a stream loss")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="cap of the jittered exponential backoff")


class OnnxModelConfig(_Cfg):
    type: Literal["onnx"] = "onnx"
    id: str = Field(
        default="yolov3-tiny-coco", description="registered model converted into models/cache on first use"
    )
    path: Path | None = Field(
        default=None, description="explicit ONNX file (YOLOv3-tiny, YOLOv8 or YOLO11 head)"
    )
    input_size: int = Field(
        default=416, ge=64, le=1280, multiple_of=32, description="square detector input (models/yolov3-tiny-coco.md)"
    )
    conf: float = Field(default=0.25, gt=0, lt=1, description="minimum detection score")
    iou: float = Field(default=0.45, gt=0, lt=1, description="NMS overlap threshold")
    threads: int = Field(default=2, ge=1, le=64, description="onnxruntime intra-op threads")


class UltralyticsModelConfig(_Cfg):
    type: Literal["ultralytics"]
    weights: str = Field(description="local .pt file (no hub downloads on the box)")
    input_size: int = Field(default=320, ge=64, le=1280, multiple_of=32)
    conf: float = Field(default=0.25, gt=0, lt=1)
    iou: float = Field(default=0.45, gt=0, lt=1)


ModelConfig = Annotated[OnnxModelConfig | UltralyticsModelConfig, Field(discriminator="type")]


class MotionConfig(_Cfg):
    enabled: bool = Field(default=True, description="off = run the detector on every analysed frame")
    height: int = Field(
        default=120, ge=32, le=720, description="height of the downscaled frame motion is computed on"
    )
    threshold: int = Field(default=25, ge=1, le=255, description="grey-level change that counts as motion")
    min_area: float = Field(
        default=0.0005, ge=0, le=1, description="smallest moving blob, fraction of the frame"
    )
    alpha: float = Field(default=0.1, gt=0, le=1, description="background update rate per analysed frame")
    refresh_s: float = Field(
        default=2.0, gt=0, description="full-frame detection at least this often (stopped objects)"
    )
    full_frame_fraction: float = Field(
        default=0.5, gt=0, le=1, description="motion region above this -> whole frame"
    )
    track_interval_s: float = Field(
        default=0.25,
        ge=0,
        le=5,
        description="while all motion is on tracked objects, detect this often and predict between; 0 = never skip",
    )
    camera_motion: bool = Field(
        default=True, description="suspend counts, speeds and congestion while the camera itself moves"
    )
    flicker: float = Field(
        default=0.6, gt=0, le=1, description="pixels moving more than this share of the time are ignored"
    )


class TrackerConfig(_Cfg):
    high_conf: float = Field(
        default=0.4, gt=0, lt=1, description="detections that start and first-match tracks"
    )
    low_conf: float = Field(
        default=0.1, gt=0, lt=1, description="weaker detections only extend existing tracks"
    )
    match_iou: float = Field(default=0.2, gt=0, lt=1, description="minimum IoU to associate a detection")
    match_distance: float = Field(
        default=0.6,
        gt=0,
        le=5,
        description="or: centres this many box heights apart at most (more for tracks unseen for a while)",
    )
    lost_s: float = Field(default=2.0, gt=0, description="how long a track survives without detections")
    min_hits: int = Field(default=2, ge=1, description="matches before a track is reported")


class LineConfig(_Cfg):
    name: str = Field(min_length=1, max_length=64, description="the CountSample `line`")
    points: tuple[Point, Point]
    invert: bool = Field(default=False, description="swap which crossing direction is 'in'")
    classes: list[str] | None = Field(
        default=None, description="classes counted here; default: all configured"
    )
    allowed: Literal["both", "in", "out"] = Field(
        default="both", description="the other direction raises wrong_way"
    )
    anchor: Literal["bottom_center", "center"] = Field(
        default="bottom_center", description="box point that crosses"
    )
    band_px: float = Field(
        default=4.0, ge=0, description="hysteresis half-width: jitter inside it never counts"
    )
    handoff_s: float = Field(
        default=1.5, ge=0, description="a new track near one that vanished this recently takes over its side"
    )
    dedupe_s: float = Field(
        default=1.0, ge=0, description="same direction, same place, another track within this: counted once"
    )


class ZoneConfig(_Cfg):
    name: str = Field(min_length=1, max_length=64)
    polygon: list[Point] = Field(min_length=3)
    classes: list[str] = Field(default_factory=lambda: list(VEHICLES), description="objects that occupy it")
    queue_head: Point | None = Field(default=None, description="stop-line point queues are measured from")
    stopped_after_s: float | None = Field(
        default=None, gt=0, description="raise stopped_vehicle after this long; off if unset"
    )


class HomographyConfig(_Cfg):
    image_points: tuple[Point, Point, Point, Point] = Field(description="four ground points in the image")
    world_points: tuple[Point, Point, Point, Point] | None = Field(
        default=None, description="the same points in metres"
    )
    width_m: float | None = Field(
        default=None, gt=0, description="or: the points are a rectangle's corners tl,tr,br,bl ..."
    )
    length_m: float | None = Field(
        default=None, gt=0, description="... of this width (tl-tr) and length (tr-br)"
    )

    @model_validator(mode="after")
    def _one_world_form(self) -> HomographyConfig:
        rect = self.width_m is not None and self.length_m is not None
        if rect == (self.world_points is not None):
            raise ValueError("give either world_points or both width_m and length_m")
        return self

    def world(self) -> list[Point]:
        if self.world_points is not None:
            return list(self.world_points)
        w, length = float(self.width_m or 0), float(self.length_m or 0)
        return [(0.0, 0.0), (w, 0.0), (w, length), (0.0, length)]


class CongestionConfig(_Cfg):
    free_flow_kmh: float = Field(
        default=50.0, gt=0, description="speed of an empty road; speed ratios are against it"
    )
    stopped_kmh: float = Field(
        default=3.0, ge=0, description="below this a vehicle is stopped (queues, stopped events)"
    )
    window_s: float = Field(default=60.0, gt=0, description="rolling window congestion events are judged on")
    event_level: int = Field(default=3, ge=1, le=4, description="level at which congestion_start is raised")


class IntervalConfig(_Cfg):
    counts_s: int = Field(default=60, gt=0, le=86400, description="CountSample interval")
    metrics_s: int = Field(default=60, gt=0, le=86400, description="traffic MetricSample interval")
    health_s: int = Field(default=30, gt=0, le=86400, description="health MetricSample interval")


class CameraConfig(_Cfg):
    camera_id: str = Field(
        default="camera", min_length=1, max_length=64, description="names this camera in logs/events"
    )
    source: SourceConfig
    model: ModelConfig = OnnxModelConfig()
    classes: list[str] = Field(default_factory=lambda: list(CONTRACT_CLASSES), description="classes kept")
    motion: MotionConfig = MotionConfig()
    tracker: TrackerConfig = TrackerConfig()
    lines: list[LineConfig] = Field(default_factory=list)
    zones: list[ZoneConfig] = Field(default_factory=list)
    homography: HomographyConfig | None = Field(
        default=None, description="ground plane; needed for speed and metres"
    )
    congestion: CongestionConfig = CongestionConfig()
    intervals: IntervalConfig = IntervalConfig()

    @model_validator(mode="after")
    def _names_unique_and_classes_known(self) -> CameraConfig:
        for kind, names in (("line", [x.name for x in self.lines]), ("zone", [z.name for z in self.zones])):
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names must be unique: {names}")
        used = set(self.classes)
        named = [(x.name, x.classes or []) for x in self.lines] + [(z.name, z.classes) for z in self.zones]
        for name, classes in named:
            unknown = set(classes) - used
            if unknown:
                raise ValueError(f"{name}: classes {sorted(unknown)} are not in the camera's classes")
        return self


def load_config(path: Path | str) -> CameraConfig:
    with Path(path).open(encoding="utf-8") as f:
        return CameraConfig.model_validate(yaml.safe_load(f))

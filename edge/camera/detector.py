"""Detector contract and the onnxruntime backend (the edge default: no torch on the box).

A detector takes a BGR frame and returns `supervision.Detections` in that frame's pixels, with the
canonical class name of every box in `data["class_name"]`. The ONNX backend reads which head it has
(`decoder` metadata written by our Darknet converter, else the Ultralytics layouts: the classic
[1, 4+C, N] head or the NMS-free end-to-end [1, N, 6] head) so any YOLOv3-tiny,
YOLOv8 or YOLO11 ONNX file runs through the same letterbox -> decode -> NMS path.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import onnxruntime as ort
import supervision as sv

from edge.camera.heads import Decoded, decode_darknet, decode_end2end, decode_yolov8

log = logging.getLogger(__name__)

# COCO spellings differ between Darknet and Ultralytics; the wire contract uses the Darknet ones.
CLASS_ALIASES = {"motorcycle": "motorbike"}
LETTERBOX_FILL = 114


def canonical(name: str) -> str:
    return CLASS_ALIASES.get(name, name)


def class_names(detections: sv.Detections) -> np.ndarray:
    """The `class_name` column (empty detections carry none)."""
    names = detections.data.get("class_name") if len(detections) else None
    return np.asarray(names if names is not None else [], dtype=object).reshape(-1)


class Detector(Protocol):
    """What the pipeline needs from any backend."""

    model_id: str
    input_size: int

    def detect(self, frame: np.ndarray, conf: float | None = None) -> sv.Detections: ...


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the square detector input, to map boxes back."""

    scale: float
    pad_x: int
    pad_y: int

    def to_frame(self, xyxy: np.ndarray, width: int, height: int) -> np.ndarray:
        out = (xyxy - np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)) / self.scale
        out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
        out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
        return out


def letterbox(frame: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio, pad to size x size with grey (as Ultralytics and Darknet do)."""
    h, w = frame.shape[:2]
    scale = min(size / w, size / h)
    nw, nh = round(w * scale), round(h * scale)
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nw, nh) != (w, h) else frame
    pad_x, pad_y = (size - nw) // 2, (size - nh) // 2
    out = cv2.copyMakeBorder(
        resized,
        pad_y,
        size - nh - pad_y,
        pad_x,
        size - nw - pad_x,
        cv2.BORDER_CONSTANT,
        value=(LETTERBOX_FILL,) * 3,
    )
    return out, Letterbox(scale, pad_x, pad_y)


def nms(decoded: Decoded, iou: float, conf: float) -> Decoded:
    """Class-aware non-maximum suppression (OpenCV's batched NMS)."""
    xyxy, score, cls = decoded
    if len(score) == 0:
        return decoded
    xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
    keep = np.asarray(
        cv2.dnn.NMSBoxesBatched(xywh.tolist(), score.tolist(), cls.tolist(), conf, iou), np.int64
    )
    keep = keep.reshape(-1)
    return xyxy[keep], score[keep], cls[keep]


def make_detections(decoded: Decoded, names: dict[int, str]) -> sv.Detections:
    xyxy, score, cls = decoded
    return sv.Detections(
        xyxy=xyxy.astype(np.float32),
        confidence=score.astype(np.float32),
        class_id=cls.astype(int),
        data={"class_name": np.array([names[int(c)] for c in cls], dtype=object)},
    )


class OnnxDetector:
    """YOLO ONNX model on onnxruntime's CPU provider."""

    def __init__(
        self,
        path: Path,
        classes: list[str] | None = None,
        conf: float = 0.25,
        iou: float = 0.45,
        threads: int | None = None,
        model_id: str | None = None,
    ) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op workers would spin between operators and frames: on 2 cores shared with decoding,
        # the tracker and other processes that cost ~25 % more CPU per inference (bench: 100 -> 80 ms
        # CPU at 416 with 2 threads on the loaded test host), and time as well.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.head = meta.get("decoder") or ("end2end" if meta.get("end2end") == "True" else "yolov8")
        raw_names = _parse_names(meta.get("names", "{}"))
        self.names = {i: canonical(n) for i, n in raw_names.items()}
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        self.input_size = (
            int(shape[2]) if isinstance(shape[2], int) else int(json.loads(meta.get("imgsz", "[640]"))[0])
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.head == "darknet":
            self.anchors = json.loads(meta["anchors"])
            self.strides = json.loads(meta["strides"])
        self.conf, self.iou = conf, iou
        self.wanted = None
        if classes is not None:
            self.wanted = np.array(sorted(i for i, n in self.names.items() if n in set(classes)), np.int64)
            missing = set(classes) - set(self.names.values())
            if missing:
                log.warning("model %s has no class %s", path.name, sorted(missing))
        self.model_id = model_id or path.stem

    def raw(self, frame: np.ndarray) -> tuple[list[np.ndarray], Letterbox]:
        """Letterboxed forward pass: the head outputs as the model gives them."""
        img, lb = letterbox(frame, self.input_size)
        blob = cv2.dnn.blobFromImage(img, 1 / 255.0, swapRB=True)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        return [np.asarray(o) for o in outs], lb

    def decode(self, outs: list[np.ndarray], conf: float | None = None) -> Decoded:
        """Head outputs -> NMS'd boxes in detector-input pixels."""
        conf = conf or self.conf
        if self.head == "darknet":
            decoded = decode_darknet(outs, self.anchors, self.strides, conf, self.wanted)
        elif self.head == "end2end":
            return decode_end2end(outs[0], conf, self.wanted)  # NMS-free head: already one box per object
        else:
            decoded = decode_yolov8(outs[0], conf, self.wanted)
        return nms(decoded, self.iou, conf)

    def detect(self, frame: np.ndarray, conf: float | None = None) -> sv.Detections:
        outs, lb = self.raw(frame)
        xyxy, score, cls = self.decode(outs, conf)
        h, w = frame.shape[:2]
        return make_detections((lb.to_frame(xyxy, w, h), score, cls), self.names)


def _parse_names(text: str) -> dict[int, str]:
    """Ultralytics writes a Python dict literal, our converter JSON; accept both."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import ast

        data = ast.literal_eval(text)
    return {int(k): str(v) for k, v in data.items()}

"""Detector backends chosen by the config's `model.type`: ONNX (default) or Ultralytics (optional).

The Ultralytics backend exists for boxes that have torch anyway; it needs a local `.pt` file, since
nothing may be downloaded at run time. Its predict path imports torchvision, so it needs a matching
torch/torchvision pair (see models/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import supervision as sv

from edge.camera import registry
from edge.camera.config import ModelConfig, OnnxModelConfig
from edge.camera.detector import Detector, OnnxDetector, canonical


class UltralyticsDetector:
    def __init__(self, weights: str, classes: list[str], input_size: int, conf: float, iou: float) -> None:
        if not Path(weights).is_file():
            raise registry.ModelError(f"{weights}: give a local .pt file (no downloads on the box)")
        try:
            from ultralytics import YOLO
        except ImportError as exc:
            raise registry.ModelError("ultralytics is not installed: pip install '.[ultralytics]'") from exc
        self.model = YOLO(weights)
        self.names = {int(i): canonical(str(n)) for i, n in self.model.names.items()}
        self.wanted = [i for i, n in self.names.items() if n in set(classes)]
        self.input_size, self.conf, self.iou = input_size, conf, iou
        self.model_id = Path(weights).stem

    def detect(self, frame: np.ndarray, conf: float | None = None) -> sv.Detections:
        result = self.model.predict(
            frame,
            imgsz=self.input_size,
            conf=conf or self.conf,
            iou=self.iou,
            classes=self.wanted,
            verbose=False,
        )[0]
        dets = sv.Detections.from_ultralytics(result)
        ids = dets.class_id if dets.class_id is not None else np.zeros(0, int)
        dets.data["class_name"] = np.asarray([self.names[int(c)] for c in ids], dtype=object)
        return dets


def build_detector(cfg: ModelConfig, classes: list[str]) -> Detector:
    if isinstance(cfg, OnnxModelConfig):
        path = cfg.path or registry.prepare(cfg.id, cfg.input_size)
        model_id = path.stem if cfg.path else f"{cfg.id}@{cfg.input_size}"
        return OnnxDetector(path, classes, cfg.conf, cfg.iou, cfg.threads, model_id)
    return UltralyticsDetector(cfg.weights, classes, cfg.input_size, cfg.conf, cfg.iou)

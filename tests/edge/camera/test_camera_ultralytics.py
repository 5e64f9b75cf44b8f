"""An Ultralytics-built model (yolov8n.yaml, exported by Ultralytics to ONNX) runs through our ONNX path.

Skipped without `ultralytics`. `IOC_ULTRALYTICS_ONNX` may name an ONNX file exported elsewhere (for
instance in a separate torch venv) to check the same path without torch in this one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edge.camera.detector import OnnxDetector, class_names


@pytest.fixture(scope="module")
def yolov8n_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("IOC_ULTRALYTICS_ONNX")
    if given:
        return Path(given)
    pytest.importorskip("ultralytics", reason="ultralytics not installed: pip install '.[ultralytics]'")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")  # architecture only: builds offline, random weights
    out = model.export(format="onnx", imgsz=320, opset=17, simplify=True, dynamic=False)
    return Path(out)


def test_ultralytics_onnx_runs_through_our_path(yolov8n_onnx: Path, bus_image: np.ndarray) -> None:
    det = OnnxDetector(yolov8n_onnx, threads=2)
    assert det.head == "yolov8"
    assert det.input_size == 320
    assert len(det.names) == 80
    outs, _ = det.raw(bus_image)
    assert outs[0].shape == (1, 84, 40 * 40 + 20 * 20 + 10 * 10)
    # untrained weights give tiny scores: a tiny threshold still exercises decode, NMS and un-letterboxing
    dets = det.detect(bus_image, conf=1e-5)
    assert len(dets) > 0
    h, w = bus_image.shape[:2]
    assert (dets.xyxy[:, [0, 2]] <= w).all()
    assert (dets.xyxy[:, [1, 3]] <= h).all()
    assert (dets.xyxy >= 0).all()
    assert set(class_names(dets)) <= set(det.names.values())

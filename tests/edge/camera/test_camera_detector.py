"""The offline model through our converter + ONNX path: real images, and against OpenCV's own
Darknet reader (the original cfg + weights) as an independent reference."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv

from edge.camera import registry
from edge.camera.detector import OnnxDetector, class_names, letterbox, make_detections, nms


def test_bus_jpg_finds_the_bus_and_the_people(detector_320: OnnxDetector, bus_image: np.ndarray) -> None:
    dets = detector_320.detect(bus_image)
    names = Counter(class_names(dets))
    assert names["bus"] == 1
    assert names["person"] >= 4  # four people stand in front of the bus
    bus = dets.xyxy[class_names(dets) == "bus"][0]
    assert bus[2] - bus[0] > 0.8 * bus_image.shape[1]  # the bus spans the picture


def test_street_footage_finds_people_cars_and_bicycles(
    detector_320: OnnxDetector, sample_frames: list[np.ndarray]
) -> None:
    seen: Counter[str] = Counter()
    for frame in sample_frames:
        seen.update(class_names(detector_320.detect(frame)))
    assert seen["person"] >= 20
    assert seen["car"] >= 1
    assert seen["bicycle"] >= 1


# People measured by hand (head top to feet, frame pixels) on real frames: x0, y0, x1, y1.
VTEST_300_PEOPLE = [
    (185, 160, 220, 233),
    (245, 160, 270, 220),
    (298, 160, 322, 230),
    (315, 211, 345, 295),
    (582, 160, 612, 235),
    (620, 161, 645, 234),
]
BUS_PEOPLE = [(50, 400, 245, 900), (225, 405, 345, 858)]


def _height_ratios(dets: sv.Detections, people: list[tuple[int, int, int, int]]) -> list[float]:
    """Box height / hand-measured height for every confident person box centred on a measured person."""
    keep = (class_names(dets) == "person") & (dets.confidence >= 0.5)
    boxes = dets.xyxy[keep]
    ratios = []
    for x0, y0, x1, y1 in people:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)
        ratios += [float(h) / (y1 - y0) for h in boxes[inside, 3] - boxes[inside, 1]]
    return ratios


@pytest.mark.parametrize("size", [320, 416])
def test_person_boxes_are_as_tall_as_the_people_measured_by_hand(
    size: int, bus_image: np.ndarray, vtest_frame_300: np.ndarray
) -> None:
    """The shipped cfg's stride-16 anchor mask (0,1,2, not the trained 1,2,3) gave boxes ~0.5 tall."""
    det = OnnxDetector(registry.prepare("yolov3-tiny-coco", size), threads=2)
    ratios = _height_ratios(det.detect(vtest_frame_300), VTEST_300_PEOPLE)
    ratios += _height_ratios(det.detect(bus_image), BUS_PEOPLE)
    print(f"height ratios at {size}: {np.round(ratios, 2)}")
    assert len(ratios) >= 4
    assert 0.85 <= float(np.median(ratios)) <= 1.15, ratios
    assert min(ratios) >= 0.7, ratios  # the bug gave 0.45-0.56


def _opencv_reference(net: cv2.dnn.Net, image: np.ndarray, size: int, det: OnnxDetector) -> sv.Detections:
    """Decode OpenCV's own Darknet YOLO output (x, y, w, h relative, obj, obj*class) on the same letterbox."""
    boxed, lb = letterbox(image, size)
    net.setInput(cv2.dnn.blobFromImage(boxed, 1 / 255.0, (size, size), swapRB=True, crop=False))
    rows = np.concatenate(net.forward(net.getUnconnectedOutLayersNames()))
    scores = rows[:, 5:]
    cls = scores.argmax(axis=1)
    conf = scores[np.arange(len(cls)), cls]
    keep = conf > det.conf
    cx, cy, w, h = (rows[keep, :4] * size).T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    xyxy, score, ids = nms((xyxy, conf[keep].astype(np.float32), cls[keep]), det.iou, det.conf)
    h0, w0 = image.shape[:2]
    return make_detections((lb.to_frame(xyxy, w0, h0), score, ids), det.names)


def _with_trained_masks(cfg_text: str) -> str:
    masks = registry.MODELS["yolov3-tiny-coco"].yolo_masks or {}
    out, head = [], -1
    for raw in cfg_text.splitlines():
        if raw.strip().startswith("[yolo]"):
            head += 1
        trained = raw.replace(" ", "").startswith("mask=") and head in masks
        out.append("mask = " + ",".join(str(m) for m in masks[head]) if trained else raw)
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("size", [320, 416])
def test_onnx_boxes_match_opencv_darknet_reference(
    size: int, bus_image: np.ndarray, sample_frames: list[np.ndarray], tmp_path: Path
) -> None:
    cfg, weights, _ = registry.source_files("yolov3-tiny-coco")
    fixed = tmp_path / "yolov3-tiny.cfg"  # OpenCV reads the cfg as is: give it the trained anchor masks
    fixed.write_text(_with_trained_masks(cfg.read_text(encoding="utf-8")), encoding="utf-8")
    net = cv2.dnn.readNetFromDarknet(str(fixed), str(weights))
    ours = OnnxDetector(registry.prepare("yolov3-tiny-coco", size), threads=2)
    frames = [bus_image, *sample_frames]
    matched = total = 0
    for frame in frames:
        ref = _opencv_reference(net, frame, size, ours)
        got = ours.detect(frame)
        total += len(ref)
        if len(ref) == 0:
            assert len(got) == 0
            continue
        iou = sv.box_iou_batch(ref.xyxy, got.xyxy) if len(got) else np.zeros((len(ref), 1))
        for i in range(len(ref)):
            j = int(iou[i].argmax())
            if iou[i, j] > 0.98 and got.class_id[j] == ref.class_id[i]:
                assert abs(float(got.confidence[j]) - float(ref.confidence[i])) < 0.01
                matched += 1
        assert abs(len(got) - len(ref)) <= 1  # a score sitting on the threshold may tip either way
    print(f"reference match at {size}: {matched}/{total} boxes")
    assert total >= 30
    assert matched >= 0.97 * total


def test_converter_rejects_weights_that_do_not_fit_the_cfg(tmp_path: Path) -> None:
    from edge.camera.darknet_to_onnx import DarknetError, convert

    cfg, weights, _ = registry.source_files("yolov3-tiny-coco")
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[: 1 << 20])
    with pytest.raises(DarknetError, match="shorter"):
        convert(cfg, short, 320, ["x"] * 80)


def test_registry_refuses_tampered_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, weights, names = registry.source_files("yolov3-tiny-coco")
    for src in (cfg, names):
        (tmp_path / src.name).write_bytes(src.read_bytes())
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / weights.name).write_bytes(bytes(data))
    monkeypatch.setattr(registry.DarknetSource, "directory", lambda self: tmp_path)
    with pytest.raises(registry.ModelError, match="sha256"):
        registry.source_files("yolov3-tiny-coco")

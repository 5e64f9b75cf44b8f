"""Snapshot privacy by construction: no face readable even where the detector missed the person.

Faces are found independently of the box's detector, with OpenCV's Haar frontal-face cascade
(`cv2.data`), on real pictures (bus.jpg, zidane.jpg) and on real camera footage (vtest.avi).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import supervision as sv

from edge.camera import media
from edge.camera.config import CameraConfig, SourceConfig
from edge.camera.detector import OnnxDetector, class_names
from edge.camera.pipeline import SNAPSHOT_CONF, read_with_motion
from edge.camera.snapshot import MAX_SIDE, READABLE_PX, redact, snapshot_jpeg
from tests.edge.camera.test_camera_detector import VTEST_300_PEOPLE

FACES = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
HEAD_SHARE = 1 / 7  # a head is about 1/7.5 of a standing adult's height; a face is narrower still


def _faces(image: np.ndarray) -> list[tuple[int, int, int, int]]:
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return [tuple(map(int, f)) for f in FACES.detectMultiScale(grey, 1.1, 5, minSize=(24, 24))]


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _detail(image: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(cv2.Laplacian(cv2.cvtColor(image[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def zidane_image() -> np.ndarray:
    try:
        return cv2.imread(str(media.zidane_jpg()))
    except media.MediaMissingError as exc:
        pytest.skip(f"media file missing: {exc}")


@pytest.mark.parametrize("name", ["bus", "zidane"])
def test_snapshot_is_small_and_hides_every_face(
    name: str, detector_320: OnnxDetector, bus_image: np.ndarray, zidane_image: np.ndarray
) -> None:
    image = bus_image if name == "bus" else zidane_image
    assert len(_faces(image)) >= 2  # the cascade does see the faces in the original
    snap = _decode(snapshot_jpeg(image, detector_320.detect(image, conf=SNAPSHOT_CONF)))
    assert max(snap.shape[:2]) == MAX_SIDE  # the bytes themselves hold no more detail than this
    back = cv2.resize(snap, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_CUBIC)
    assert _faces(back) == []  # not even found, let alone readable
    if name == "bus":  # the scene above everyone's heads stays as sharp as a plain downscale
        plain = cv2.resize(image, (snap.shape[1], snap.shape[0]), interpolation=cv2.INTER_AREA)
        sky = (0, 0, snap.shape[1], int(120 * snap.shape[0] / image.shape[0]))
        assert _detail(snap, sky) > 0.7 * _detail(plain, sky)


def test_without_any_detection_faces_on_camera_footage_are_below_readable_size(vtest_frame_300: np.ndarray) -> None:
    """Layer 1 alone (detector off, nothing moving): on a fixed camera's frame every hand-measured
    person's head spans fewer than READABLE_PX snapshot pixels."""
    frame = vtest_frame_300
    snap = _decode(snapshot_jpeg(frame, sv.Detections.empty()))
    scale = snap.shape[1] / frame.shape[1]
    assert max(snap.shape[:2]) == MAX_SIDE
    heads = [HEAD_SHARE * (y1 - y0) * scale for _, y0, _, y1 in VTEST_300_PEOPLE]
    print(f"head heights in the snapshot: {np.round(heads, 1)} px")
    assert max(heads) < READABLE_PX


def test_without_any_detection_everyone_who_moves_is_pixelated(vtest_video: Path, detector_320: OnnxDetector) -> None:
    """Layer 2 (detector off): the motion the snapshot command sees in its frames is pixelated, so
    walkers lose their detail even at the snapshot's low resolution. Where they are is taken from the
    detector, which the snapshot itself is not given."""
    config = CameraConfig(source=SourceConfig(uri=str(vtest_video)))
    frame, moving = read_with_motion(config)
    assert len(moving) >= 1
    dets = detector_320.detect(frame)
    people = dets.xyxy[(class_names(dets) == "person") & (dets.confidence >= 0.5)]
    assert len(people) >= 2
    snap = redact(frame, sv.Detections.empty(), moving=moving)
    plain = cv2.resize(frame, (snap.shape[1], snap.shape[0]), interpolation=cv2.INTER_AREA)
    scale = snap.shape[1] / frame.shape[1]
    for box in people:
        x0, y0, x1, y1 = (int(v * scale) for v in box)
        assert _detail(snap, (x0, y0, x1 + 1, y1 + 1)) < 0.3 * _detail(plain, (x0, y0, x1 + 1, y1 + 1)), box

"""Camera fixtures: the converted model (once per session, cached in models/cache) and real media."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import media, registry
from edge.camera.detector import OnnxDetector


def _media(locate: Callable[[], Path]) -> Path:
    try:
        return locate()
    except media.MediaMissingError as exc:
        pytest.skip(f"media file missing: {exc}")


@pytest.fixture(scope="session")
def model_320() -> Path:
    try:
        return registry.prepare("yolov3-tiny-coco", 320)
    except registry.ModelError as exc:
        pytest.skip(f"offline model unavailable: {exc}")


@pytest.fixture(scope="session")
def detector_320(model_320: Path) -> OnnxDetector:
    return OnnxDetector(model_320, threads=2)


@pytest.fixture(scope="session")
def bus_image() -> np.ndarray:
    return cv2.imread(str(_media(media.bus_jpg)))


@pytest.fixture(scope="session")
def sample_video() -> Path:
    return _media(media.sample_mp4)


@pytest.fixture(scope="session")
def vtest_video() -> Path:
    return _media(media.vtest_avi)


def read_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok, f"cannot read frame {i} of {path}"
        frames.append(frame)
    cap.release()
    return frames

"""Camera fixtures: the converted model (once per session, cached in models/cache), real media, and the
box's run over each hand-counted clip (once per session, its detections cached between runs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import media, registry
from edge.camera.backends import build_detector
from edge.camera.config import CameraConfig, OnnxModelConfig, SourceConfig
from edge.camera.detector import OnnxDetector
from edge.camera.evaluation import ClipRun, clip_config, count_clip, load_hand_counts
from edge.camera.pipeline import CameraPipeline
from tests.edge.camera.detection_cache import CachedDetector, StaleCacheError, cache_file

DATA = Path(__file__).resolve().parents[2] / "data"
HAND_COUNTED = sorted(DATA.glob("*.yaml"))


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


# Frames of sample.mp4 spread over the film (seeking in it costs seconds: read once per session).
SAMPLE_FRAMES = [0, 150, 300, 450, 600, 750, 900, 1050, 1200, 1350, 1500, 1650]


@pytest.fixture(scope="session")
def sample_frames(sample_video: Path) -> list[np.ndarray]:
    return read_frames(sample_video, SAMPLE_FRAMES)  # read-only: tests share them


@pytest.fixture(scope="session")
def vtest_frame_300(vtest_video: Path) -> np.ndarray:
    """The frame whose people were measured by hand (test_camera_detector.VTEST_300_PEOPLE)."""
    (frame,) = read_frames(vtest_video, [300])
    return frame


def read_frames(path: Path, indices: list[int]) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok, f"cannot read frame {i} of {path}"
        frame.setflags(write=False)
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="session")
def clip_runs() -> dict[Path, ClipRun]:
    """The whole pipeline at the box defaults over every hand-counted clip, once per session: the
    counting, motion-gate and camera-motion tests judge the same run. Detections come from the cache
    where it holds them (see detection_cache.py; a clean checkout has none)."""
    default = OnnxModelConfig()  # the box's default model
    try:
        model = registry.prepare(default.id, default.input_size)
    except registry.ModelError as exc:
        pytest.skip(f"offline model unavailable: {exc}")
    runs = {}
    for path in HAND_COUNTED:
        spec, _ = load_hand_counts(path)
        try:
            clip = Path(media.resolve_uri(spec.clip))
        except media.MediaMissingError as exc:
            pytest.skip(f"media file missing: {exc}")
        cfg = clip_config(spec, CameraConfig(source=SourceConfig(uri=spec.clip)))
        settings = {"model": cfg.model.model_dump(mode="json"), "classes": cfg.classes}
        cached_file = cache_file(model, clip, settings)
        for attempt in range(2):
            detector = CachedDetector(build_detector(cfg.model, cfg.classes), cached_file)
            try:
                runs[path] = count_clip(CameraPipeline(cfg, detector=detector))
            except StaleCacheError:
                if attempt:
                    raise
                cached_file.unlink()
                continue
            break
        detector.save()
        run = runs[path]
        print(
            f"{clip.name}: {run.frames} frames in {run.wall_s:.1f} s, detector {detector.misses} runs + "
            f"{detector.hits} cached ({detector.verified} of them checked against the model)"
        )
    return runs

"""The detection cache the counting tests run on (detection_cache.py): a replay must equal the model's
own output, and a cache that no longer matches the model must be caught, not trusted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.camera.detector import OnnxDetector, class_names
from tests.edge.camera.detection_cache import CachedDetector, StaleCacheError


def test_cache_replays_the_model_and_catches_a_stale_entry(
    detector_320: OnnxDetector, bus_image: np.ndarray, tmp_path: Path
) -> None:
    path = tmp_path / "bus.npz"
    first = CachedDetector(detector_320, path)
    live = first.detect(bus_image, conf=0.1)
    empty = first.detect(np.zeros((64, 64, 3), np.uint8), conf=0.1)  # nothing in it: stored empty
    assert (first.misses, first.hits, len(live), len(empty)) == (2, 0, len(live), 0)
    assert len(live) >= 5
    first.save()

    again = CachedDetector(detector_320, path, verify_every=1)
    replay = again.detect(bus_image, conf=0.1)
    assert again.detect(np.zeros((64, 64, 3), np.uint8), conf=0.1).is_empty()
    assert (again.misses, again.hits, again.verified) == (0, 2, 2)  # answered from the file, and checked
    assert np.array_equal(replay.xyxy, live.xyxy)
    assert np.array_equal(class_names(replay), class_names(live))
    assert len(CachedDetector(detector_320, path).detect(bus_image, conf=0.5)) < len(live)  # conf is in the key

    with np.load(path) as f:
        arrays = dict(f)
    arrays["xyxy"] = arrays["xyxy"] + 3.0  # what a changed model or decoder would give
    np.savez(path, **arrays)
    with pytest.raises(StaleCacheError):
        CachedDetector(detector_320, path).detect(bus_image, conf=0.1)

"""Speed from a known homography, zone occupancy, queue, stopped vehicles and congestion levels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.camera.config import HomographyConfig, ZoneConfig
from edge.camera.congestion import CongestionState, congestion_level
from edge.camera.speed import GroundPlane, SpeedEstimator
from edge.camera.zones import ZoneFrame, ZoneMonitor

# A road 10 m wide and 40 m long seen in perspective: far edge narrow at the top of the image.
IMAGE = [(260.0, 100.0), (380.0, 100.0), (600.0, 350.0), (40.0, 350.0)]
WORLD = [(0.0, 0.0), (10.0, 0.0), (10.0, 40.0), (0.0, 40.0)]


def project(world: np.ndarray) -> np.ndarray:
    """World metres -> image pixels with the inverse of the same perspective (the 'camera')."""
    h = cv2.getPerspectiveTransform(np.float32(WORLD), np.float32(IMAGE))
    return cv2.perspectiveTransform(world.reshape(-1, 1, 2).astype(np.float64), h).reshape(-1, 2)


def test_ground_plane_round_trips_points() -> None:
    plane = GroundPlane(HomographyConfig(image_points=IMAGE, world_points=WORLD))
    world = np.array([[2.0, 5.0], [7.5, 33.0]])
    np.testing.assert_allclose(plane.to_world(project(world)), world, atol=1e-6)


@pytest.mark.parametrize(("kmh", "direction"), [(30.0, (0.0, 1.0)), (50.0, (0.6, 0.8)), (8.0, (0.0, -1.0))])
def test_speed_within_five_percent(kmh: float, direction: tuple[float, float]) -> None:
    plane = GroundPlane(HomographyConfig(image_points=IMAGE, width_m=10.0, length_m=40.0))
    est = SpeedEstimator(window_s=1.0)
    rng = np.random.default_rng(1)
    start, v = np.array([3.0, 5.0 if direction[1] >= 0 else 35.0]), np.array(direction) * kmh / 3.6
    speed = None
    for i in range(30):  # 3 s at 10 fps, half a pixel of detector jitter
        t = i / 10
        pixel = project(start + v * t) + rng.normal(0, 0.5, 2)
        speed = est.update(t, [1], plane.to_world(pixel)).get(1, speed)
    assert speed is not None
    assert speed == pytest.approx(kmh, rel=0.05)


def test_homography_needs_one_world_form() -> None:
    with pytest.raises(ValueError, match="either"):
        HomographyConfig(image_points=IMAGE)
    with pytest.raises(ValueError, match="either"):
        HomographyConfig(image_points=IMAGE, world_points=WORLD, width_m=1, length_m=2)


def _frame(
    t: float, ids: list[int], points: list[tuple[float, float]], stopped: list[bool], world=None
) -> ZoneFrame:
    return ZoneFrame(
        t,
        np.array(ids, int),
        np.array(["car"] * len(ids), dtype=object),
        np.array(points, float).reshape(-1, 2),
        None if world is None else np.array(world, float).reshape(-1, 2),
        np.array(stopped, bool),
    )


def zone(**kw: object) -> ZoneMonitor:
    cfg = ZoneConfig.model_validate({"name": "z", "polygon": [[0, 0], [100, 0], [100, 100], [0, 100]], **kw})
    return ZoneMonitor(cfg, np.array([0.0, 0.0]))


def test_occupancy_is_share_of_time_occupied() -> None:
    z = zone()
    for i in range(100):  # 10 s at 10 fps; a car inside during the first 3 s
        t = i / 10
        z.update(_frame(t, [1], [(50, 50)] if t < 3 else [(150, 50)], [False]))
    z.update(_frame(10.0, [], [], []))
    assert z.take().occupancy_pct == pytest.approx(30.0, abs=1.5)


def test_queue_length_and_stopped_vehicle_event() -> None:
    z = zone(queue_head=[50, 100], stopped_after_s=5)
    fired = []
    for i in range(80):
        t = i / 10
        world = [(0.0, 12.0), (0.0, 30.0)]  # metres from the stop line
        fired += [(t, tid) for tid in z.update(_frame(t, [1, 2], [(50, 80), (50, 20)], [True, t < 2], world))]
    assert [tid for _, tid in fired] == [1]  # car 2 moved on after 2 s; car 1 waited 8 s
    assert fired[0][0] == pytest.approx(5.0)
    assert z.take().queue_m == pytest.approx(30.0)  # both were queued at first


@pytest.mark.parametrize(
    ("occupancy", "speed", "level"),
    [
        (0, 50, 0),
        (5, None, 0),
        (20, 45, 1),
        (40, 30, 2),
        (70, 40, 2),
        (55, 15, 3),
        (80, 2, 4),
        (None, 5, 4),
        (None, None, None),
    ],
)
def test_congestion_level(occupancy: float | None, speed: float | None, level: int | None) -> None:
    assert congestion_level(occupancy, speed, free_flow_kmh=50) == level


def test_congestion_events_have_hysteresis() -> None:
    state = CongestionState(event_level=3)
    kinds = [
        (t, ch.kind) for t, lvl in enumerate([0, 2, 3, 4, 2, 3, 1, 0, 3]) if (ch := state.update(t, lvl))
    ]
    assert kinds == [(2, "congestion_start"), (6, "congestion_end"), (8, "congestion_start")]

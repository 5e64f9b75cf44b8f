"""The tracker on synthetic boxes: who gets a track of their own."""

from __future__ import annotations

import numpy as np
import supervision as sv

from edge.camera.config import TrackerConfig
from edge.camera.tracking import ByteTracker


def people(*boxes: tuple[float, float, float, float]) -> sv.Detections:
    return sv.Detections(
        xyxy=np.array(boxes, np.float32).reshape(-1, 4),
        confidence=np.full(len(boxes), 0.8, np.float32),
        class_id=np.zeros(len(boxes), int),
        data={"class_name": np.array(["person"] * len(boxes), dtype=object)},
    )


def ids_after(frames: list[sv.Detections]) -> set[int]:
    tracker = ByteTracker(TrackerConfig())
    tracked = sv.Detections.empty()
    for i, dets in enumerate(frames):
        tracked = tracker.update(dets, t=0.1 * i)
    return set(tracked.tracker_id.tolist()) if tracked.tracker_id is not None else set()


def test_two_people_walking_side_by_side_get_a_track_each() -> None:
    """As measured on vtest.avi frame 36: two people whose centres are 27 px apart, a third of their
    height, but whose boxes barely overlap - they are two people, and both must be counted."""
    frames = [people((595 - 2 * i, 243, 629 - 2 * i, 336), (621 - 2 * i, 239, 657 - 2 * i, 335)) for i in range(5)]
    assert len(ids_after(frames)) == 2


def test_a_box_inside_a_tracked_person_gets_no_track_of_its_own() -> None:
    """NMS keeps a person and their legs (low IoU): the legs are the same person, not a second one."""
    frames = [people((100 + 2 * i, 100, 140 + 2 * i, 200), (102 + 2 * i, 150, 138 + 2 * i, 200)) for i in range(5)]
    assert len(ids_after(frames)) == 1

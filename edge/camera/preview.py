"""`ioc edge camera preview`: see on a frame where the lines, zones and ground-plane points lie.

A technician places lines by pixel coordinates; a point a few pixels off the image or a line drawn
the wrong way round silently counts nothing (or the opposite direction). The preview draws every
line with its "in" and "out" arrows, every zone with its queue head and the four ground-plane points,
over the same privacy-safe frame a snapshot gives (shrunk, moving regions pixelated; shown at the
frame's size so coordinates read as configured). Points outside the image are errors.
"""

from __future__ import annotations

import cv2
import numpy as np
import supervision as sv

from edge.camera.config import CameraConfig, Point
from edge.camera.snapshot import redact

LINE_BGR = (0, 215, 255)
IN_BGR = (60, 200, 60)
OUT_BGR = (60, 60, 230)
ZONE_BGR = (255, 160, 0)
GROUND_BGR = (255, 0, 255)
ARROW_PX = 40


def named_points(config: CameraConfig) -> list[tuple[str, Point]]:
    """Every configured image point with a name a person can find in the YAML."""
    points: list[tuple[str, Point]] = []
    for line in config.lines:
        points += [(f"line {line.name} point {i + 1}", p) for i, p in enumerate(line.points)]
    for zone in config.zones:
        points += [(f"zone {zone.name} point {i + 1}", p) for i, p in enumerate(zone.polygon)]
        if zone.queue_head is not None:
            points.append((f"zone {zone.name} queue_head", zone.queue_head))
    if config.homography is not None:
        points += [(f"homography image point {i + 1}", p) for i, p in enumerate(config.homography.image_points)]
    return points


def points_outside(config: CameraConfig, width: int, height: int) -> list[str]:
    """One message per point that does not lie in a `width` x `height` image."""
    return [
        f"{name} ({x:g}, {y:g}) lies outside the {width}x{height} image"
        for name, (x, y) in named_points(config)
        if not (0 <= x <= width and 0 <= y <= height)  # pixel edges: the border itself is inside
    ]


def _pt(p: Point | np.ndarray) -> tuple[int, int]:
    return round(float(p[0])), round(float(p[1]))


def _label(image: np.ndarray, text: str, at: tuple[int, int], colour: tuple[int, int, int]) -> None:
    cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)


def draw(config: CameraConfig, frame: np.ndarray, moving: np.ndarray | None = None) -> np.ndarray:
    """The privacy-safe frame at its own size with lines (and in/out arrows), zones and ground points."""
    height, width = frame.shape[:2]
    image = cv2.resize(redact(frame, sv.Detections.empty(), moving), (width, height), interpolation=cv2.INTER_CUBIC)
    for zone in config.zones:
        poly = np.array([_pt(p) for p in zone.polygon], np.int32)
        cv2.polylines(image, [poly], True, ZONE_BGR, 2, cv2.LINE_AA)
        _label(image, f"zone {zone.name}", _pt(poly.min(axis=0) + np.array([4, 16])), ZONE_BGR)
        if zone.queue_head is not None:
            cv2.drawMarker(image, _pt(zone.queue_head), ZONE_BGR, cv2.MARKER_TILTED_CROSS, 14, 2)
    for line in config.lines:
        p1, p2 = np.asarray(line.points[0], float), np.asarray(line.points[1], float)
        vec = p2 - p1
        normal = np.array([-vec[1], vec[0]]) / max(float(np.hypot(*vec)), 1e-9)  # towards the "in" side
        if line.invert:
            normal = -normal
        mid = (p1 + p2) / 2
        cv2.line(image, _pt(p1), _pt(p2), LINE_BGR, 2, cv2.LINE_AA)
        for sign, name, colour in ((1, "in", IN_BGR), (-1, "out", OUT_BGR)):
            # each arrow starts at the line and points the way an object crossing in that direction goes
            along = vec / max(float(np.hypot(*vec)), 1e-9) * 10 * sign
            start = mid + along + sign * normal * 3
            end = start + sign * normal * ARROW_PX
            cv2.arrowedLine(image, _pt(start), _pt(end), colour, 2, cv2.LINE_AA, tipLength=0.3)
            size = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0]
            at = end + sign * normal * (8 + size[0] / 2) - [size[0] / 2, -size[1] / 2]
            _label(image, name, _pt(at), colour)
        _label(image, line.name, _pt(p1 + np.array([6, -6])), LINE_BGR)
    if config.homography is not None:
        for i, p in enumerate(config.homography.image_points):
            cv2.circle(image, _pt(p), 6, GROUND_BGR, 2, cv2.LINE_AA)
            _label(image, f"g{i + 1}", _pt(np.asarray(p) + np.array([8, -8])), GROUND_BGR)
    return image

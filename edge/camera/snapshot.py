"""The one image that may leave the box: a technician's JPEG with people and plates made unreadable.

People are pixelated over their whole box; for vehicles the lower part of the box, where plates sit,
stands in for a plate detector. Pixelation (not a Gaussian blur, which can be partly undone) to
blocks of at least 12 px.
"""

from __future__ import annotations

import cv2
import numpy as np
import supervision as sv

from edge.camera.config import VEHICLES

PLATE_BAND = 0.45  # lower share of a vehicle box treated as the plate region
BLOCK_PX = 12


def _pixelate(image: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    roi = image[y0:y1, x0:x1]
    if roi.size == 0:
        return
    h, w = roi.shape[:2]
    small = cv2.resize(roi, (max(1, w // BLOCK_PX), max(1, h // BLOCK_PX)), interpolation=cv2.INTER_AREA)
    image[y0:y1, x0:x1] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def redaction_boxes(detections: sv.Detections, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Regions to hide: whole person boxes (with a margin), lower bands of vehicle boxes."""
    boxes = []
    names = detections.data.get("class_name", np.array([], dtype=object))
    for (x0, y0, x1, y1), name in zip(detections.xyxy, names, strict=True):
        if name == "person":
            mx, my = 0.1 * (x1 - x0), 0.05 * (y1 - y0)
            box = (x0 - mx, y0 - my, x1 + mx, y1 + my)
        elif name in VEHICLES:
            box = (x0, y1 - PLATE_BAND * (y1 - y0), x1, y1)
        else:
            continue
        boxes.append(
            (
                int(max(0, box[0])),
                int(max(0, box[1])),
                int(min(width, np.ceil(box[2]))),
                int(min(height, np.ceil(box[3]))),
            )
        )
    return boxes


def redact(frame: np.ndarray, detections: sv.Detections) -> np.ndarray:
    out = frame.copy()
    for box in redaction_boxes(detections, *frame.shape[:2]):
        _pixelate(out, *box)
    return out


def snapshot_jpeg(frame: np.ndarray, detections: sv.Detections, quality: int = 85) -> bytes:
    """Redacted JPEG bytes of `frame`; `detections` must come from a full-frame detector pass."""
    ok, buf = cv2.imencode(".jpg", redact(frame, detections), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())

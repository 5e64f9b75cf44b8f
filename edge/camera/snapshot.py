"""The one image that may leave the box: a technician's JPEG in which no face or plate can be read.

Privacy must not depend on the detector, which misses small, hidden and unusual objects. Three layers:

1. **Low resolution everywhere**: the whole frame is shrunk (area averaging) to at most `MAX_SIDE`
   pixels on its long side. A face or plate narrower than `MAX_SIDE_SHARE` of the frame's long side
   then spans fewer than `READABLE_PX` pixels - below what people or face matchers can identify - wherever
   it is and whether or not anything detected it. Small, distant objects are exactly the ones the
   detector misses, and exactly the ones this layer covers.
2. **Every moving region** (the motion gate's blobs, with a margin) is pixelated into coarse blocks:
   anyone walking or driving is hidden even when undetected, close to the camera included.
3. **Every detection** of a person or vehicle, at a low confidence, is pixelated whole with a margin.

Pixelation (not a Gaussian blur, which can be partly undone) into at most `BLOCKS` blocks across a box.
The JPEG is sent at the small size: the detail is not in the bytes at all.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np
import supervision as sv

from edge.camera.config import CONTRACT_CLASSES

MAX_SIDE = 320  # long side of every snapshot, pixels
READABLE_PX = 8  # a face or plate narrower than this (in snapshot pixels) cannot be read
MAX_SIDE_SHARE = READABLE_PX / MAX_SIDE  # objects narrower than this share of the long side: unreadable
BLOCKS = 6  # at most this many pixel blocks across a redacted box
MIN_BLOCK_PX = 12  # and blocks of at least this many frame pixels
MARGIN = 0.2  # every redacted box grows by this share of its size on each side

Box = tuple[int, int, int, int]


def _pixelate(image: np.ndarray, box: Box) -> None:
    x0, y0, x1, y1 = box
    roi = image[y0:y1, x0:x1]
    if roi.size == 0:
        return
    h, w = roi.shape[:2]
    block = max(MIN_BLOCK_PX, max(w, h) / BLOCKS)
    small = cv2.resize(roi, (max(1, round(w / block)), max(1, round(h / block))), interpolation=cv2.INTER_AREA)
    image[y0:y1, x0:x1] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def _grow(boxes: Iterable[np.ndarray], height: int, width: int) -> list[Box]:
    out = []
    for x0, y0, x1, y1 in boxes:
        mx, my = MARGIN * (x1 - x0) + 4, MARGIN * (y1 - y0) + 4
        box = (
            int(max(0, x0 - mx)),
            int(max(0, y0 - my)),
            int(min(width, np.ceil(x1 + mx))),
            int(min(height, np.ceil(y1 + my))),
        )
        if box[2] > box[0] and box[3] > box[1]:
            out.append(box)
    return out


def redaction_boxes(detections: sv.Detections, height: int, width: int, moving: np.ndarray | None = None) -> list[Box]:
    """Regions to pixelate, in frame pixels: every person or vehicle detection and every moving blob,
    each grown by `MARGIN`."""
    names = detections.data.get("class_name", np.array([], dtype=object))
    keep = [xyxy for xyxy, name in zip(detections.xyxy, names, strict=True) if name in CONTRACT_CLASSES]
    blobs = list(moving) if moving is not None else []
    return _grow([*keep, *blobs], height, width)


def snapshot_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of the snapshot of a frame this size: long side at most `MAX_SIDE`."""
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def redact(frame: np.ndarray, detections: sv.Detections, moving: np.ndarray | None = None) -> np.ndarray:
    """The frame with every detection and moving region pixelated, shrunk to `snapshot_size`."""
    out = frame.copy()
    height, width = frame.shape[:2]
    for box in redaction_boxes(detections, height, width, moving=moving):
        _pixelate(out, box)
    h, w = snapshot_size(*frame.shape[:2])
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_AREA)


def snapshot_jpeg(
    frame: np.ndarray, detections: sv.Detections, quality: int = 85, moving: np.ndarray | None = None
) -> bytes:
    """Redacted, shrunk JPEG bytes of `frame`; `detections` from a full-frame detector pass, `moving`
    the motion gate's blobs [N,4] in frame pixels (both may be empty: layer 1 still holds)."""
    ok, buf = cv2.imencode(".jpg", redact(frame, detections, moving), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(buf.tobytes())

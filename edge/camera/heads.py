"""Decoders for the two YOLO output heads the box runs, into boxes in detector-input pixels.

Both return (xyxy float32 [N,4], confidence [N], class_id [N]) before NMS, already filtered by the
confidence threshold and the classes wanted, so NMS and the Python that follows see few rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Decoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (np.tanh(0.5 * x) + 1.0)  # overflow-free logistic
    return out


def _empty() -> Decoded:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)


def _keep(class_scores: np.ndarray, conf: float, wanted: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Best wanted class per row and its score."""
    if wanted is not None:
        class_scores = class_scores[:, wanted]
    best = class_scores.argmax(axis=1)
    score = class_scores[np.arange(len(best)), best]
    if wanted is not None:
        best = wanted[best]
    return best, score


def decode_darknet(
    outputs: Sequence[np.ndarray],
    anchors: Sequence[Sequence[Sequence[float]]],
    strides: Sequence[int],
    conf: float,
    wanted: np.ndarray | None = None,
) -> Decoded:
    """YOLOv3 [yolo] maps [1, A*(5+C), H, W]: logistic xy + cell, exp(wh) * anchor, score = obj * cls."""
    boxes, scores, classes = [], [], []
    for out, head_anchors, stride in zip(outputs, anchors, strides, strict=True):
        n_anchor = len(head_anchors)
        _, depth, h, w = out.shape
        p = out.reshape(n_anchor, depth // n_anchor, h, w).transpose(0, 2, 3, 1)  # A,H,W,5+C
        obj = _sigmoid(p[..., 4])
        cand = obj > conf  # score = obj * cls <= obj, so this prefilter loses nothing
        if not cand.any():
            continue
        a_idx, gy, gx = np.nonzero(cand)
        rows = p[cand]
        cls_id, cls_score = _keep(_sigmoid(rows[:, 5:]), conf, wanted)
        score = obj[cand] * cls_score
        ok = score > conf
        if not ok.any():
            continue
        rows, a_idx, gx, gy = rows[ok], a_idx[ok], gx[ok], gy[ok]
        anc = np.asarray(head_anchors, np.float32)[a_idx]
        cx = (_sigmoid(rows[:, 0]) + gx) * stride
        cy = (_sigmoid(rows[:, 1]) + gy) * stride
        bw = np.exp(rows[:, 2]) * anc[:, 0]
        bh = np.exp(rows[:, 3]) * anc[:, 1]
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1))
        scores.append(score[ok])
        classes.append(cls_id[ok])
    if not boxes:
        return _empty()
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(classes).astype(np.int64),
    )


def decode_yolov8(output: np.ndarray, conf: float, wanted: np.ndarray | None = None) -> Decoded:
    """YOLOv8/YOLO11 detect head [1, 4+C, N]: cx, cy, w, h in input pixels, then per-class scores."""
    pred = output[0]
    if pred.shape[0] > pred.shape[1]:  # some exporters transpose to [N, 4+C]
        pred = pred.T
    class_scores = pred[4:].T
    top = class_scores.max(axis=1) if wanted is None else class_scores[:, wanted].max(axis=1)
    cand = top > conf
    if not cand.any():
        return _empty()
    cls_id, score = _keep(class_scores[cand], conf, wanted)
    cx, cy, bw, bh = pred[:4, cand]
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return xyxy.astype(np.float32), score.astype(np.float32), cls_id.astype(np.int64)


def decode_end2end(output: np.ndarray, conf: float, wanted: np.ndarray | None = None) -> Decoded:
    """Ultralytics end-to-end (NMS-free) head [1, N, 6]: x1, y1, x2, y2, score, class in input pixels."""
    pred = output[0]
    keep = pred[:, 4] > conf
    if wanted is not None:
        keep &= np.isin(pred[:, 5].astype(np.int64), wanted)
    pred = pred[keep]
    return pred[:, :4].astype(np.float32), pred[:, 4].astype(np.float32), pred[:, 5].astype(np.int64)

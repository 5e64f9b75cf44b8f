"""The camera box: a device config with a `camera:` key, run by the edge Agent with a `CameraSource`.

    ioc edge camera --config edge/camera/sample-camera-device.yaml

The device file is the usual `DeviceConfig` (identity, broker, outbox, settings; profile
`traffic-camera`) plus one key, `camera`: either the path of a camera YAML (relative to the device
file) or the camera config itself, inline. Both are validated at load, and the camera's classes
must be countable by the profile.

`run_camera_box(...)` is the demo's entry: the street footage sample.mp4, looped and paced at real
time, detector input 320, until a `threading.Event` is set.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from contract.profiles import DeviceProfile, get_profile
from edge.agent import Agent, ExitReason
from edge.camera.agent_source import CameraSource
from edge.camera.config import CameraConfig, IntervalConfig, OnnxModelConfig, SourceConfig
from edge.camera.config import load_config as load_camera_config
from edge.camera.media import resolve_uri
from edge.config import ConfigError, DeviceConfig, load_config

log = logging.getLogger(__name__)

SAMPLE_CAMERA = Path(__file__).resolve().parent / "sample-camera.yaml"
PROFILE = "traffic-camera"


class CameraBoxConfig(DeviceConfig):
    camera: Path | CameraConfig = Field(
        description="camera YAML (path relative to this file) or the camera config inline; see "
        "edge/camera/config.py"
    )

    def camera_config(self) -> CameraConfig:
        """The camera config (loaded from its file if the device config holds a path)."""
        if isinstance(self.camera, CameraConfig):
            return self.camera
        return load_camera_config(self.camera)


def load_box_config(path: Path) -> CameraBoxConfig:
    """Read a camera box's device file; a `camera:` path is loaded (relative to the file) and checked."""
    config = load_config(path, CameraBoxConfig)
    if isinstance(config.camera, Path):
        camera_path = config.camera if config.camera.is_absolute() else path.parent / config.camera
        config = config.model_copy(update={"camera": load_camera_config(camera_path)})
    return config


def check_camera(camera: CameraConfig, profile: DeviceProfile) -> None:
    """Every class the camera counts must be a count class of the profile, or it would be dropped."""
    if profile.counts is None:
        raise ConfigError(f"profile {profile.profile!r} has no counts; a camera box needs e.g. {PROFILE!r}")
    unknown = set(camera.classes) - set(profile.counts.classes)
    if unknown:
        raise ConfigError(f"camera classes {sorted(unknown)} are not counted by profile {profile.profile!r}")


def build_box(config: CameraBoxConfig, *, max_seconds: float | None = None) -> tuple[Agent, CameraSource]:
    """The Agent with the camera as its source (the model loads here: errors surface before run)."""
    camera = config.camera_config()
    check_camera(camera, get_profile(config.profile))
    resolve_uri(camera.source.uri)  # a missing media file fails here, with the install hint
    source = CameraSource(camera, max_seconds=max_seconds)
    return Agent(config, sources=[source]), source


def serve_box(make_agent: Callable[[], Agent], stop: threading.Event) -> None:
    """Run agents until `stop` is set: a `reboot` command builds a new one in place (new boot id)."""
    while not stop.is_set():
        agent = make_agent()
        finished = threading.Event()

        def stop_on_request(agent: Agent = agent, finished: threading.Event = finished) -> None:
            while not finished.is_set():
                if stop.wait(0.2):
                    agent.stop("shutdown")
                    return

        watcher = threading.Thread(target=stop_on_request, name="camera-box-stop", daemon=True)
        watcher.start()
        reason: ExitReason = agent.run()
        finished.set()
        watcher.join()
        if reason != "restart":
            return
        log.info("camera box %s restarting after a reboot command", agent.config.device_id)


def demo_camera_config(counts_s: int = 60, health_s: int = 10) -> CameraConfig:
    """The sample camera (lines, zones, ground plane) on sample.mp4: looped, real time, input 320."""
    sample = load_camera_config(SAMPLE_CAMERA)
    return sample.model_copy(
        update={
            "source": SourceConfig(uri=resolve_uri("sample.mp4"), analysis_fps=10, realtime=True, loop=True),
            "model": OnnxModelConfig(input_size=320),
            "intervals": IntervalConfig(counts_s=counts_s, metrics_s=counts_s, health_s=health_s),
        }
    )


def demo_box_config(
    mqtt_host: str, mqtt_port: int, device_id: str, site: str, workdir: Path, counts_s: int = 60,
    login: tuple[str, str] | None = None,
) -> CameraBoxConfig:
    return CameraBoxConfig.model_validate(
        {
            "device_id": device_id,
            "site": site,
            "profile": PROFILE,
            "broker": {"host": mqtt_host, "port": mqtt_port, "backoff_min_s": 0.2, "backoff_max_s": 5,
                       **({"username": login[0], "password": login[1]} if login else {})},
            "outbox": {"path": workdir / f"{device_id}.outbox.sqlite3", "sync": "normal"},
            "settings": {"heartbeat_s": 10},
            "camera": demo_camera_config(counts_s),
        }
    )


def run_camera_box(
    mqtt_host: str,
    mqtt_port: int,
    device_id: str,
    site: str,
    stop: threading.Event,
    workdir: Path,
    *,
    counts_s: int = 60,
    login: tuple[str, str] | None = None,
) -> None:
    """Run one camera box on the street footage until `stop` is set (blocking; call from a thread).

    The device must be registered with profile `traffic-camera`. Its outbox lives in `workdir`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config = demo_box_config(mqtt_host, mqtt_port, device_id, site, workdir, counts_s, login)
    serve_box(lambda: build_box(config)[0], stop)

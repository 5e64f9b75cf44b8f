"""`ioc edge ...`: run the edge agent on a box. Mounted by the root CLI as `ioc edge`.

    ioc edge run --config device.yaml            # a gateway: sensors -> outbox -> MQTT
    ioc edge camera --config camera-device.yaml  # a camera box: the same agent, fed by the video pipeline
    ioc edge check --config any-device.yaml      # validate, no network
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import yaml

from edge.agent import Agent
from edge.camera import cli as camera_cli  # cheap: OpenCV and the model load inside its commands
from edge.config import ConfigError, DeviceConfig, load_config

app = typer.Typer(help="Edge agent: sensors or video analytics -> outbox -> MQTT.", no_args_is_help=True)
app.add_typer(camera_cli.camera_app, name="camera")
app.command("snapshot")(camera_cli.snapshot_cmd)
app.add_typer(camera_cli.models_app, name="models")
log = logging.getLogger(__name__)


def _has_camera(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return isinstance(data, dict) and "camera" in data


@app.command()
def run(
    config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False, help="device YAML")],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the agent until SIGINT/SIGTERM; a `reboot` command restarts it in place (new boot id)."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _has_camera(config):
        typer.echo(f"{config} describes a camera box: ioc edge camera --config {config}", err=True)
        raise typer.Exit(2)
    current: list[Agent] = []

    def _terminate(signum: int, frame: FrameType | None) -> None:
        if current:
            current[-1].stop("shutdown")

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    while True:
        try:
            agent = Agent(load_config(config))
        except (ConfigError, ValueError) as exc:
            typer.echo(f"invalid config {config}: {exc}", err=True)
            raise typer.Exit(2) from None
        current[:] = [agent]
        if agent.run() != "restart":
            break
        log.info("restarting after reboot command")


@app.command()
def check(config: Annotated[Path, typer.Option("--config", "-c", exists=True, dir_okay=False)]) -> None:
    """Validate a device config against its profile without connecting anywhere."""
    from contract.profiles import get_profile
    from edge.config import validate_for_profile

    try:
        cfg: DeviceConfig
        if _has_camera(config):
            from edge.camera.box import check_camera, load_box_config

            cfg = box = load_box_config(config)
            check_camera(box.camera_config(), get_profile(cfg.profile))
        else:
            cfg = load_config(config)
        validate_for_profile(cfg, get_profile(cfg.profile))
    except (ConfigError, ValueError, KeyError, OSError) as exc:
        typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(2) from None
    camera = " and a camera" if _has_camera(config) else ""
    typer.echo(f"ok: {cfg.device_id} ({cfg.profile}), {len(cfg.sensors)} sensor source(s){camera}")


if __name__ == "__main__":
    app()

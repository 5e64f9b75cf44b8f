"""Command line of the camera box, mounted by `edge.cli` as `ioc edge camera | snapshot | models`.

    ioc edge camera --config edge/camera/sample-camera-device.yaml      # the box: agent + camera
    ioc edge camera --config edge/camera/sample-camera.yaml --dry-run   # print what would leave
    ioc edge snapshot --config edge/camera/sample-camera.yaml -o snap.jpg
    ioc edge camera preview --config edge/camera/sample-camera.yaml --out preview.png

`--config` is a device YAML with a `camera:` key (see `edge.camera.box`) or, for --dry-run and
snapshot, a camera YAML alone. Imports are cheap here: OpenCV, onnxruntime and the model load only
when a command runs.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from edge.camera.config import CameraConfig, OnnxModelConfig, load_config

console = Console()
app = typer.Typer(
    help="Camera box: on-device traffic analytics; only numbers leave the box.", no_args_is_help=True
)
models_app = typer.Typer(help="Detection models: prepare the offline default, export Ultralytics models.")
app.add_typer(models_app, name="models")

ConfigOpt = Annotated[
    Path,
    typer.Option(
        "--config", "-c", exists=True, dir_okay=False, help="device YAML with `camera:` (or a camera YAML)"
    ),
]
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _is_device_config(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    return isinstance(data, dict) and "device_id" in data


def _camera_config(path: Path) -> CameraConfig:
    """The camera config of a device YAML, or a camera YAML itself."""
    if _is_device_config(path):
        from edge.camera.box import load_box_config

        return load_box_config(path).camera_config()
    return load_config(path)


def _invalid(path: Path, exc: Exception) -> typer.Exit:
    typer.echo(f"invalid config {path}: {exc}", err=True)
    return typer.Exit(2)


camera_app = typer.Typer(
    help="Run the camera box (with --config), or `preview` its lines, zones and ground points.",
    invoke_without_command=True,
)
app.add_typer(camera_app, name="camera")


@camera_app.callback()
def camera_main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", exists=True, dir_okay=False, help="device YAML with `camera:` (or a camera YAML)"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="no agent, no MQTT: print counts, metrics, events, health here")
    ] = False,
    max_seconds: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the camera box: the pipeline feeds the edge agent (one session, one outbox, one heartbeat)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        typer.echo("missing --config: ioc edge camera --config camera-device.yaml", err=True)
        raise typer.Exit(2)
    run_camera(config, dry_run, max_seconds, log_level)


def run_camera(config: Path, dry_run: bool = False, max_seconds: float | None = None, log_level: str = "INFO") -> None:
    """Run the camera box from `config` (see `camera_main`)."""
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    if dry_run:
        try:
            camera = _camera_config(config)
        except (ValueError, OSError) as exc:
            raise _invalid(config, exc) from None
        _dry_run(camera, max_seconds)
        return
    if not _is_device_config(config):
        typer.echo(
            f"{config} is a camera config; the box needs a device config whose `camera:` names it "
            "(see edge/camera/sample-camera-device.yaml), or use --dry-run",
            err=True,
        )
        raise typer.Exit(2)
    _run_box(config, max_seconds)


@camera_app.command("preview")
def preview_cmd(
    config: ConfigOpt,
    output: Annotated[Path, typer.Option("--out", "-o", help="where to write the PNG")] = Path("preview.png"),
) -> None:
    """Draw lines (with in/out arrows), zones and ground points on a frame; fail if a point is outside it."""
    import cv2

    from edge.camera import preview
    from edge.camera.pipeline import read_with_motion

    try:
        camera = _camera_config(config)
        frame, moving = read_with_motion(camera)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _invalid(config, exc) from None
    height, width = frame.shape[:2]
    outside = preview.points_outside(camera, width, height)
    if not cv2.imwrite(str(output), preview.draw(camera, frame, moving)):
        typer.echo(f"cannot write {output}", err=True)
        raise typer.Exit(1)
    for message in outside:
        typer.echo(f"error: {message}", err=True)
    if outside:
        typer.echo(f"wrote {output}; {len(outside)} point(s) outside the image: fix {config}", err=True)
        raise typer.Exit(1)
    console.print(f"wrote {output} ({width}x{height}; every point inside the image)")


def _run_box(path: Path, max_seconds: float | None) -> None:
    from edge.camera.box import build_box, load_box_config, serve_box
    from edge.camera.registry import ModelError

    try:
        agent, _ = build_box(load_box_config(path))  # a bad config, model or media fails before serving
    except (ValidationError, ValueError, OSError, ModelError) as exc:
        raise _invalid(path, exc) from None
    stop = threading.Event()

    def _terminate(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    if max_seconds is not None:
        threading.Timer(max_seconds, stop.set).start()
    first = [agent]
    serve_box(lambda: first.pop() if first else build_box(load_box_config(path))[0], stop)


def _dry_run(camera: CameraConfig, max_seconds: float | None) -> None:
    from edge.camera.pipeline import CameraPipeline

    pipeline = CameraPipeline(camera)

    def show(kind: str, payload: object) -> None:
        console.print_json(json.dumps({"kind": kind, "payload": payload}, default=str))

    summary = pipeline.run(
        on_counts=lambda c: show("counts", [s.model_dump(by_alias=True) for s in c if s.count]),
        on_metrics=lambda m: show("traffic", m.model_dump()),
        on_event=lambda e: show("event", e.model_dump()),
        on_health=lambda h: show("health", h.model_dump()),
        stop_event=threading.Event(),
        max_seconds=max_seconds,
    )
    table = Table(
        title=f"{pipeline.config.camera_id}: totals ({summary.frames} frames, {summary.fps:.1f} fps)"
    )
    for col in ("line", "class", "direction", "count"):
        table.add_column(col)
    for (line, cls, direction), n in sorted(summary.totals.items()):
        table.add_row(line, cls, direction, str(n))
    console.print(table)


@app.command("snapshot")
def snapshot_cmd(
    config: ConfigOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the JPEG")] = Path(
        "snapshot.jpg"
    ),
) -> None:
    """Write one JPEG from the camera with people and plates pixelated (on the box itself)."""
    from edge.camera.pipeline import snapshot

    output.write_bytes(snapshot(_camera_config(config)))
    console.print(f"wrote {output}")


@models_app.command("prepare")
def models_prepare(
    model: Annotated[str, typer.Option(help="registered model id")] = OnnxModelConfig().id,
    input_size: Annotated[int, typer.Option(help="square detector input, multiple of 32")] = 416,
    force: Annotated[bool, typer.Option(help="convert again even if cached")] = False,
) -> None:
    """Verify the source weights' checksums and convert them to ONNX in models/cache."""
    from edge.camera import registry

    console.print(str(registry.prepare(model, input_size, force=force)))


@models_app.command("export")
def models_export(
    weights: Annotated[str, typer.Argument(help="Ultralytics weights or model yaml, e.g. yolo11n.pt")],
    input_size: Annotated[int, typer.Option(help="square detector input")] = 320,
) -> None:
    """Export an Ultralytics model to ONNX with Ultralytics' own exporter (needs the `ultralytics` extra)."""
    from edge.camera import registry

    try:
        console.print(str(registry.export_ultralytics(weights, input_size)))
    except registry.ModelError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc


@models_app.command("list")
def models_list() -> None:
    """Registered models and cached ONNX files."""
    from edge.camera import registry

    for model_id, src in registry.MODELS.items():
        console.print(f"{model_id}: {src.package}/{src.folder}/{src.weights} ({src.licence})")
    for path in sorted(registry.cache_dir().glob("*.onnx")):
        console.print(f"  cached: {path.name} ({path.stat().st_size / 1e6:.1f} MB)")

"""The camera box on the edge runtime: device config with `camera:`, the source-registered command
hook, and end to end with the real stack (street footage -> agent -> Mosquitto -> ingest -> PostgreSQL)."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import psycopg
import pytest
import yaml
from edge_helpers import AgentThread, Broker, Watcher, wait_for
from typer.testing import CliRunner

from contract.profiles import get_profile
from edge.agent import Agent
from edge.camera.box import (
    SAMPLE_CAMERA,
    CameraBoxConfig,
    build_box,
    check_camera,
    demo_camera_config,
    load_box_config,
    run_camera_box,
)
from edge.camera.config import CameraConfig, IntervalConfig, SourceConfig
from edge.camera.config import load_config as load_camera
from edge.cli import app as edge_app
from edge.config import ConfigError, DeviceConfig
from edge.remote import CommandError
from edge.source import CommandHandler, Sink, Source

SAMPLE_DEVICE = SAMPLE_CAMERA.parent / "sample-camera-device.yaml"
SITE = "camera-e2e"


# -- config -------------------------------------------------------------------------------------------


def test_sample_device_embeds_the_sample_camera_looped_in_real_time() -> None:
    box = load_box_config(SAMPLE_DEVICE)
    assert box.profile == "traffic-camera"
    cam, sample = box.camera_config(), load_camera(SAMPLE_CAMERA)
    assert (cam.lines, cam.zones, cam.homography) == (sample.lines, sample.zones, sample.homography)
    assert cam.source.uri == "sample.mp4"
    assert (cam.source.loop, cam.source.realtime, cam.model.input_size) == (True, True, 320)
    check_camera(cam, get_profile(box.profile))


def test_camera_key_takes_a_path_relative_to_the_device_file(tmp_path: Path) -> None:
    raw = yaml.safe_load(SAMPLE_DEVICE.read_text())
    (tmp_path / "cams").mkdir()
    (tmp_path / "cams" / "cam.yaml").write_text(SAMPLE_CAMERA.read_text())
    raw["camera"] = "cams/cam.yaml"
    (tmp_path / "device.yaml").write_text(yaml.safe_dump(raw))
    box = load_box_config(tmp_path / "device.yaml")
    assert isinstance(box.camera, CameraConfig)
    assert box.camera == load_camera(SAMPLE_CAMERA)
    assert box.outbox.path == tmp_path / "cam-0001.outbox.sqlite3"

    raw["camera"] = {**yaml.safe_load(SAMPLE_CAMERA.read_text()), "fps": 3}  # typo'd key inline
    with pytest.raises(ValueError, match="fps"):
        CameraBoxConfig.model_validate(raw)
    raw["camera"], raw["cameras"] = "cams/cam.yaml", []
    with pytest.raises(ValueError, match="cameras"):
        CameraBoxConfig.model_validate(raw)


def test_camera_classes_must_be_counted_by_the_profile() -> None:
    cam = load_camera(SAMPLE_CAMERA).model_copy(update={"classes": ["car", "tram"]})
    with pytest.raises(ConfigError, match="tram"):
        check_camera(cam, get_profile("traffic-camera"))
    with pytest.raises(ConfigError, match="no counts"):
        check_camera(load_camera(SAMPLE_CAMERA), get_profile("env-gateway"))


def test_cli_wiring() -> None:
    runner = CliRunner()
    ok = runner.invoke(edge_app, ["check", "--config", str(SAMPLE_DEVICE)])
    assert ok.exit_code == 0, ok.output
    assert "cam-0001 (traffic-camera)" in ok.output
    alone = runner.invoke(edge_app, ["camera", "--config", str(SAMPLE_CAMERA)])  # no identity, no broker
    assert alone.exit_code == 2
    assert "device config" in alone.output
    wrong = runner.invoke(edge_app, ["run", "--config", str(SAMPLE_DEVICE)])
    assert wrong.exit_code == 2
    assert "ioc edge camera" in wrong.output


# -- the command hook in the agent ------------------------------------------------------------------------


class EchoSource(Source):
    name = "echo"

    def start(self, sink: Sink) -> None: ...

    def stop(self) -> None: ...

    def commands(self) -> Mapping[str, CommandHandler]:
        def echo(args: dict[str, Any]) -> dict[str, Any]:
            if "boom" in args:
                raise CommandError("asked to fail")
            return {"echo": args}

        return {"echo": echo}


class PingThief(EchoSource):
    def commands(self) -> Mapping[str, CommandHandler]:
        return {"ping": lambda args: {}}


def _device(tmp_path: Path, host: str, port: int, login: tuple[str, str] | None = None,
            **over: Any) -> dict[str, Any]:
    return {
        "device_id": f"cam-{uuid.uuid4().hex[:8]}",
        "site": SITE,
        "profile": "traffic-camera",
        "broker": {"host": host, "port": port, "backoff_min_s": 0.05, "backoff_max_s": 0.5,
                   **({"username": login[0], "password": login[1]} if login else {})},
        "outbox": {"path": str(tmp_path / "ob.sqlite3"), "sync": "normal"},
        **over,
    }


def test_sources_register_commands_answered_with_correlation(tmp_path: Path, mqtt_broker: Broker) -> None:
    with pytest.raises(ValueError, match="'ping' is already taken"):
        Agent(DeviceConfig.model_validate(_device(tmp_path, "127.0.0.1", 1)), sources=[PingThief()])
    cfg = DeviceConfig.model_validate(_device(tmp_path, mqtt_broker.host, mqtt_broker.port))
    agent = Agent(cfg, sources=[EchoSource()])
    runner, w = AgentThread(agent), Watcher(mqtt_broker.host, mqtt_broker.port)
    try:
        wait_for(lambda: agent.session.connected, what="agent connected")
        w.subscribe(w.reply_topic)
        w.request(f"cmd/v1/{agent.config.device_id}/echo", {"x": 1}, b"c-1")
        w.request(f"cmd/v1/{agent.config.device_id}/echo", {"boom": 1}, b"c-2")
        replies = wait_for(lambda: len(w.on(w.reply_topic)) == 2 and w.on(w.reply_topic), what="replies")
        by_corr = {m.properties.CorrelationData: json.loads(m.payload) for m in replies}
        assert by_corr[b"c-1"]["ok"] is True
        assert by_corr[b"c-1"]["result"] == {"echo": {"x": 1}}
        assert by_corr[b"c-2"]["ok"] is False
        assert by_corr[b"c-2"]["error"] == "asked to fail"
    finally:
        w.close()
        runner.stop()


# -- end to end with the real stack --------------------------------------------------------------------


def _db_counts(db: psycopg.Connection, device_id: str) -> tuple[Counter[tuple[str, str, str]], int]:
    rows = db.execute(
        "SELECT line, cls, direction, count FROM traffic_counts WHERE device_id = %s", (device_id,)
    ).fetchall()
    totals: Counter[tuple[str, str, str]] = Counter()
    for line, cls, direction, n in rows:
        totals[(line, cls, direction)] += n
    return totals, len(rows)


def _metric(db: psycopg.Connection, device_id: str, metric: str) -> list[float]:
    rows = db.execute(
        "SELECT value FROM telemetry WHERE device_id = %s AND metric = %s ORDER BY ts", (device_id, metric)
    ).fetchall()
    return [v for (v,) in rows]


def _per_class(totals: Counter[tuple[str, str, str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (_, cls, _), n in totals.items():
        out[cls] += n
    return out


@pytest.mark.slow
def test_camera_box_end_to_end(
    *,
    stack: Any,
    ingest: Any,
    db: psycopg.Connection,
    register_device: Callable[..., None],
    tmp_path: Path,
    model_320: Path,
    sample_video: Path,
) -> None:
    """24 s of the street footage at real time, 10 s count intervals: DB == what the camera counted."""
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    register_device(device_id, SITE, "traffic-camera")
    camera = demo_camera_config().model_copy(
        update={
            "source": SourceConfig(uri=str(sample_video), analysis_fps=10, realtime=True, loop=False),
            "intervals": IntervalConfig(counts_s=10, metrics_s=10, health_s=2),
            # This test is about delivery (DB == what the box counted). The film's camera moves, so the
            # box would rightly count nothing; suspension is off here to have numbers to carry.
            "motion": demo_camera_config().motion.model_copy(update={"camera_motion": False}),
        }
    )
    config = CameraBoxConfig.model_validate(
        _device(
            tmp_path,
            stack.mqtt_host,
            stack.mqtt_port,
            login=stack.credentials("simulator"),
            device_id=device_id,
            settings={"heartbeat_s": 1},
            camera=camera,
        )
    )
    agent, source = build_box(config, max_seconds=24)
    runner, w = AgentThread(agent), Watcher(stack.mqtt_host, stack.mqtt_port, login=stack.credentials("admin"))
    try:
        wait_for(lambda: agent.session.connected and source.pipeline.last_frame is not None, what="frames")
        w.subscribe(w.reply_topic)
        w.request(f"cmd/v1/{device_id}/snapshot", {}, b"snap-1")
        (reply,) = wait_for(lambda: w.on(w.reply_topic), what="snapshot reply")
        assert reply.properties.CorrelationData == b"snap-1"
        body = json.loads(reply.payload)
        assert body["ok"] is True, body
        jpeg = base64.b64decode(body["result"]["jpeg_b64"])
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        frame_shape = source.pipeline.last_frame.image.shape  # type: ignore[union-attr]
        assert frame_shape == (360, 640, 3)
        assert image.shape == (180, 320, 3)  # shrunk: no face or plate detail in the bytes
        assert (body["result"]["width"], body["result"]["height"]) == (320, 180)

        summary = source.wait(60)
        assert summary is not None, f"pipeline did not end: {source.error!r}"
        assert source.error is None
        logged = +summary.totals  # what the pipeline counted (and logged at its end)
        assert +source.sent == logged  # what the camera handed to the agent's sink
        stored = wait_for(
            lambda: (got := _db_counts(db, device_id))[1] == source.samples_sent and got,
            timeout=30,
            what="every count in the database",
        )
        db_totals, rows = stored
        print(
            f"frames {summary.frames}, fps {summary.fps:.1f}, per class: db {dict(_per_class(+db_totals))}"
            f" vs pipeline {dict(_per_class(logged))}; {rows} count rows"
        )
        assert +db_totals == logged  # per line, class and direction
        assert _per_class(+db_totals) == _per_class(logged)
        assert sum(logged.values()) >= 3  # people and a truck do cross in the first 24 s
        assert rows % 16 == 0  # per interval: 6 classes x 2 directions + 2 x 2 on kerb-left, zeros too
        assert rows >= 32  # at least two intervals closed

        wait_for(lambda: _metric(db, device_id, "analysis_fps"), what="analysis_fps in telemetry")
        wait_for(lambda: _metric(db, device_id, "inference_ms"), what="inference_ms in telemetry")
        assert max(_metric(db, device_id, "analysis_fps")) > 1
        assert all(v > 0 for v in _metric(db, device_id, "inference_ms"))
    finally:
        w.close()
        runner.stop()


@pytest.mark.slow
def test_run_camera_box_starts_reports_and_stops(
    *,
    stack: Any,
    ingest: Any,
    db: psycopg.Connection,
    register_device: Callable[..., None],
    tmp_path: Path,
    model_320: Path,
    sample_video: Path,
) -> None:
    device_id = f"cam-{uuid.uuid4().hex[:8]}"
    register_device(device_id, SITE, "traffic-camera")
    stop = threading.Event()
    box = threading.Thread(
        target=run_camera_box, args=(stack.mqtt_host, stack.mqtt_port, device_id, SITE, stop, tmp_path),
        kwargs={"login": stack.credentials("simulator")},
    )
    box.start()
    try:

        def status() -> tuple[bool] | None:
            return db.execute("SELECT online FROM device_status WHERE device_id = %s", (device_id,)).fetchone()

        assert wait_for(status, what="birth stored") == (True,)
        wait_for(lambda: _metric(db, device_id, "uptime_s"), what="first heartbeat stored")
    finally:
        stop.set()
        box.join(30)
    assert not box.is_alive()
    wait_for(lambda: status() == (False,), what="clean offline status")
    assert (tmp_path / f"{device_id}.outbox.sqlite3").exists()

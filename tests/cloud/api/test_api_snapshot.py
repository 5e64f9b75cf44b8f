"""A snapshot from a real camera box (street footage, the real detector) comes back through the API as a JPEG."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from api_helpers import device_broker, new_device
from support import wait_until

from cloud.ingest.service import IngestService
from ioc.stack import Stack

cv2 = pytest.importorskip("cv2")
np = pytest.importorskip("numpy")


@pytest.mark.slow
def test_snapshot_from_a_camera_box_is_served_as_jpeg(stack: Stack, ingest: IngestService, tmp_path: Path,
                                                      as_role: Callable[[str], httpx.Client]) -> None:
    from edge.camera import media, registry
    from edge.camera.box import CameraBoxConfig, build_box, demo_camera_config
    from edge.camera.config import IntervalConfig, SourceConfig

    try:
        registry.prepare("yolov3-tiny-coco", 320)
        video = media.sample_mp4()
    except (registry.ModelError, media.MediaMissingError) as exc:
        pytest.skip(f"offline model or footage unavailable: {exc}")
    tech = as_role("technician")
    device_id = new_device(tech, prefix="cam", site="camera-api", profile="traffic-camera")["device_id"]
    camera = demo_camera_config().model_copy(update={
        "source": SourceConfig(uri=str(video), analysis_fps=5, realtime=True, loop=True),
        "intervals": IntervalConfig(counts_s=10, metrics_s=10, health_s=2)})
    config = CameraBoxConfig.model_validate({
        "device_id": device_id, "site": "camera-api", "profile": "traffic-camera",
        "broker": device_broker(stack.mqtt_host, stack.mqtt_port, device_id),
        "outbox": {"path": str(tmp_path / "ob.sqlite3"), "sync": "normal"}, "settings": {"heartbeat_s": 1},
        "camera": camera})
    agent, source = build_box(config, max_seconds=120)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: source.pipeline.last_frame is not None and
                   tech.get(f"/devices/{device_id}").json()["live"]["online"], what="frames and online")
        r = tech.post(f"/devices/{device_id}/commands", json={"command": "snapshot", "args": {"quality": 70}})
        assert r.status_code == 202, r.text
        command_id = r.json()["command_id"]
        done = wait_until(lambda: (x := tech.get(f"/devices/{device_id}/commands/{command_id}").json())["status"]
                          not in ("pending", "delivered") and x, what="snapshot reply")
        assert done["status"] == "ok", done
        assert done["has_image"] is True
        assert "jpeg_b64" not in done["result"]  # the image is served on its own, not inside the JSON
        img = tech.get(f"/devices/{device_id}/commands/{command_id}/image")
        assert img.headers["content-type"] == "image/jpeg"
        image = cv2.imdecode(np.frombuffer(img.content, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (done["result"]["height"], done["result"]["width"], 3) == (180, 320, 3)  # long side 320
    finally:
        agent.stop()
        thread.join(30)

"""`ioc edge camera preview`: lines with their in/out arrows, zones and ground points on a real frame,
and a clear failure when a configured point lies outside the image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml
from typer.testing import CliRunner

from edge.camera.preview import IN_BGR, LINE_BGR, OUT_BGR, ZONE_BGR
from edge.cli import app as edge_app


def _camera_yaml(tmp_path: Path, vtest_video: Path, line_end_x: float = 230) -> Path:
    cfg = {
        "camera_id": "vtest",
        "source": {"uri": str(vtest_video)},
        # pointing down the image: "in" is a walk to the left (as in tests/data/vtest.yaml)
        "lines": [{"name": "path-west", "points": [[230, 175], [line_end_x, 335]]}],
        "zones": [{"name": "square", "polygon": [[300, 300], [600, 300], [600, 500], [300, 500]]}],
        "homography": {
            "image_points": [[200, 200], [560, 200], [700, 520], [80, 520]],
            "width_m": 10.0,
            "length_m": 20.0,
        },
    }
    path = tmp_path / "camera.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _near(image: np.ndarray, region: tuple[int, int, int, int], bgr: tuple[int, int, int]) -> int:
    x0, y0, x1, y1 = region
    diff = np.abs(image[y0:y1, x0:x1].astype(int) - np.array(bgr)).sum(axis=2)
    return int((diff < 60).sum())


def test_preview_draws_lines_with_in_out_arrows_zones_and_ground_points(tmp_path: Path, vtest_video: Path) -> None:
    out = tmp_path / "preview.png"
    result = CliRunner().invoke(
        edge_app, ["camera", "preview", "--config", str(_camera_yaml(tmp_path, vtest_video)), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(out))
    assert image.shape == (576, 768, 3)  # the frame's own size: coordinates read as configured
    assert _near(image, (226, 200, 235, 310), LINE_BGR) > 50  # the line itself
    # "in" arrow on the left of the downward line, "out" arrow on its right (line midpoint y=255)
    left, right = (150, 225, 228, 285), (232, 225, 310, 285)
    assert _near(image, left, IN_BGR) > 30
    assert _near(image, left, OUT_BGR) == 0
    assert _near(image, right, OUT_BGR) > 30
    assert _near(image, right, IN_BGR) == 0
    assert _near(image, (296, 296, 604, 304), ZONE_BGR) > 100  # the zone's top edge


def test_preview_fails_clearly_when_a_point_is_outside_the_image(tmp_path: Path, vtest_video: Path) -> None:
    out = tmp_path / "preview.png"
    cfg = _camera_yaml(tmp_path, vtest_video, line_end_x=900)  # vtest.avi is 768 wide
    result = CliRunner().invoke(edge_app, ["camera", "preview", "--config", str(cfg), "--out", str(out)])
    assert result.exit_code == 1
    assert "line path-west point 2 (900, 335) lies outside the 768x576 image" in result.output
    assert out.exists()  # still drawn, so the technician sees where the line runs off

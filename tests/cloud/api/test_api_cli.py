"""The technician's CLI (`ioc devices|config|cmd`) on the running API: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from api_helpers import RunningApi
from typer.testing import CliRunner

from ioc.cli import app


def _run(api: RunningApi, token: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "--api-url", api.url, "--token", token], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def test_register_list_configure_and_command_from_the_cli(api: RunningApi,
                                                         as_role: Callable[[str], httpx.Client]) -> None:
    tech_token = as_role("technician").headers["Authorization"].split()[1]
    site = f"site-{uuid.uuid4().hex[:6]}"
    device_id = f"gw-{uuid.uuid4().hex[:8]}"
    code, out = _run(api, tech_token, "devices", "register", device_id, "--site", site, "--profile", "env-gateway",
                     "--name", "Harbour", "--lat", "53.5", "--lon", "9.9", "--tag", "water")
    assert code == 0, out
    assert f"registered {device_id}" in out
    code, out = _run(api, tech_token, "devices", "list", "--site", site)
    assert code == 0, out
    assert device_id in out
    assert "never_seen" in out
    code, out = _run(api, tech_token, "devices", "list", "--site", site, "--json")
    listed = json.loads(out)
    assert [d["location"] for d in listed["items"]] == [{"lat": 53.5, "lon": 9.9}]
    code, out = _run(api, tech_token, "config", "set", device_id, '{"heartbeat_s": 45}')
    assert code == 0, out
    assert "desired v1, pending" in out
    code, out = _run(api, tech_token, "config", "set", device_id, '{"metrics": {"pm25": {"high": 9999}}}')
    assert code == 1
    assert "outside [0, 1000]" in out
    code, out = _run(api, tech_token, "cmd", "send", device_id, "ping", "--no-wait")
    assert code == 0, out
    assert "ping -> pending" in out  # never seen: nobody listens, it will expire
    code, out = _run(api, tech_token, "devices", "register", "gw-bad", "--site", site, "--profile", "toaster")
    assert code == 1
    assert "unknown profile 'toaster'" in out
    viewer_token = as_role("viewer").headers["Authorization"].split()[1]
    code, out = _run(api, viewer_token, "devices", "retire", device_id)
    assert code == 1
    assert "403" in out


def _run_split(api: RunningApi, token: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--api-url", api.url, "--token", token], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_import_and_bulk_config_with_progress(api: RunningApi, as_role: Callable[[str], httpx.Client],
                                              tmp_path: Path) -> None:
    tech_token = as_role("technician").headers["Authorization"].split()[1]
    site = f"site-{uuid.uuid4().hex[:6]}"
    run = uuid.uuid4().hex[:6]
    fleet = [{"device_id": f"gw-{run}-{i:02d}", "site": site, "profile": "env-gateway"} for i in range(23)]
    fleet += [{"device_id": f"cam-{run}-{i}", "site": site, "profile": "traffic-camera"} for i in range(2)]
    (tmp_path / "fleet.json").write_text(json.dumps(fleet))
    code, out, err = _run_split(api, tech_token, "devices", "import", str(tmp_path / "fleet.json"), "--chunk", "10")
    assert code == 0, out + err
    assert "registered 25 device(s)" in out
    assert "provisioning" in err  # the bar, on stderr
    assert "100%" in err
    listed = as_role("viewer").get("/devices", params={"site": site, "limit": 100}).json()["items"]
    assert sorted(d["device_id"] for d in listed) == sorted(d["device_id"] for d in fleet)

    # a chunk holding an existing id is refused whole; the CLI says how far it got
    again = [{"device_id": f"gw-{run}-new", "site": site, "profile": "env-gateway"}, fleet[0]]
    (tmp_path / "again.json").write_text(json.dumps(again))
    code, out, _ = _run_split(api, tech_token, "devices", "import", str(tmp_path / "again.json"))
    assert code == 1
    assert f"already registered: {fleet[0]['device_id']}" in out
    assert "registered 0 of 2 device(s)" in out

    # bulk config: every env gateway of the site gets a version, the cameras refuse it with the reason
    code, out, err = _run_split(api, tech_token, "config", "bulk", "--site", site, "--json",
                                '{"metrics": {"pm25": {"high": 50}}}')
    assert code == 0, out + err
    results = {r["device_id"]: r for r in json.loads(out)}
    assert set(results) == {d["device_id"] for d in fleet}
    assert all(results[d["device_id"]]["version"] == 1 for d in fleet if d["profile"] == "env-gateway")
    for cam in (d["device_id"] for d in fleet if d["profile"] == "traffic-camera"):
        assert results[cam]["version"] is None
        assert "pm25" in results[cam]["error"]
    desired = as_role("viewer").get(f"/devices/{fleet[3]['device_id']}/config").json()["desired"]
    assert desired["settings"]["metrics"]["pm25"]["high"] == 50
    code, out, err = _run_split(api, tech_token, "config", "bulk", "--site", site, '{"heartbeat_s": 40}')
    assert code == 0, out + err
    assert "25 of 25 device(s) got the change" in out  # every profile has a heartbeat
    assert "config" in err
    assert "100%" in err

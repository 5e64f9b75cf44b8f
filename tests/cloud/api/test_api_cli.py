"""The technician's CLI (`ioc devices|config|cmd`) on the running API: tables for people, JSON for scripts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

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

"""`ioc grafana push`: upload the provisioned datasource and every dashboard into an existing Grafana through
its HTTP API, for installations that cannot mount the provisioning files. Idempotent: the datasource is
created or updated by uid, dashboards are written with overwrite into one folder.

Plain httpx on Grafana's documented endpoints: grafana-client 4.x/5.x depend on niquests, whose
urllib3-future replaces the `urllib3` package that requests (and so schemathesis) import."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

log = logging.getLogger(__name__)

GRAFANA = Path(__file__).resolve().parent
DATASOURCE_FILE = GRAFANA / "provisioning" / "datasources" / "ioc.yaml"
DASHBOARD_DIR = GRAFANA / "dashboards"
FOLDER_UID, FOLDER_TITLE = "ioc", "City IOC"
_VAR = re.compile(r"\$\{(\w+)\}")


class PushError(RuntimeError):
    """What Grafana refused, with its answer."""


def datasource_payload(values: Mapping[str, str], path: Path = DATASOURCE_FILE) -> dict[str, Any]:
    """The provisioning file's datasource with its ${VAR}s filled from `values` (the same variables Grafana
    reads from its environment), as the HTTP API wants it."""
    (raw,) = yaml.safe_load(path.read_text(encoding="utf-8"))["datasources"]
    missing = sorted(set(_VAR.findall(json.dumps(raw))) - set(values))
    if missing:
        raise PushError(f"no value for {', '.join(missing)} (needed by {path.name})")
    ds = _fill(raw, values)
    json_data = dict(ds.get("jsonData", {}))
    if isinstance(json_data.get("timescaledb"), str):
        json_data["timescaledb"] = json_data["timescaledb"].lower() == "true"
    return {"name": ds["name"], "uid": ds["uid"], "type": ds["type"], "access": ds.get("access", "proxy"),
            "url": ds["url"], "user": ds["user"], "isDefault": ds.get("isDefault", False), "jsonData": json_data,
            "secureJsonData": dict(ds.get("secureJsonData", {}))}


def _fill(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, values) for v in node]
    if isinstance(node, str):
        return _VAR.sub(lambda m: values[m.group(1)], node)
    return node


def load_dashboards(folder: Path = DASHBOARD_DIR) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


@dataclass
class PushResult:
    datasource: str = ""  # "created" or "updated"
    folder: str = ""
    dashboards: list[str] = field(default_factory=list)


def _check(r: httpx.Response) -> httpx.Response:
    if r.is_error:
        raise PushError(f"Grafana answered {r.status_code}: {r.text[:300]}")
    return r


def _exists(api: httpx.Client, path: str) -> bool:
    r = api.get(path)
    if r.status_code == 404:
        return False
    _check(r)
    return True


def push(api: httpx.Client, datasource: dict[str, Any], dashboards: list[dict[str, Any]]) -> PushResult:
    out = PushResult()
    try:
        uid = datasource["uid"]
        if _exists(api, f"/api/datasources/uid/{uid}"):
            _check(api.put(f"/api/datasources/uid/{uid}", json=datasource))
            out.datasource = "updated"
        else:
            _check(api.post("/api/datasources", json=datasource))
            out.datasource = "created"
        if _exists(api, f"/api/folders/{FOLDER_UID}"):
            out.folder = "exists"
        else:
            _check(api.post("/api/folders", json={"title": FOLDER_TITLE, "uid": FOLDER_UID}))
            out.folder = "created"
        for d in dashboards:
            _check(api.post("/api/dashboards/db", json={"dashboard": {**d, "id": None}, "folderUid": FOLDER_UID,
                                                         "overwrite": True, "message": "ioc grafana push"}))
            out.dashboards.append(d["uid"])
    except httpx.HTTPError as e:
        raise PushError(f"Grafana unreachable: {e}") from None
    return out


def connect(url: str, token: str | None, user: str | None, password: str | None) -> httpx.Client:
    """A client for Grafana's HTTP API: a service-account token, else basic auth, else anonymous."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    auth = (user, password or "") if user and not token else None
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, auth=auth, timeout=30)

"""`ioc grafana push`: upload the provisioned datasource and every dashboard into an existing Grafana through
its HTTP API (grafana-client), for installations that cannot mount the provisioning files. Idempotent:
the datasource is created or updated by uid, dashboards are written with overwrite into one folder."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from grafana_client import GrafanaApi
from grafana_client.client import GrafanaClientError

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


def _exists(call: Any, *args: Any) -> bool:
    try:
        call(*args)
    except GrafanaClientError as e:
        if e.status_code == 404:
            return False
        raise PushError(f"Grafana answered {e.status_code}: {e.message}") from None
    return True


def push(api: GrafanaApi, datasource: dict[str, Any], dashboards: list[dict[str, Any]]) -> PushResult:
    out = PushResult()
    try:
        if _exists(api.datasource.get_datasource_by_uid, datasource["uid"]):
            api.datasource.update_datasource_by_uid(datasource["uid"], datasource)
            out.datasource = "updated"
        else:
            api.datasource.create_datasource(datasource)
            out.datasource = "created"
        if _exists(api.folder.get_folder, FOLDER_UID):
            out.folder = "exists"
        else:
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            out.folder = "created"
        for d in dashboards:
            api.dashboard.update_dashboard({"dashboard": {**d, "id": None}, "folderUid": FOLDER_UID,
                                            "overwrite": True, "message": "ioc grafana push"})
            out.dashboards.append(d["uid"])
    except GrafanaClientError as e:
        raise PushError(f"Grafana answered {e.status_code}: {e.message}") from None
    return out


def connect(url: str, token: str | None, user: str | None, password: str | None) -> GrafanaApi:
    credential: str | tuple[str, str] | None = token or ((user, password or "") if user else None)
    return GrafanaApi.from_url(url, credential=credential)

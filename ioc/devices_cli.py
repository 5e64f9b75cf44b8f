"""The technician's CLI on the registry API: `ioc devices …`, `ioc config …`, `ioc cmd …`.

Everything goes through the HTTP API (httpx), so the CLI obeys the same roles, validation and audit
log as any other client. `--json` prints the API's answer for scripts; otherwise rich tables.
URL: --api-url or IOC_API_URL (default http://127.0.0.1:8080); token: --token or IOC_API_TOKEN, else the
local stack's bootstrap admin token file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ioc.api_cli import admin_token_path

console = Console()
devices_app = typer.Typer(help="Devices in the registry (through the API).", no_args_is_help=True)
config_app = typer.Typer(help="Desired and reported config of devices.", no_args_is_help=True)
cmd_app = typer.Typer(help="Commands to devices: ping, reboot, set-interval, flush, snapshot.", no_args_is_help=True)

ApiUrl = Annotated[str | None, typer.Option("--api-url", help="registry API (default IOC_API_URL or :8080)")]
Token = Annotated[str | None, typer.Option("--token", help="API token (default IOC_API_TOKEN or the stack's)")]
Json = Annotated[bool, typer.Option("--json", help="print the API's JSON answer")]
StackDir = Annotated[Path | None, typer.Option("--dir", help="stack folder holding the admin token")]


def client(api_url: str | None, token: str | None, directory: Path | None = None) -> httpx.Client:
    url = api_url or os.environ.get("IOC_API_URL") or "http://127.0.0.1:8080"
    token = token or os.environ.get("IOC_API_TOKEN")
    if not token:
        path = admin_token_path(directory)
        if path is not None and path.exists():
            token = path.read_text().strip()
    if not token:
        raise _fail("no API token: pass --token, set IOC_API_TOKEN, or start `ioc api` on a local stack")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _fail(msg: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {msg}")
    return typer.Exit(1)


def call(c: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    """One request; a 4xx/5xx ends the command with the API's own explanation."""
    try:
        r = c.request(method, path, **kw)
    except httpx.HTTPError as exc:
        raise _fail(f"registry API at {c.base_url} unreachable: {exc}") from None
    if r.status_code >= 400:
        raise _fail(f"{r.status_code}: {_detail(r)}")
    return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.content


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except (ValueError, AttributeError):
        return r.text


def _out(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json or table is None:
        console.print_json(json.dumps(data))
    else:
        console.print(table)


def _device_table(items: list[dict[str, Any]]) -> Table:
    t = Table("device", "site", "profile", "name", "status", "last seen", "backlog", "firmware", "tags")
    colour = {"online": "green", "offline": "red", "never_seen": "yellow", "retired": "dim"}
    for d in items:
        live = d["live"]
        t.add_row(d["device_id"], d["site"], d["profile"], d["name"] or "",
                  f"[{colour[live['status']]}]{live['status']}[/]", (live["last_seen"] or "-")[:19],
                  "-" if live["outbox_backlog"] is None else f"{live['outbox_backlog']:g}",
                  live["reported_firmware"] or d["firmware"] or "-", ",".join(d["tags"]))
    return t


# -- devices ----------------------------------------------------------------------------------
@devices_app.command("register")
def register(device_id: str, site: Annotated[str, typer.Option()],
             profile: Annotated[str, typer.Option(help="a profile from firmware-config/profiles")],
             name: Annotated[str | None, typer.Option()] = None,
             lat: Annotated[float | None, typer.Option()] = None, lon: Annotated[float | None, typer.Option()] = None,
             tag: Annotated[list[str] | None, typer.Option(help="repeatable")] = None,
             api_url: ApiUrl = None, token: Token = None, directory: StackDir = None, as_json: Json = False) -> None:
    """Provision one device."""
    body: dict[str, Any] = {"device_id": device_id, "site": site, "profile": profile, "name": name,
                            "tags": tag or []}
    if lat is not None and lon is not None:
        body["location"] = {"lat": lat, "lon": lon}
    with client(api_url, token, directory) as c:
        data = call(c, "POST", "/devices", json=body)
    if as_json:
        _out(data, True)
    else:
        console.print(f"registered {device_id} at {site} ({profile})")


@devices_app.command("import")
def import_devices(file: Annotated[Path, typer.Argument(help="JSON list of devices as POST /devices takes them")],
                   chunk: Annotated[int, typer.Option(min=1, max=10_000, help="devices per request")] = 500,
                   api_url: ApiUrl = None, token: Token = None, directory: StackDir = None,
                   as_json: Json = False) -> None:
    """Provision many devices, `chunk` per request (each all or nothing), with a progress bar."""
    try:
        items = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise _fail(f"{file}: {exc}") from None
    if not isinstance(items, list) or not items:
        raise _fail(f"{file}: expected a JSON list of devices")
    created: list[Any] = []
    credentials: dict[str, str] = {}
    with client(api_url, token, directory) as c, _progress(as_json) as bar:
        task = bar.add_task("provisioning", total=len(items))
        for i in range(0, len(items), chunk):
            try:
                data = call(c, "POST", "/devices", json=items[i:i + chunk])
            except typer.Exit:
                console.print(f"registered {len(created)} of {len(items)} device(s) before that chunk failed")
                raise
            created += data["created"]
            credentials |= data.get("credentials") or {}
            bar.advance(task, len(items[i:i + chunk]))
    if as_json:
        _out({"created": created, "credentials": credentials or None}, True)
        return
    console.print(f"registered {len(created)} device(s)"
                  + (f"; {len(credentials)} broker password(s) issued (shown once: use --json to keep them)"
                     if credentials else ""))


def _progress(quiet: bool) -> Progress:
    """A progress bar on stderr (stdout stays clean for --json), hidden with --json."""
    return Progress(console=Console(stderr=True), disable=quiet, transient=False)


@devices_app.command("list")
def list_devices(site: str | None = None, profile: str | None = None,
                 status: Annotated[str | None, typer.Option(help="online, offline, never_seen, retired")] = None,
                 tag: str | None = None, q: Annotated[str | None, typer.Option(help="text search")] = None,
                 sort: str = "device_id", limit: int = 50,
                 api_url: ApiUrl = None, token: Token = None, directory: StackDir = None, as_json: Json = False,
                 ) -> None:
    params = {k: v for k, v in {"site": site, "profile": profile, "status": status, "tag": tag, "q": q,
                                "sort": sort, "limit": limit}.items() if v is not None}
    with client(api_url, token, directory) as c:
        data = call(c, "GET", "/devices", params=params)
    _out(data, as_json, _device_table(data["items"]))


@devices_app.command("show")
def show(device_id: str, api_url: ApiUrl = None, token: Token = None, directory: StackDir = None,
         as_json: Json = False) -> None:
    with client(api_url, token, directory) as c:
        data = call(c, "GET", f"/devices/{device_id}")
    _out(data, as_json, _device_table([data]))


@devices_app.command("update")
def update(device_id: str, name: str | None = None, site: str | None = None,
           lat: float | None = None, lon: float | None = None,
           tag: Annotated[list[str] | None, typer.Option(help="replaces the tags; repeatable")] = None,
           firmware: str | None = None,
           api_url: ApiUrl = None, token: Token = None, directory: StackDir = None, as_json: Json = False) -> None:
    body: dict[str, Any] = {k: v for k, v in {"name": name, "site": site, "firmware": firmware, "tags": tag}.items()
                            if v is not None}
    if lat is not None and lon is not None:
        body["location"] = {"lat": lat, "lon": lon}
    with client(api_url, token, directory) as c:
        data = call(c, "PATCH", f"/devices/{device_id}", json=body)
    _out(data, as_json, _device_table([data]))


@devices_app.command("retire")
def retire(device_id: str, api_url: ApiUrl = None, token: Token = None, directory: StackDir = None) -> None:
    """Take a device out of service; its data stays."""
    with client(api_url, token, directory) as c:
        call(c, "DELETE", f"/devices/{device_id}")
    console.print(f"retired {device_id}")


# -- config -----------------------------------------------------------------------------------
@config_app.command("show")
def config_show(device_id: str, api_url: ApiUrl = None, token: Token = None, directory: StackDir = None,
                as_json: Json = False) -> None:
    with client(api_url, token, directory) as c:
        data = call(c, "GET", f"/devices/{device_id}/config")
    t = Table("path", "desired", "reported", title=f"{device_id}: {data['state']}"
              f" (desired v{(data['desired'] or {}).get('version', '-')},"
              f" reported v{(data['reported'] or {}).get('version', '-')})")
    for d in data["difference"]:
        t.add_row(d["path"], json.dumps(d["desired"]), json.dumps(d["reported"]))
    _out(data, as_json, t)
    if data.get("error") and not as_json:
        console.print(f"[red]device refused it:[/red] {data['error']}")


@config_app.command("set")
def config_set(device_id: str, settings: Annotated[str, typer.Argument(help="settings JSON, or @file.json")],
               api_url: ApiUrl = None, token: Token = None, directory: StackDir = None, as_json: Json = False) -> None:
    """Replace the device's steerable settings (a new desired version)."""
    body = {"settings": _json_arg(settings)}
    with client(api_url, token, directory) as c:
        data = call(c, "PUT", f"/devices/{device_id}/config/desired", json=body)
    _out(data, as_json) if as_json else console.print(f"{device_id}: desired v{data['desired']['version']}, "
                                                      f"{data['state']}")


@config_app.command("bulk")
def config_bulk(settings: Annotated[str, typer.Argument(help="settings JSON, or @file.json")],
                site: str | None = None, tag: str | None = None,
                api_url: ApiUrl = None, token: Token = None, directory: StackDir = None, as_json: Json = False) -> None:
    """Apply one change to every active device of a site and/or tag, one device at a time with a progress
    bar: a device that refuses it (another profile) is listed with the reason and the rest still get it."""
    if site is None and tag is None:
        raise _fail("give --site, --tag or both")
    body = {"settings": _json_arg(settings)}
    with client(api_url, token, directory) as c:
        ids = _matching_ids(c, site, tag)
        results: list[dict[str, Any]] = []
        with _progress(as_json) as bar:
            task = bar.add_task("config", total=len(ids))
            for device_id in ids:
                results.append(_put_desired(c, device_id, body, len(results)))
                bar.advance(task)
    t = Table("device", "version", "error")
    for r in results:
        t.add_row(r["device_id"], str(r["version"] or "-"), r["error"] or "")
    _out(results, as_json, t)
    if not as_json:
        refused = sum(1 for r in results if r["error"])
        console.print(f"{len(results) - refused} of {len(results)} device(s) got the change")


def _matching_ids(c: httpx.Client, site: str | None, tag: str | None) -> list[str]:
    params: dict[str, Any] = {"limit": 1000, **({"site": site} if site else {}), **({"tag": tag} if tag else {})}
    ids: list[str] = []
    while True:
        page = call(c, "GET", "/devices", params=params)
        ids += [d["device_id"] for d in page["items"]]
        if not page["next_cursor"]:
            return ids
        params["cursor"] = page["next_cursor"]


def _put_desired(c: httpx.Client, device_id: str, body: dict[str, Any], done: int) -> dict[str, Any]:
    """The device's new version, or the API's reason when it refuses the change (4xx); anything else
    (API or broker away) stops the run, saying how many devices got it first."""
    try:
        r = c.put(f"/devices/{device_id}/config/desired", json=body)
    except httpx.HTTPError as exc:
        raise _fail(f"registry API at {c.base_url} unreachable after {done} device(s): {exc}") from None
    if r.status_code in (404, 409, 422):
        return {"device_id": device_id, "version": None, "error": _detail(r)}
    if r.status_code >= 400:
        raise _fail(f"{r.status_code}: {_detail(r)}; {done} device(s) got the change first")
    return {"device_id": device_id, "version": r.json()["desired"]["version"], "error": None}


def _json_arg(text: str) -> Any:
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _fail(f"not JSON: {exc}") from None


# -- commands ---------------------------------------------------------------------------------
@cmd_app.command("send")
def cmd_send(device_id: str,
             command: Annotated[str, typer.Argument(help="ping, reboot, set-interval, flush, snapshot")],
             args: Annotated[str, typer.Option(help="arguments JSON")] = "{}",
             timeout: Annotated[float, typer.Option(help="seconds to wait for the reply")] = 30.0,
             wait: Annotated[bool, typer.Option(help="wait for the final status")] = True,
             out: Annotated[Path | None, typer.Option(help="write a snapshot's JPEG here")] = None,
             key: Annotated[str | None, typer.Option(help="idempotency key (safe to retry)")] = None,
             api_url: ApiUrl = None, token: Token = None, directory: StackDir = None, as_json: Json = False) -> None:
    headers = {"Idempotency-Key": key} if key else {}
    with client(api_url, token, directory) as c:
        sent = call(c, "POST", f"/devices/{device_id}/commands", headers=headers,
                    json={"command": command, "args": _json_arg(args), "timeout_s": timeout})
        data = sent
        deadline = time.monotonic() + timeout + 5
        while wait and data["status"] in ("pending", "delivered") and time.monotonic() < deadline:
            time.sleep(0.3)
            data = call(c, "GET", f"/devices/{device_id}/commands/{sent['command_id']}")
        if out is not None and data.get("has_image"):
            out.write_bytes(call(c, "GET", f"/devices/{device_id}/commands/{sent['command_id']}/image"))
    if as_json:
        _out(data, True)
        return
    colour = "green" if data["status"] == "ok" else "yellow" if data["status"] in ("pending", "delivered") else "red"
    console.print(f"{command} -> [{colour}]{data['status']}[/] {json.dumps(data['result']) if data['result'] else ''}"
                  f"{data['error'] or ''}")
    if out is not None and data.get("has_image"):
        console.print(f"snapshot written to {out}")


@cmd_app.command("list")
def cmd_list(device_id: str, limit: int = 20, api_url: ApiUrl = None, token: Token = None,
             directory: StackDir = None, as_json: Json = False) -> None:
    with client(api_url, token, directory) as c:
        data = call(c, "GET", f"/devices/{device_id}/commands", params={"limit": limit})
    t = Table("created", "command", "status", "actor", "error")
    for r in data:
        t.add_row(r["created_at"][:19], r["command"], r["status"], r["actor"], r["error"] or "")
    _out(data, as_json, t)

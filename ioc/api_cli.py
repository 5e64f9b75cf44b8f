"""`ioc api`: run the registry API; `ioc api token create` makes a token straight in the database
(recovery when the bootstrap token is lost). The client side of the CLI is in `ioc/devices_cli.py`."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from ioc.endpoints import resolve
from ioc.stack import Stack, StackError

console = Console()
api_app = typer.Typer(help="The registry API (devices, twin, commands, tokens).", invoke_without_command=True)
ADMIN_TOKEN_FILE = "api-admin-token"


def admin_token_path(directory: Path | None) -> Path | None:
    """<stack dir>/api-admin-token, when a local stack exists."""
    try:
        return Stack.existing(directory).root / ADMIN_TOKEN_FILE
    except StackError:
        return None


@api_app.callback()
def serve(ctx: typer.Context,
          host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="bind port")] = 8080,
          dsn: Annotated[str | None, typer.Option(help="database URL")] = None,
          mqtt_host: Annotated[str | None, typer.Option()] = None,
          mqtt_port: Annotated[int | None, typer.Option()] = None,
          directory: Annotated[Path | None, typer.Option("--dir", help="stack folder")] = None,
          token_file: Annotated[Path | None, typer.Option(help="where the bootstrap admin token goes")] = None,
          workers: Annotated[int, typer.Option(min=1, max=32, help=(
              "API processes sharing the port: one serves about a core's worth of requests"))] = 1,
          ) -> None:
    """Serve the API (Ctrl-C stops). On first start it writes an admin token to the stack folder (0600)."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from cloud.api.app import create_app
    from cloud.api.settings import ApiSettings

    ep = resolve(dsn, mqtt_host, mqtt_port, directory, service="registry")
    path = token_file or admin_token_path(directory)
    local = ep.stack is not None and ep.stack.broker_auth  # the local broker: issue device logins into it
    # Elsewhere (docker-compose.yml) IOC_API_BROKER_AUTH_DIR / _PID_FILE / _CA_DIR say where the broker is.
    broker: dict[str, object] = ({"broker_auth_dir": ep.stack.mosquitto.auth_dir,
                                  "broker_pid_file": ep.stack.mosquitto.pid_file,
                                  "broker_ca_dir": ep.stack.mosquitto.tls_dir} if local and ep.stack else {})
    settings = ApiSettings(dsn=ep.dsn, mqtt_host=ep.mqtt_host, mqtt_port=ep.mqtt_port, admin_token_file=path,
                           mqtt_username=ep.mqtt_username, mqtt_password=ep.mqtt_password,
                           **broker)  # type: ignore[arg-type]
    console.print(f"registry API on http://{host}:{port} (docs at /docs, {workers} process(es));"
                  f" admin token file: {path or '-'}")
    # Keep-alive longer than uvicorn's 5 s: clients (the CLI, dashboards) pause between calls, and a server
    # closing an idle connection just as a client reuses it loses that request.
    if workers == 1:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", timeout_keep_alive=75)
        return
    # Several processes (a Python process uses one core): uvicorn starts each from the import string, with
    # the settings in its environment, and restarts one that dies. cloud.api.app says why that is safe.
    os.environ.update(settings.to_env())
    uvicorn.run("cloud.api.app:app_from_env", factory=True, workers=workers, host=host, port=port,
                log_level="warning", timeout_keep_alive=75)


@api_app.command("token")
def token_create(name: Annotated[str, typer.Argument(help="who holds it")],
                 role: Annotated[str, typer.Option(help="viewer, technician or admin")] = "admin",
                 dsn: Annotated[str | None, typer.Option()] = None,
                 directory: Annotated[Path | None, typer.Option("--dir")] = None) -> None:
    """Make a token in the database directly (needs database access, not a token). Printed once."""
    from psycopg import AsyncConnection

    from cloud.api.auth import Role, create_token
    from ioc.endpoints import resolve_dsn

    if role not in Role.__members__:
        raise typer.BadParameter(f"role must be one of {', '.join(Role.__members__)}")

    async def make() -> str:
        async with await AsyncConnection.connect(resolve_dsn(dsn, directory), autocommit=True) as conn:
            _, token = await create_token(conn, name, Role[role], f"ioc api token ({os.environ.get('USER', '?')})")
            return token

    console.print(asyncio.run(make()), soft_wrap=True)

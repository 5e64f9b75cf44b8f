"""`ioc grafana push`: the datasource and dashboards into an existing Grafana over its HTTP API."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.console import Console

console = Console()
grafana_app = typer.Typer(help="Grafana: upload the datasource and dashboards.", no_args_is_help=True)


@grafana_app.command("push")
def push(url: Annotated[str, typer.Option(help="Grafana base URL, e.g. http://grafana:3000")],
         token: Annotated[str | None, typer.Option(help="service account token (or IOC_GRAFANA_TOKEN)")] = None,
         user: Annotated[str | None, typer.Option(help="basic auth user, when no token")] = None,
         password: Annotated[str | None,
                             typer.Option(help="basic auth password (or IOC_GRAFANA_ADMIN_PASSWORD)")] = None,
         db_host: Annotated[str, typer.Option(help="host:port Grafana reaches the database at")] = "localhost:5432",
         db_name: Annotated[str, typer.Option()] = "ioc",
         db_password: Annotated[str | None,
                                typer.Option(help="ioc_grafana's password (or IOC_GRAFANA_DB_PASSWORD)")] = None,
         db_sslmode: Annotated[str, typer.Option()] = "disable",
         timescaledb: Annotated[bool, typer.Option("--timescaledb/--postgres")] = True) -> None:
    """Create or update datasource `ioc-postgres` and write every dashboard into folder "City IOC"."""
    from cloud.grafana.push import PushError, connect, datasource_payload, load_dashboards
    from cloud.grafana.push import push as do_push

    values = {"IOC_GRAFANA_DB_HOST": db_host, "IOC_GRAFANA_DB_NAME": db_name, "IOC_GRAFANA_DB_SSLMODE": db_sslmode,
              "IOC_GRAFANA_TIMESCALEDB": "true" if timescaledb else "false",
              "IOC_GRAFANA_DB_PASSWORD": db_password or os.environ.get("IOC_GRAFANA_DB_PASSWORD", "")}
    api = connect(url, token or os.environ.get("IOC_GRAFANA_TOKEN"), user,
                  password or os.environ.get("IOC_GRAFANA_ADMIN_PASSWORD"))
    try:
        result = do_push(api, datasource_payload(values), load_dashboards())
    except PushError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"datasource {result.datasource}; folder {result.folder}; "
                  f"{len(result.dashboards)} dashboards: {', '.join(result.dashboards)}")

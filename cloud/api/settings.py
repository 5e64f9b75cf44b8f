"""Settings of the registry API (`IOC_API_*` variables or flags of `ioc api`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOC_API_", extra="forbid")

    dsn: str = Field(description="PostgreSQL URL of the IOC database")
    mqtt_host: str = Field(default="127.0.0.1", description="broker the registry publishes config and commands to")
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = Field(default=None, description="broker credentials of the registry")
    mqtt_password: str | None = Field(default=None, description="never logged")
    client_id: str = Field(default="ioc-registry", pattern=r"^[A-Za-z0-9._-]{1,64}$", description=(
        "names the registry on the broker: command replies come back on rsp/v1/{device}/{client_id}, read through "
        "the shared subscription $share/{client_id}/...; each API process connects as {client_id}-{random}"))
    admin_token_file: Path | None = Field(
        default=None, description="where the bootstrap admin token is written (mode 0600) when no admin exists")
    pool_min: int = Field(default=2, ge=1, le=100)
    pool_max: int = Field(default=10, ge=1, le=200)
    broker_auth_dir: Path | None = Field(
        default=None, description="issue per-device broker credentials into this folder (see ioc.stack.broker_auth)")
    broker_pid_file: Path | None = Field(default=None, description="Mosquitto's pid file, to reload it (SIGHUP)")
    broker_ca_dir: Path | None = Field(
        default=None, description="sign device CSRs for mutual TLS with the CA in this folder (see ioc.stack.tls)")
    token_cache_s: float = Field(default=5.0, ge=0, le=300, description=(
        "how long a checked API token is trusted without a query; revoking through the API takes effect at once"))
    sweep_interval_s: float = Field(default=0.5, gt=0, le=60, description="how often open commands are checked")
    certificate_check_interval_s: float = Field(default=10.0, gt=0, le=600, description=(
        "how often each API process looks for superseded device certificates whose grace period has passed "
        "(they then go on the broker's CRL); the lateness of a revocation is at most this"))

    def to_env(self) -> dict[str, str]:
        """These settings as the `IOC_API_*` variables `app_from_env` reads: how `ioc api --workers N` hands
        them to worker processes (uvicorn starts each from an import string)."""
        return {f"IOC_API_{k.upper()}": str(v) for k, v in self.model_dump(exclude_none=True).items()}

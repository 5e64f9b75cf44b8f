"""Request and response models of the registry API (Base / Create / Update / Public, as the FastAPI template).

Requests are strict (`extra="forbid"`): a misspelt field is an error the caller sees, not silently ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.messages import DeviceId
from contract.topics import check_segment
from ioc.stack.broker_auth import STACK_SERVICES

Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
DeviceStatus = Literal["online", "offline", "never_seen", "retired"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Location(_Request):
    lat: float = Field(ge=-90, le=90, description="WGS 84 latitude, degrees")
    lon: float = Field(ge=-180, le=180, description="WGS 84 longitude, degrees")


class DeviceBase(_Request):
    name: str | None = Field(default=None, max_length=200, description="what a person calls it")
    location: Location | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)
    installed_at: datetime | None = Field(default=None, description="when it was mounted in the field")
    firmware: str | None = Field(default=None, max_length=64, description="firmware the technician installed")


class DeviceCreate(DeviceBase):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "device_id": "gw-0042", "site": "district-01", "profile": "env-gateway", "name": "Market square",
        "location": {"lat": 52.52, "lon": 13.405}, "tags": ["air", "pilot"]}]})

    device_id: DeviceId
    site: str = Field(min_length=1, max_length=64, description="site id, a topic segment")
    profile: str = Field(min_length=1, max_length=64, description="a profile from firmware-config/profiles")

    @field_validator("site")
    @classmethod
    def _site_is_topic_safe(cls, v: str) -> str:
        return check_segment(v, "site")

    @field_validator("device_id")
    @classmethod
    def _not_a_service_login(cls, v: str) -> str:
        return check_not_service_login(v)


def check_not_service_login(device_id: str) -> str:
    """A device's broker login is its id: one equal to a stack service's login would take that login away."""
    if device_id in STACK_SERVICES:
        raise ValueError(f"{device_id!r} is the broker login of a stack service; reserved: "
                         f"{', '.join(sorted(STACK_SERVICES))}")
    return device_id


class DeviceUpdate(_Request):
    """Only the fields given change; `null` clears an optional field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "Market sq. north",
                                                                             "tags": ["air"]}]})

    site: str | None = Field(default=None, min_length=1, max_length=64)
    profile: str | None = Field(default=None, min_length=1, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    location: Location | None = None
    tags: list[Tag] | None = Field(default=None, max_length=32)
    installed_at: datetime | None = None
    firmware: str | None = Field(default=None, max_length=64)

    @field_validator("site")
    @classmethod
    def _site_is_topic_safe(cls, v: str | None) -> str | None:
        return None if v is None else check_segment(v, "site")


class LiveStatus(BaseModel):
    """What the device and ingest last said: birth/will, heartbeat, dead letters."""

    status: DeviceStatus
    online: bool
    last_seen: datetime | None = None
    boot_id: str | None = None
    reported_firmware: str | None = None
    config_version: int | None = None
    outbox_backlog: float | None = Field(default=None, description="outbox_depth of the newest heartbeat")
    outbox_dropped: float | None = Field(default=None, description="outbox_dropped of the newest heartbeat")
    offline_reason: str | None = None
    last_error: str | None = Field(default=None, description="newest reason ingest refused one of its messages")
    last_error_at: datetime | None = None


class DevicePublic(BaseModel):
    device_id: str
    site: str
    profile: str
    name: str | None = None
    location: Location | None = None
    tags: list[str] = Field(default_factory=list)
    installed_at: datetime | None = None
    firmware: str | None = None
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None = None
    live: LiveStatus


class DevicePage(BaseModel):
    items: list[DevicePublic]
    next_cursor: str | None = Field(default=None, description="pass as `cursor` for the next page; null at the end")


class DevicesCreated(BaseModel):
    created: list[DevicePublic]
    credentials: dict[str, str] | None = Field(
        default=None, description="broker password per device id, when the registry issues broker credentials; "
        "shown only now, stored only as a hash")


class CredentialsIssued(BaseModel):
    username: str
    password: str = Field(description=(
        "shown only now; the old password stops working at once (no grace period: Mosquitto 2.0 keeps one "
        "password per username; certificates rotate with one, see POST /devices/{device_id}/certificate)"))


class TokenCreate(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "alice", "role":
                                                                             "technician"}]})

    name: str = Field(min_length=1, max_length=100, description="who or what holds it")
    role: Literal["viewer", "technician", "admin"]


class TokenPublic(BaseModel):
    token_id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret; shown only now, stored only as a hash")


class AuditEntry(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    target: str | None
    before: Any = None
    after: Any = None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None = None


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: `detail` is a sentence for a person; `errors` lists field problems (422)."""

    detail: str = Field(examples=["unknown profile 'toaster'; known profiles: env-gateway, traffic-camera"])
    errors: list[dict[str, Any]] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (400, "a cursor or parameter this API cannot use"), (401, "no valid API token"),
        (403, "the token's role is too weak"), (404, "no such device, command or token"),
        (409, "conflicts with the current state (exists already, retired, idempotency key reused)"),
        (422, "invalid input; `detail` says what and where"),
        (503, "database or broker unavailable"))}

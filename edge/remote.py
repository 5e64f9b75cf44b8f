"""Remote configuration and commands: the device's side of `cfg/v1/{id}/...` and `cmd/v1/{id}/...`.

Desired config (retained on `cfg/v1/{device_id}/desired`, JSON `DesiredConfig`):
    {"version": 7, "settings": {"heartbeat_s": 30, "metrics": {"pm25": {"interval_s": 5, "high": 50}}}}
It replaces `Settings` as a whole. It is validated (schema, then against the profile); a bad one is
refused and the running settings are kept. Either way the device publishes a retained
`ReportedConfig` on `cfg/v1/{device_id}/reported`: the version and settings it actually runs, the
outcome, and the error if any. Applied settings are persisted, so a reboot comes back with them
before the broker redelivers the retained desired config.

Commands (`cmd/v1/{device_id}/{name}`, JSON arguments, MQTT 5 response topic + correlation data):
    ping                                  -> {"boot_id", "uptime_s", "firmware", "config_version"}
    reboot                                -> replies, then the runtime restarts cleanly
    set-interval {"metric", "interval_s"} -> applied live until the next desired config or restart
    flush                                 -> closes open windows now and sends the backlog unthrottled
    (sources add their own through `Source.commands()`, e.g. the camera box's `snapshot`)
The reply (`CommandReply`) goes to the response topic with the request's correlation data.

Nothing a sender puts in a payload may stop the agent: JSON is read only by pydantic-core's parser
(nesting beyond its recursion limit is a ValueError, where Python's json raises RecursionError), a
desired config is validated strictly, and a handler's unexpected exception becomes ok=false.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from pydantic_core import from_json

from contract.messages import now_ms
from contract.twin import MAX_DESIRED_BYTES, CommandReply, ConfigError, MetricSettings, Settings

log = logging.getLogger(__name__)

MAX_ARGS_BYTES = 64 * 1024


class CommandError(ValueError):
    """A command that cannot be carried out; its text goes back in the reply."""


def desired_version_of(payload: bytes | bytearray) -> int | None:
    """Best effort: the version a (possibly invalid) desired config claims, for the report."""
    if len(payload) > MAX_DESIRED_BYTES:
        return None
    try:
        v = from_json(payload, allow_inf_nan=False).get("version")
    except (ValueError, AttributeError):
        return None
    return v if type(v) is int else None


def with_interval(settings: Settings, metric: str, interval_s: float) -> Settings:
    current = settings.metrics.get(metric, MetricSettings())
    metrics = {**settings.metrics, metric: current.model_copy(update={"interval_s": interval_s})}
    return settings.model_copy(update={"metrics": metrics})


def decode_args(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_ARGS_BYTES:
        raise CommandError(f"arguments of {len(payload)} bytes are over the limit of {MAX_ARGS_BYTES}")
    if not payload.strip():
        return {}
    try:
        args = from_json(payload, allow_inf_nan=False)
    except ValueError as exc:  # also nesting beyond the parser's recursion limit
        raise CommandError(f"arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise CommandError("arguments must be a JSON object")
    return args


Handler = Callable[[dict[str, Any]], dict[str, Any]]


def make_reply(device_id: str, command: str, run: Handler, args_payload: bytes) -> CommandReply:
    """Run one command handler and wrap its outcome; a handler's exception becomes ok=false."""
    try:
        result = run(decode_args(args_payload))
    except (CommandError, ConfigError) as exc:
        return CommandReply(device_id=device_id, command=command, ok=False, ts=now_ms(), error=str(exc))
    except ValidationError as exc:
        return CommandReply(
            device_id=device_id,
            command=command,
            ok=False,
            ts=now_ms(),
            error="; ".join(e["msg"] for e in exc.errors()[:3]),
        )
    except Exception as exc:  # a handler's bug met by odd arguments: reply, never stop the agent
        log.warning("command %s failed unexpectedly", command, exc_info=True)
        return CommandReply(device_id=device_id, command=command, ok=False, ts=now_ms(),
                            error=f"command failed: {type(exc).__name__}: {exc}"[:500])
    return CommandReply(device_id=device_id, command=command, ok=True, ts=now_ms(), result=result)

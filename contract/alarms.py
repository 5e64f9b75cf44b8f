"""Alarm notifications on the wire: MQTT topic alr/v1/{site}/{device_id}/{rule} (retained while active, a
retained `cleared` message replaces it on clear) and the body POSTed to webhooks (the same JSON)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from contract.topics import check_segment

ALARMS_FILTER = "alr/v1/+/+/+"


def alarm_topic(site: str, device_id: str, rule: str) -> str:
    return f"alr/v1/{check_segment(site, 'site')}/{check_segment(device_id, 'device id')}/{check_segment(rule, 'rule')}"


class AlarmNotice(BaseModel):
    """One transition of one alarm. `event` is what happened; `state`/`acked` what the alarm is now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1
    event: Literal["raised", "acknowledged", "cleared"]
    alarm_id: int
    history_id: int
    rule: str
    kind: str
    severity: Literal["critical", "major", "minor", "warning"]
    device_id: str
    site: str
    state: Literal["active", "cleared"]
    acked: bool
    message: str
    value: float | None
    condition_since_ms: int
    raised_at_ms: int
    at_ms: int
    actor: str
    comment: str | None = None

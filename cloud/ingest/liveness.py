"""Silent devices: online by their last status, but nothing heard for several heartbeat intervals.

A last will only arrives if the broker notices the connection die; a hung agent, or a half-open TCP
connection behind a NAT, keeps a device "online" for ever. Ingest's upkeep therefore marks a device
silent (`device_status.silent_since`) once its `last_seen` is older than `heartbeats` times its heartbeat
period (from its reported config; `default_heartbeat_s` when it never reported one), and clears the mark
when the device is heard again or goes offline. Runs in every ingest process; the statements are
idempotent.
"""

from __future__ import annotations

import logging

import psycopg

log = logging.getLogger(__name__)

# The lock the writers hold while they update device rows (cloud/ingest/writer.py): taken first, so the
# upkeep's row locks never interleave with a writer's in another order (no deadlock).
_DEVICE_ROWS_LOCK_ID = 0x10C_0003
# last_seen is written at most every 5 s per device (writer._seen_due): never call a device silent sooner.
_MIN_SILENCE_S = 15.0

_MARK = """
UPDATE device_status s SET silent_since = now()
FROM (SELECT d.device_id,
             CASE WHEN jsonb_typeof(c.config->'settings'->'heartbeat_s') = 'number'
                  THEN (c.config->'settings'->>'heartbeat_s')::float8 END AS heartbeat_s
      FROM device_status d LEFT JOIN device_config_reported c USING (device_id)
      WHERE d.online AND d.silent_since IS NULL) h
WHERE s.device_id = h.device_id
  AND coalesce(s.last_seen, s.status_changed_at)
      < now() - make_interval(secs => greatest(%(n)s * coalesce(h.heartbeat_s, %(default)s), %(floor)s))
RETURNING s.device_id"""
_CLEAR = """
UPDATE device_status SET silent_since = NULL
WHERE silent_since IS NOT NULL AND (NOT online OR last_seen > silent_since)
RETURNING device_id"""


def mark_silent(conn: psycopg.Connection, heartbeats: int = 3, default_heartbeat_s: float = 30.0) -> list[str]:
    """One pass; returns the devices newly marked silent."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DEVICE_ROWS_LOCK_ID,))
        cleared = [d for (d,) in conn.execute(_CLEAR).fetchall()]
        marked = [d for (d,) in conn.execute(
            _MARK, {"n": heartbeats, "default": default_heartbeat_s, "floor": _MIN_SILENCE_S}).fetchall()]
    if cleared:
        log.info("%d devices heard again or offline: no longer silent", len(cleared))
    if marked:
        log.warning("%d devices online but silent for %d heartbeats: %s", len(marked), heartbeats,
                    ", ".join(sorted(marked)[:10]))
    return marked

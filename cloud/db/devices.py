"""Provisioning rows in the devices table (the registry API builds on this)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from contract.profiles import load_profiles
from contract.topics import check_segment


def register_devices(conn: psycopg.Connection, devices: Iterable[tuple[str, str, str]]) -> int:
    """Upsert (device_id, site, profile) rows; unknown profiles are refused before anything is written."""
    rows = list(devices)
    known = load_profiles()
    for device_id, site, profile in rows:
        check_segment(device_id, "device id")
        check_segment(site, "site")
        if profile not in known:
            raise ValueError(f"device {device_id}: unknown profile {profile!r}; known: {sorted(known)}")
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO devices (device_id, site, profile) VALUES (%s, %s, %s)"
            " ON CONFLICT (device_id) DO UPDATE SET site = EXCLUDED.site, profile = EXCLUDED.profile",
            rows,
        )
    return len(rows)

"""Which devices exist and which profile each has, cached from the devices table."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import psycopg

from contract.profiles import DeviceProfile, load_profiles


@dataclass(frozen=True, slots=True)
class KnownDevice:
    site: str
    profile: DeviceProfile


class DeviceCache:
    """All devices, reloaded every `max_age_s` (site or profile changes). An id not in the cache is
    looked up on its own at once, so a device provisioned a moment ago is never dead-lettered; ids
    that are really unknown are remembered for `negative_ttl_s` so a flood of them costs one query each."""

    def __init__(self, dsn: str, max_age_s: float = 30.0, negative_ttl_s: float = 2.0) -> None:
        self._dsn = dsn
        self._max_age_s = max_age_s
        self._negative_ttl_s = negative_ttl_s
        self._devices: dict[str, KnownDevice] = {}
        self._unknown: dict[str, float] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def refresh(self) -> None:
        profiles = load_profiles()
        rows = self._connection().execute("SELECT device_id, site, profile FROM devices").fetchall()
        self._devices = {d: KnownDevice(s, profiles[p]) for d, s, p in rows if p in profiles}
        self._unknown.clear()
        self._loaded_at = time.monotonic()

    def get(self, device_id: str) -> KnownDevice | None:
        """May raise psycopg.Error when the database is away; the caller retries the batch."""
        now = time.monotonic()
        if now - self._loaded_at > self._max_age_s:
            with self._lock:
                self.refresh()
        dev = self._devices.get(device_id)
        if dev is not None or now - self._unknown.get(device_id, -1e9) < self._negative_ttl_s:
            return dev
        with self._lock:
            row = self._connection().execute(
                "SELECT site, profile FROM devices WHERE device_id = %s", (device_id,)).fetchone()
            profile = load_profiles().get(row[1]) if row else None
            if row is None or profile is None:
                self._unknown[device_id] = now
                return None
            dev = self._devices[device_id] = KnownDevice(row[0], profile)
            return dev

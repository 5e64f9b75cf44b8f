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
    """Refreshed periodically and, rate-limited, when an unknown id shows up (newly provisioned)."""

    def __init__(self, dsn: str, min_refresh_s: float = 2.0, max_age_s: float = 30.0) -> None:
        self._dsn = dsn
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._devices: dict[str, KnownDevice] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def refresh(self) -> None:
        profiles = load_profiles()
        with psycopg.connect(self._dsn) as conn:
            rows = conn.execute("SELECT device_id, site, profile FROM devices").fetchall()
        self._devices = {d: KnownDevice(s, profiles[p]) for d, s, p in rows if p in profiles}
        self._loaded_at = time.monotonic()

    def get(self, device_id: str) -> KnownDevice | None:
        dev = self._devices.get(device_id)
        age = time.monotonic() - self._loaded_at
        if (dev is None and age > self._min_refresh_s) or age > self._max_age_s:
            with self._lock:
                if time.monotonic() - self._loaded_at > self._min_refresh_s:
                    self.refresh()
            dev = self._devices.get(device_id)
        return dev

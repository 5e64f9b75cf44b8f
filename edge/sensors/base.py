"""The one small contract every sensor driver follows.

The sampler owns timing and aggregation; a driver only answers "what do these metrics read now".
Drivers return engineering units (already scaled), keyed by profile metric name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection


class SensorError(RuntimeError):
    """A read that failed (timeout, exception response); the sampler reports it and carries on."""

    def __init__(self, driver: str, message: str) -> None:
        super().__init__(f"{driver}: {message}")
        self.driver = driver


class SensorDriver(ABC):
    """Open once, read many times, close on shutdown. Not required to be thread-safe."""

    name: str = "sensor"

    @property
    @abstractmethod
    def metrics(self) -> frozenset[str]:
        """Profile metrics this driver provides."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Acquire ports or connections; a failure here is retried by the next read."""

    @abstractmethod
    def read(self, metrics: Collection[str], now_ms: int) -> dict[str, float]:
        """Current values of `metrics` (a subset of `self.metrics`); missing keys mean no reading."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; must be safe to call twice."""

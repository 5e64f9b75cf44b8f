"""The plugin contract between the runtime and whatever produces data on a box.

A `Source` is started with a `Sink`; it calls the sink -- from any thread, as often as it likes --
with validated contract items. The runtime owns everything after that: profile checks, thresholds,
the outbox, the MQTT session, the heartbeat. The sensor sampler (`edge.sampling.Sampler`) is one
source; the camera pipeline is another (video analytics calling back with counts and metrics).

    class CameraSource(Source):
        name = "camera"
        def start(self, sink: Sink) -> None:      # spawn the pipeline thread, keep `sink`
            ...
            sink.counts([CountSample(ts=..., interval_s=60, line="n", cls="car", direction="in", count=12)])
            sink.metrics("traffic", [MetricSample(ts=..., values={"occupancy": 31.0, "speed_mean": 42.5})])
            sink.events([Event(ts=..., kind="camera_tamper", severity="warning")])
        def stop(self) -> None: ...               # stop and join threads; the sink may be gone after this
        def health(self) -> Mapping[str, float]:  # merged into every heartbeat, e.g. analysis_fps,
            return {"analysis_fps": 9.8, "inference_ms": 14.6, "dropped_frames": 3}   # inference_ms

    Agent(config, sources=[CameraSource(...)]).run()

Rules: values are in the profile's units and metric names are the profile's (unknown names are
dropped with a warning; values outside the profile range become an `out_of_range` event instead of
a sample). Health keys must be health metrics from `firmware-config/health.yaml`. Sink calls only
write to the local outbox (milliseconds) and never block on the network.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from contract.messages import CountSample, Event, MetricSample


class Sink(Protocol):
    """Provided by the runtime; thread-safe; every call is one durable outbox transaction."""

    def metrics(self, stream: str, samples: Sequence[MetricSample]) -> None:
        """Samples for one stream of the profile (e.g. "env", "traffic")."""

    def counts(self, counts: Sequence[CountSample]) -> None:
        """Line-crossing counts (published on tlm/v1/{site}/{device}/counts)."""

    def events(self, events: Sequence[Event]) -> None:
        """Events, published at once on evt/v1/{site}/{device}/{kind}."""


CommandHandler = Callable[[dict[str, Any]], dict[str, Any]]
"""JSON arguments in, the reply's `result` out; raise `edge.remote.CommandError` to answer ok=false."""


class Source(ABC):
    """What produces data on a box. Subclass it; only `start` and `stop` are required."""

    name: str = "source"

    @abstractmethod
    def start(self, sink: Sink) -> None:
        """Begin producing; return promptly (run your loop in your own thread)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop producing and release resources; called once on shutdown or restart."""

    def health(self) -> Mapping[str, float]:
        """Extra health metrics for the heartbeat (names from health.yaml)."""
        return {}

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Emit partial aggregates now (the `flush` command)."""

    def commands(self) -> Mapping[str, CommandHandler]:
        """Extra commands answered on cmd/v1/{device_id}/{name}, e.g. the camera's `snapshot`.

        Asked once when the Agent is built; a name the runtime or another source already answers is
        refused. Handlers run on the agent's thread between heartbeats: keep them to milliseconds.
        """
        return {}

"""The edge runtime: sources -> outbox -> session, plus heartbeat, remote config and commands.

One box runs one `Agent`: one MQTT session, one outbox, one health report, whatever feeds it.

Plugging in a data producer (e.g. the camera pipeline) -- see `edge.source` for the full contract:

    from edge.agent import Agent
    from edge.source import Sink, Source

    class CameraSource(Source):
        name = "camera"
        def start(self, sink: Sink) -> None: ...   # start your thread; call sink.counts([...]),
                                                  # sink.metrics("traffic", [...]), sink.events([...])
        def stop(self) -> None: ...
        def health(self) -> Mapping[str, float]:  # analysis_fps, inference_ms, dropped_frames
            ...
        def commands(self) -> Mapping[str, CommandHandler]:   # optional: {"snapshot": handler}
            ...

    agent = Agent(load_config(path), sources=[CameraSource(...)])
    reason = agent.run()        # blocks; returns "restart" after a reboot command, else "shutdown"

Sink calls are thread-safe, return after the local commit and never touch the network. Items are
checked against the profile here (unknown metric -> dropped and logged; value outside the profile
range -> `out_of_range` event instead; thresholds from `Settings.metrics` -> `threshold` events)
so that every source gets the same local checks. The sensor `Sampler` is itself a Source, built
from `DeviceConfig.sensors`.

Threads: the caller's thread runs `run()` (heartbeat, bounds, commands and config from the inbox);
the session has its own; each source has its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

import paho.mqtt.client as mqtt

from contract import topics
from contract.messages import CountSample, Event, MetricSample, StatusMessage, now_ms
from contract.profiles import DeviceProfile, get_profile
from contract.twin import CommandReply, DesiredConfig, ReportedConfig, SetInterval, parse_desired
from edge.config import ConfigError, DeviceConfig, Settings, validate_for_profile
from edge.drain import Drainer
from edge.health import HealthProbe
from edge.outbox import Outbox, Record
from edge.remote import CommandError, desired_version_of, make_reply, with_interval
from edge.sampling import Sampler, ThresholdChecker
from edge.sensors import SensorDriver, build_driver
from edge.session import Session, reply_properties
from edge.source import Source

log = logging.getLogger(__name__)

ExitReason = Literal["shutdown", "restart"]
AGE_CHECK_S = 60.0
_APPLIED_KEY = "applied_config"
_WAKE, _REPORT = "wake", "report"  # inbox markers besides MQTT messages


class _OutboxSink:
    """The Sink handed to every source: profile checks, thresholds, then one outbox commit per call."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._thresholds = ThresholdChecker()
        self._warned: set[str] = set()

    def metrics(self, stream: str, samples: Sequence[MetricSample]) -> None:
        a = self._agent
        records: list[Record] = []
        events: list[Event] = []
        sampled = a.sampler.metric_names if a.sampler else frozenset()
        for s in samples:
            values: dict[str, float] = {}
            for name, v in s.values.items():
                spec = a.profile.metrics.get(name)
                if spec is None or spec.stream != stream:
                    if name not in self._warned:
                        self._warned.add(name)
                        log.warning(
                            "metric %r is not on stream %r of profile %s; dropped",
                            name,
                            stream,
                            a.profile.profile,
                        )
                    continue
                reason = spec.check(name, v)
                if reason:
                    events.append(
                        Event(
                            ts=s.ts,
                            kind="out_of_range",
                            severity="warning",
                            details={"metric": name, "reason": reason},
                        )
                    )
                    continue
                if name not in sampled and name in a.settings.metrics:
                    events.extend(self._thresholds.check(name, v, a.settings.metrics[name], spec, s.ts))
                values[name] = v
            if values:
                body = s if len(values) == len(s.values) else MetricSample(ts=s.ts, values=values)
                records.append(Record("tlm", stream, s.ts, body.model_dump_json()))
        records.extend(self._event_records(events))
        a.outbox.put(records, now_ms())

    def counts(self, counts: Sequence[CountSample]) -> None:
        spec = self._agent.profile.counts
        records: list[Record] = []
        for c in counts:
            if spec is None or c.cls not in spec.classes or c.direction not in spec.directions:
                self._warn_once(
                    f"count {c.cls}/{c.direction}", "not allowed by the profile's counts; dropped"
                )
                continue
            records.append(Record("counts", "counts", c.ts, c.model_dump_json(by_alias=True)))
        self._agent.outbox.put(records, now_ms())

    def _warn_once(self, what: str, why: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("%s: %s", what, why)

    def events(self, events: Sequence[Event]) -> None:
        self._agent.outbox.put(self._event_records(events), now_ms())

    @staticmethod
    def _event_records(events: Sequence[Event]) -> list[Record]:
        return [Record("evt", e.kind, e.ts, e.model_dump_json()) for e in events]


class Agent:
    def __init__(
        self,
        config: DeviceConfig,
        *,
        sources: Sequence[Source] = (),
        profile: DeviceProfile | None = None,
        drivers: list[SensorDriver] | None = None,
    ) -> None:
        self.config = config
        self.profile = profile or get_profile(config.profile)
        validate_for_profile(config, self.profile)
        self.boot_id = uuid.uuid4().hex
        ob = config.outbox
        self.outbox = Outbox(ob.path, ob.max_bytes, ob.max_age_s, ob.sync)
        self.settings, self.config_version = self._restore_settings()
        if drivers is None:
            drivers = [build_driver(s, self.profile) for s in config.sensors]
        self.sampler = Sampler(self.profile, drivers, self.settings) if drivers else None
        self.sources: list[Source] = ([self.sampler] if self.sampler else []) + list(sources)
        self.sink = _OutboxSink(self)
        self.health = HealthProbe(self.profile, ob.path)
        self.drainer = Drainer(self.outbox, config.device_id, config.site, self.boot_id, self.settings.drain,
                               forget_on=ob.forget_on, resend_after_s=ob.resend_after_s,
                               resend_max_s=ob.resend_max_s)
        self.session = Session(
            device_id=config.device_id,
            broker=config.broker,
            drainer=self.drainer,
            birth=self._birth,
            on_message=self._on_message,
            on_connected=lambda: self._inbox.put(_REPORT),
        )
        self._inbox: queue.Queue[mqtt.MQTTMessage | str] = queue.Queue()
        self._stop = threading.Event()
        self._exit: ExitReason = "shutdown"
        self._commands: dict[str, Callable[[dict], dict]] = {
            "ping": self._cmd_ping,
            "reboot": self._cmd_reboot,
            "set-interval": self._cmd_set_interval,
            "flush": self._cmd_flush,
        }
        for src in self.sources:  # e.g. the camera's `snapshot`
            for name, handler in src.commands().items():
                if name in self._commands:
                    raise ValueError(f"source {src.name!r}: command {name!r} is already taken")
                self._commands[name] = handler

    # -- lifecycle -------------------------------------------------------------------------------

    def run(self) -> ExitReason:
        """Run until stop() (or a reboot command); returns why it ended."""
        log.info(
            "agent %s (profile %s, boot %s, config v%d) starting",
            self.config.device_id,
            self.profile.profile,
            self.boot_id,
            self.config_version,
        )
        self.session.start()
        for src in self.sources:
            src.start(self.sink)
        next_beat = time.monotonic()
        next_age = time.monotonic() + AGE_CHECK_S
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    try:
                        self.heartbeat()
                    except Exception:
                        log.exception("heartbeat failed")  # e.g. disk full; the next one may succeed
                    next_beat = now + self.settings.heartbeat_s
                if now >= next_age:
                    self.outbox.enforce_age(now_ms())
                    next_age = now + AGE_CHECK_S
                try:
                    msg = self._inbox.get(timeout=max(0.0, min(next_beat, next_age) - time.monotonic()))
                except queue.Empty:
                    continue
                self._dispatch(msg)
        finally:
            for src in reversed(self.sources):
                src.stop()
            self.session.stop("reboot" if self._exit == "restart" else "shutdown")
            self.outbox.close()
            log.info("agent %s stopped (%s)", self.config.device_id, self._exit)
        return self._exit

    def stop(self, reason: ExitReason = "shutdown") -> None:
        self._exit = reason
        self._stop.set()
        self._inbox.put_nowait(_WAKE)

    def heartbeat(self) -> dict[str, float]:
        extra: dict[str, float] = {}
        for src in self.sources:
            extra.update(src.health())
        values = self.health.read(
            outbox_depth=self.outbox.depth,
            outbox_dropped=self.outbox.dropped_total,
            link_up=self.session.connected,
            extra=extra,
        )
        sample = MetricSample(ts=now_ms(), values=values)
        self.outbox.put([Record("tlm", "health", sample.ts, sample.model_dump_json())], sample.ts)
        return values

    def _birth(self) -> StatusMessage:
        return StatusMessage(
            device_id=self.config.device_id,
            status="online",
            boot_id=self.boot_id,
            ts=now_ms(),
            firmware=self.config.firmware,
            profile=self.profile.profile,
            config_version=self.config_version,
        )

    # -- messages from the session (session thread -> inbox -> run() thread) -----------------------

    def _on_message(self, message: mqtt.MQTTMessage) -> None:
        self._inbox.put(message)

    def _dispatch(self, msg: mqtt.MQTTMessage | str) -> None:
        """Handle one inbox item; whatever a payload triggers is logged, never the end of run()."""
        try:
            self._handle(msg)
        except Exception:
            log.exception("handling an inbox message failed; the agent carries on")

    def _handle(self, msg: mqtt.MQTTMessage | str) -> None:
        if msg == _REPORT:  # (re)connected: say what runs, whether or not a desired config exists
            self._report("applied", None)
        if isinstance(msg, str):
            return
        try:
            t = topics.parse(msg.topic)
        except topics.TopicError:
            log.warning("ignoring message on %s", msg.topic)
            return
        if t.kind == "cfg" and t.leaf == "desired":
            self._apply_desired(msg.payload)
        elif t.kind == "cmd" and t.leaf:
            self._run_command(t.leaf, msg)

    # -- remote config -------------------------------------------------------------------------------

    def _restore_settings(self) -> tuple[Settings, int]:
        """Settings applied remotely before a restart win over the file's older version."""
        stored = self.outbox.get_meta(_APPLIED_KEY)
        if stored:
            try:
                desired = parse_desired(stored.encode(), self.profile)
            except ConfigError as exc:
                log.warning("stored remote config no longer valid (%s); using the file", exc)
            else:
                if desired.version > self.config.config_version:
                    return desired.settings, desired.version
        return self.config.settings, self.config.config_version

    def _apply_desired(self, payload: bytes | bytearray) -> None:
        if not payload:
            return  # retained desired config cleared
        try:
            desired = parse_desired(payload, self.profile)
            if desired.version < self.config_version:
                raise ConfigError(
                    f"version {desired.version} is older than the running {self.config_version}"
                )
        except ConfigError as exc:
            log.warning("desired config refused: %s (keeping v%d)", exc, self.config_version)
            self._report("rejected", desired_version_of(payload), str(exc))
            return
        if desired.version != self.config_version or desired.settings != self.settings:
            self.apply_settings(desired.settings)
            self.config_version = desired.version
            self.outbox.set_meta(_APPLIED_KEY, desired.model_dump_json())
            log.info("applied remote config v%d", desired.version)
            # A new birth (a new connection) so state/v1 carries the config version now running.
            self.session.rebirth()
        self._report("applied", desired.version)

    def apply_settings(self, settings: Settings) -> None:
        self.settings = settings
        if self.sampler:
            self.sampler.apply(settings)
        self.drainer.set_drain(settings.drain)

    def _report(
        self,
        status: Literal["applied", "rejected", "override"],
        desired_version: int | None,
        error: str | None = None,
    ) -> None:
        report = ReportedConfig(
            device_id=self.config.device_id,
            boot_id=self.boot_id,
            ts=now_ms(),
            status=status,
            version=self.config_version,
            desired_version=desired_version,
            error=error,
            settings=self.settings,
        )
        self.session.publish_direct(
            topics.config_reported(self.config.device_id), report.model_dump_json(), retain=True
        )

    # -- commands ------------------------------------------------------------------------------------

    def _run_command(self, name: str, msg: mqtt.MQTTMessage) -> None:
        handler = self._commands.get(name)
        if handler is None:
            reply = CommandReply(
                device_id=self.config.device_id,
                command=name,
                ok=False,
                ts=now_ms(),
                error=f"unknown command; known: {sorted(self._commands)}",
            )
        else:
            reply = make_reply(self.config.device_id, name, handler, bytes(msg.payload))
        props = msg.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        log.info("command %s -> ok=%s", name, reply.ok)
        if response_topic:
            self.session.publish_direct(
                response_topic, reply.model_dump_json(), properties=reply_properties(correlation)
            )
        if name == "reboot" and reply.ok:
            self.stop("restart")

    def _cmd_ping(self, args: dict) -> dict:
        return {
            "boot_id": self.boot_id,
            "uptime_s": round(self.health.uptime_s, 1),
            "firmware": self.config.firmware,
            "config_version": self.config_version,
        }

    def _cmd_reboot(self, args: dict) -> dict:
        return {"restarting": True}

    def _cmd_set_interval(self, args: dict) -> dict:
        req = SetInterval.model_validate(args)
        if self.sampler is None or req.metric not in self.sampler.metric_names:
            raise CommandError(f"metric {req.metric!r} is not sampled on this device")
        self.apply_settings(with_interval(self.settings, req.metric, req.interval_s))
        self._report("override", None)
        return {"metric": req.metric, "interval_s": req.interval_s}

    def _cmd_flush(self, args: dict) -> dict:
        for src in self.sources:
            src.flush()
        self.drainer.flush()
        return {"outbox_depth": self.outbox.depth}


__all__ = ["Agent", "DesiredConfig", "ExitReason"]

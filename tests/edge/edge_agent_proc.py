"""Run an edge agent as its own process (for SIGKILL tests), journaling what it committed.

    python edge_agent_proc.py DEVICE.yaml JOURNAL

Every metric value is appended to JOURNAL as "metric ts value" only after the outbox commit
returned, so a journal line is a promise the sample is durable. SIGTERM stops the agent cleanly.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from contract.messages import MetricSample
from edge.agent import Agent
from edge.config import load_config


class JournalSink:
    def __init__(self, inner: Any, path: Path) -> None:
        self.inner = inner
        self.file = path.open("a", encoding="utf-8")

    def metrics(self, stream: str, samples: Sequence[MetricSample]) -> None:
        self.inner.metrics(stream, samples)
        self.file.write("".join(f"{n} {s.ts} {v!r}\n" for s in samples for n, v in s.values.items()))
        self.file.flush()

    def counts(self, counts: Any) -> None:
        self.inner.counts(counts)

    def events(self, events: Any) -> None:
        self.inner.events(events)


def main() -> None:
    agent = Agent(load_config(Path(sys.argv[1])))
    agent.sink = JournalSink(agent.sink, Path(sys.argv[2]))  # type: ignore[assignment]

    def _term(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, _term)
    agent.run()


if __name__ == "__main__":
    main()

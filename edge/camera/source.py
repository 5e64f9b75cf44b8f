"""Frame source: a file, RTSP/HTTP URL or capture device via OpenCV, at a target analysis rate.

Files are read as fast as the analysis goes (unless `realtime`), taking every k-th frame by media
time, so a recorded hour gives the same counts on any machine. Live sources are read by a thread that
always keeps only the newest due frame: when analysis falls behind, older frames are dropped and
counted, never queued. A lost stream is reopened with jittered, capped exponential backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from edge.camera.config import SourceConfig
from edge.camera.media import resolve_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    index: int  # frame number in the source since start
    t: float  # seconds: media time for files, monotonic since start for live sources
    epoch_ms: int


@dataclass
class SourceStats:
    read: int = 0  # frames decoded or grabbed from the source
    delivered: int = 0  # frames handed to the analysis
    dropped: int = 0  # due frames lost because analysis was busy, or lost with the stream
    reconnects: int = 0
    native_fps: float = 0.0


def is_live(uri: str) -> bool:
    return uri.isdigit() or uri.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "udp", "tcp")


def open_capture(uri: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(int(uri)) if uri.isdigit() else cv2.VideoCapture(uri)
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return cap


class FrameSource:
    def __init__(self, cfg: SourceConfig, stop: threading.Event | None = None) -> None:
        self.cfg = cfg.model_copy(update={"uri": resolve_uri(cfg.uri)})
        self.live = is_live(cfg.uri)
        self.realtime = self.live if cfg.realtime is None else cfg.realtime
        self.stop = stop or threading.Event()
        self.stats = SourceStats()
        self._halt = threading.Event()  # set when the consumer stops iterating
        self.start_epoch_ms = int(time.time() * 1000)

    def __iter__(self) -> Iterator[Frame]:
        return self._threaded() if self.realtime else self._file()

    def _due(self, t: float, next_due: float) -> tuple[bool, float]:
        if self.cfg.analysis_fps <= 0:
            return True, next_due
        if t + 1e-6 < next_due:
            return False, next_due
        step = 1.0 / self.cfg.analysis_fps
        return True, max(next_due + step, t + step / 2)

    def _file(self) -> Iterator[Frame]:
        """Offline: every due frame, none dropped, time from frame numbers."""
        index, next_due, offset = 0, 0.0, 0.0
        while not self.stop.is_set():
            cap = open_capture(self.cfg.uri)
            if not cap.isOpened():
                raise FileNotFoundError(f"cannot open video source {self.cfg.uri!r}")
            fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
            self.stats.native_fps = fps
            local = 0
            while not self.stop.is_set() and cap.grab():
                t = offset + local / fps
                local += 1
                self.stats.read += 1
                due, next_due = self._due(t, next_due)
                if due:
                    ok, image = cap.retrieve()
                    if ok:
                        self.stats.delivered += 1
                        yield Frame(image, index, t, self.start_epoch_ms + int(t * 1000))
                index += 1
            cap.release()
            offset += local / fps
            if not self.cfg.loop or local == 0:
                return

    def _threaded(self) -> Iterator[Frame]:
        """Live (or paced file): a reader thread fills a one-frame slot; the consumer takes the newest."""
        slot: list[Frame] = []
        cond = threading.Condition()
        done = threading.Event()
        reader = threading.Thread(
            target=self._read_loop, args=(slot, cond, done), name="camera-reader", daemon=True
        )
        reader.start()
        try:
            while True:
                with cond:
                    while not slot and not done.is_set() and not self.stop.is_set():
                        cond.wait(0.5)
                    if not slot:
                        return
                    frame = slot.pop()
                self.stats.delivered += 1
                yield frame
        finally:
            self._halt.set()
            reader.join(timeout=2.0)

    def _stopped(self) -> bool:
        return self.stop.is_set() or self._halt.is_set()

    def _read_loop(self, slot: list[Frame], cond: threading.Condition, done: threading.Event) -> None:
        start, index, next_due, failures = time.monotonic(), 0, 0.0, 0
        try:
            while not self._stopped():
                cap = open_capture(self.cfg.uri)
                if not cap.isOpened():
                    if not self.live:
                        return
                    failures = self._backoff(failures)
                    continue
                fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
                self.stats.native_fps, opened_at, local = fps, time.monotonic(), 0
                while not self._stopped() and cap.grab():
                    failures = 0
                    if not self.live:  # pace a file at its native rate
                        time.sleep(max(0.0, opened_at + local / fps - time.monotonic()))
                    local += 1
                    self.stats.read += 1
                    t = time.monotonic() - start
                    due, next_due = self._due(t, next_due)
                    if due:
                        ok, image = cap.retrieve()
                        if ok:
                            with cond:
                                self.stats.dropped += len(slot)
                                slot[:] = [Frame(image, index, t, int(time.time() * 1000))]
                                cond.notify()
                    index += 1
                cap.release()
                if self._stopped():
                    return
                if not self.live:
                    if not self.cfg.loop:
                        return
                    continue
                log.warning("stream %s lost after %d frames; reconnecting", self.cfg.uri, local)
                failures = self._backoff(failures)
        finally:
            done.set()
            with cond:
                cond.notify_all()

    def _backoff(self, failures: int) -> int:
        delay = min(self.cfg.reconnect_max_s, self.cfg.reconnect_min_s * 2**failures)
        self.stats.reconnects += 1
        self._halt.wait(delay * random.uniform(0.5, 1.0))  # jitter: many cameras do not retry in step
        return failures + 1

"""A lean HTTP/1.1 load generator for the API benchmark: keep-alive GETs spoken by hand over asyncio streams.

The benchmark runs on the same two cores as the API, PostgreSQL and ingest, so the generator's CPU is
taken from the system under test. httpx costs about 1 ms of CPU a request at concurrency 50; this one
about 0.2 ms (measured against a bare FastAPI route), and it reports its own CPU so that the reader can
see what it took. Paced runs measure latency from each request's scheduled start, so a server that falls
behind shows it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class HttpError(RuntimeError):
    """The server answered something this client cannot read (it expects Content-Length bodies)."""


class KeepAliveConn:
    """One persistent connection; requests go one after another on it."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items())
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(f"GET {path} HTTP/1.1\r\n{self._head}\r\n".encode())
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        code = int(lines[0].split()[1])
        length = None
        for line in lines[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None:
            raise HttpError(f"no Content-Length in the answer to GET {path}")
        return code, await self._reader.readexactly(length)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this thread's CPU: what the generator itself cost

    def pct_ms(self, q: float) -> float:
        xs = sorted(self.latencies_s)
        return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0


async def run(host: str, port: int, headers: dict[str, str], path: Callable[[int], str], n: int,
              concurrency: int, rate: float | None = None) -> LoadResult:
    """n GETs over `concurrency` keep-alive connections, unpaced or paced to `rate` starts a second."""
    res = LoadResult()
    conns = [KeepAliveConn(host, port, headers) for _ in range(concurrency)]
    next_i = 0
    t0, c0 = time.perf_counter(), time.thread_time()

    async def worker(conn: KeepAliveConn) -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            start = time.perf_counter()
            if rate:
                due = t0 + i / rate
                if due > start:
                    await asyncio.sleep(due - start)
                start = due
            code, body = await conn.get(path(i))
            if code != 200:
                res.errors += 1
                res.first_error = res.first_error or f"{code} {body[:200]!r}"
            res.latencies_s.append(time.perf_counter() - start)

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    res.wall_s, res.cpu_s = time.perf_counter() - t0, time.thread_time() - c0
    return res

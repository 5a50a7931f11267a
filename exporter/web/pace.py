"""Pacing what the web server starts, so that no crowd of clients can hold the event loop the probes
share: answers start at most ``per_second`` times a second, one after the other."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web


class Pace:
    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self._next_start = 0.0  # monotonic time the next answer may start

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + 1 / self.per_second
        if start > now:
            await asyncio.sleep(start - now)


class PageGate:
    """The console's pages: ``at_once`` rendered and sent at a time, paced, at most ``waiting`` in line
    (past that 503 at once, as /metrics does). A page of 1,000 tasks takes a few ms to render and is
    ~0.7 MB: unbounded, 20 browsers reloading back to back held the loop up to 176 ms."""

    def __init__(self, per_second: float = 10, at_once: int = 2, waiting: int = 32) -> None:
        self._pace = Pace(per_second)
        self._slots = asyncio.Semaphore(at_once)
        self._waiting = 0
        self._limit = waiting

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._waiting >= self._limit:
            raise web.HTTPServiceUnavailable(text="too many console requests\n", headers={"Retry-After": "1"})
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            await self._pace.wait()
            yield
        finally:
            self._slots.release()

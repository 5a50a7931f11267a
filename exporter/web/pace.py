"""Taking turns, so that no crowd of clients can hold the event loop the probes share: ``at_once``
answers rendered and sent at a time, starting at most ``per_second`` times a second, at most
``waiting`` in line (past that the caller answers 503 at once). /metrics (web.scrape) and the
console's pages (a page of 1,000 tasks is ~0.7 MB: unbounded, 20 browsers reloading back to back
held the loop up to 176 ms) each have their own."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator


class Turns:
    def __init__(self, per_second: float, at_once: int, waiting: int) -> None:
        self.per_second = per_second
        self._slots = asyncio.Semaphore(at_once)
        self._waiting = 0
        self._limit = waiting
        self._next_start = 0.0  # monotonic time the next answer may start

    @property
    def full(self) -> bool:
        return self._waiting >= self._limit

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for a slot and for the pace; render and send within it (the body leaves before the next)."""
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            await self._pace()
            yield
        finally:
            self._slots.release()

    async def _pace(self) -> None:
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + 1 / self.per_second
        if start > now:
            await asyncio.sleep(start - now)

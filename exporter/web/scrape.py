"""/metrics under load: the gate that bounds what scrapes cost the event loop the probes run on."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import web
from zlib_ng import zlib_ng

from exporter.exposition.render import Exposition
from exporter.service import Exporter
from exporter.web.pace import Turns

# Scrapes must not change what the probes measure (they share the event loop). 200 scrapers once
# took the median probe from 0.11 s to 7.4 s and memory from 54 to 163 MB. So: one render serves
# every scrape of the same format for SHARE_SECONDS (renders per second stay bounded, whatever the
# number of scrapers); at most SENDING scrapes render or send at once (memory: a few bodies, not
# one per scraper); at most PER_SECOND answers start per second (even a shared body costs the loop
# HTTP work: 200 clients re-asking at once drew 2,800 answers/s); at most WAITING wait for their
# turn, the rest get 503 at once. Prometheus asks every 15-60 s: none of this slows it.
SHARE_SECONDS = 1.0
# gzip with zlib-ng at level 2: a scrape of 1,000 tasks (6.5 MB) shrinks 23x in 2.6 ms (the stdlib's
# zlib at level 1: 7.7 ms, a little larger), on the event loop the probes share; the compressed body
# is made once per shared render, only when a scraper asks for it.
GZIP_LEVEL = 2
SENDING = 4
PER_SECOND = 50
WAITING = 256


@dataclass
class _Rendered:
    """A render shared by the scrapes of SHARE_SECONDS: each form made when first asked for."""

    key: tuple[object, ...]
    at: float
    exposition: Exposition
    plain: bytes | None = None
    gzipped: bytes | None = None

    def body(self, gzip: bool) -> bytes:
        if gzip:
            if self.gzipped is None:
                compressor = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, 16 + zlib_ng.MAX_WBITS)  # 16+: gzip
                self.gzipped = b"".join([*map(compressor.compress, self.exposition.parts()), compressor.flush()])
            return self.gzipped
        if self.plain is None:
            self.plain = b"".join(self.exposition.parts())
        return self.plain


class ScrapeGate:
    """Bounds the cost of /metrics: shared renders, a few scrapes at a time, a bounded queue."""

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter
        self._turns = Turns(PER_SECOND, SENDING, WAITING)
        self._latest: dict[bool, _Rendered] = {}
        self.renders = 0  # for tests and the benchmark

    @property
    def full(self) -> bool:
        return self._turns.full

    @property
    def holds_render(self) -> bool:
        """Is a render kept for scrapes to share? (for tests)"""
        return bool(self._latest)

    async def serve(
        self, request: web.Request, openmetrics: bool, content_type: str, gzip: bool = False
    ) -> web.StreamResponse:
        async with self._turns.turn():
            rendered = self._rendered(openmetrics)
            response = web.Response(body=rendered.body(gzip))
            response.headers["Content-Type"] = content_type
            if gzip:
                response.headers["Content-Encoding"] = "gzip"
            response.headers["Vary"] = "Accept-Encoding"
            await response.prepare(request)  # sent within the slot: the body leaves before the next starts
            await response.write_eof()
            return response

    def _rendered(self, openmetrics: bool) -> _Rendered:
        exporter = self._exporter
        # A reload (or its failure) shows at once: it is part of the key, not only the age.
        key = (exporter.reload_status.successful, exporter.reload_status.last_success, len(exporter.scheduler.runners))
        latest, now = self._latest.get(openmetrics), time.monotonic()
        if latest is None or latest.key != key or now - latest.at >= SHARE_SECONDS:
            # On the loop: each task's text is cached until it changes, so 1,000 tasks render in a few
            # milliseconds (a worker thread would cost a malloc arena of its own, ~20 MB at 1,000 tasks).
            exposition = exporter.render_metrics(list(exporter.scheduler.stats()), openmetrics)
            latest = self._latest[openmetrics] = _Rendered(key, now, exposition)
            self.renders += 1
            # Let it go once it can no longer be shared: Prometheus asks again only in 15-60 s, and
            # meanwhile it would hold the tasks' texts of its time (7 MB at 1,000 tasks, besides the
            # tasks' newer ones) and a plain body once one was asked for (6.5 MB).
            asyncio.get_running_loop().call_later(SHARE_SECONDS, self._forget, openmetrics, latest)
        return latest

    def _forget(self, openmetrics: bool, rendered: _Rendered) -> None:
        if self._latest.get(openmetrics) is rendered:
            del self._latest[openmetrics]

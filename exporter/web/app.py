"""HTTP endpoint on the event loop (aiohttp): /metrics, health, reload and a small status page."""

from __future__ import annotations

import asyncio
import html
import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.exposition.stats import TaskStats
from exporter.probe.errors import MESSAGE_LIMIT, server_text
from exporter.service import Exporter
from exporter.web.webconfig import WebConfig, install

EXPORTER_KEY = web.AppKey("exporter", Exporter)

# Scrapes must not change what the probes measure (they share the event loop). 200 scrapers once
# took the median probe from 0.11 s to 7.4 s and memory from 54 to 163 MB. So: one render serves
# every scrape of the same format for SHARE_SECONDS (renders per second stay bounded, whatever the
# number of scrapers); at most SENDING scrapes render or send at once (memory: a few bodies, not
# one per scraper); at most PER_SECOND answers start per second (even a shared body costs the loop
# HTTP work: 200 clients re-asking at once drew 2,800 answers/s); at most WAITING wait for their
# turn, the rest get 503 at once. Prometheus asks every 15-60 s: none of this slows it.
SHARE_SECONDS = 1.0
SENDING = 4
PER_SECOND = 50
WAITING = 256


@dataclass
class _Rendered:
    key: tuple[object, ...]
    at: float
    body: bytes


class ScrapeGate:
    """Bounds the cost of /metrics: shared renders, a few scrapes at a time, a bounded queue."""

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter
        self._sending = asyncio.Semaphore(SENDING)
        self._waiting = 0
        self._latest: dict[bool, _Rendered] = {}
        self._next_start = 0.0  # monotonic time the next answer may start
        self.renders = 0  # for tests and the benchmark

    @property
    def full(self) -> bool:
        return self._waiting >= WAITING

    async def serve(self, request: web.Request, openmetrics: bool, content_type: str) -> web.StreamResponse:
        self._waiting += 1
        try:
            await self._sending.acquire()
        finally:
            self._waiting -= 1
        try:
            await self._pace()
            response = web.Response(body=self._body(openmetrics))
            response.headers["Content-Type"] = content_type
            await response.prepare(request)  # sent within the slot: the body leaves before the next starts
            await response.write_eof()
            return response
        finally:
            self._sending.release()

    async def _pace(self) -> None:
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + 1 / PER_SECOND
        if start > now:
            await asyncio.sleep(start - now)

    def _body(self, openmetrics: bool) -> bytes:
        exporter = self._exporter
        # A reload (or its failure) shows at once: it is part of the key, not only the age.
        key = (exporter.reload_status.successful, exporter.reload_status.last_success, len(exporter.scheduler.runners))
        latest, now = self._latest.get(openmetrics), time.monotonic()
        if latest is None or latest.key != key or now - latest.at >= SHARE_SECONDS:
            # On the loop: each task's text is cached until it changes, so 1,000 tasks render in a few
            # milliseconds (a worker thread would cost a malloc arena of its own, ~20 MB at 1,000 tasks).
            body = exporter.render_metrics(list(exporter.scheduler.stats()), openmetrics)
            latest = self._latest[openmetrics] = _Rendered(key, now, body)
            self.renders += 1
        return latest.body


GATE_KEY = web.AppKey("scrape gate", ScrapeGate)


def make_app(exporter: Exporter, web_config: WebConfig | None = None) -> web.Application:
    app = web.Application()
    app[EXPORTER_KEY] = exporter
    app[GATE_KEY] = ScrapeGate(exporter)
    if web_config is not None:
        install(app, web_config)  # basic auth and extra headers from --web.config.file
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", healthy)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/", status_page)
    return app


async def metrics(request: web.Request) -> web.StreamResponse:
    _, content_type = choose_encoder(request.headers.get("Accept", ""))
    gate = request.app[GATE_KEY]
    if gate.full:
        return web.Response(status=503, text="too many concurrent scrapes\n", headers={"Retry-After": "1"})
    return await gate.serve(request, content_type.startswith("application/openmetrics"), content_type)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def reload(request: web.Request) -> web.Response:
    error = await request.app[EXPORTER_KEY].reload()
    if error is not None:
        return web.Response(status=500, text=f"reload failed: {error}\n")
    return web.Response(text="config reloaded\n")


async def status_page(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    rows = "\n".join(_row(stats) for stats in exporter.scheduler.stats())
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mail-roundtrip-exporter</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:left}}
.bad{{color:#b00}} .ok{{color:#070}}</style>
</head><body><h1>mail-roundtrip-exporter {html.escape(__version__)}</h1>
<p><a href="/metrics">Metrics</a> &middot; config {html.escape(str(exporter.config_path))}</p>
<table><tr><th>device</th><th>task</th><th>last result</th><th>reason</th><th>error</th><th>delivery (s)</th>
<th>last success</th><th>in flight</th><th>SMTP address</th><th>mailbox address</th></tr>
{rows}
</table></body></html>
"""
    return web.Response(text=body, content_type="text/html")


def _row(stats: TaskStats) -> str:
    last = stats.last
    if last is None:
        cells = [stats.device, stats.task, "pending", "", "", "", "", str(stats.in_flight), "", ""]
        css = ""
    else:
        cells = [
            stats.device,
            stats.task,
            "success" if last.success else "failure",
            last.reason.value if last.reason else "",
            last.error or "",
            f"{last.delivery_seconds:.3f}" if last.delivery_seconds is not None else "",
            _when(stats.last_success),
            str(stats.in_flight),
            last.smtp_address or "",
            last.mailbox_address or "",
        ]
        css = "ok" if last.success else "bad"
    # Escaped for HTML, and sanitised like every output of server text (no bidi overrides, no controls).
    tds = "".join(f"<td>{html.escape(server_text(cell, MESSAGE_LIMIT))}</td>" for cell in cells)
    return f'<tr class="{css}">{tds}</tr>'


def _when(unix: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix)) if unix is not None else "never"

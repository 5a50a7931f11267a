"""HTTP endpoint on the event loop (aiohttp): /metrics, health, reload and a small status page."""

from __future__ import annotations

import html
import time

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from exporter import __version__
from exporter.errors import MESSAGE_LIMIT, server_text
from exporter.metrics import TaskStats
from exporter.service import Exporter
from exporter.webconfig import WebConfig, install

EXPORTER_KEY = web.AppKey("exporter", Exporter)


def make_app(exporter: Exporter, web_config: WebConfig | None = None) -> web.Application:
    app = web.Application()
    app[EXPORTER_KEY] = exporter
    if web_config is not None:
        install(app, web_config)  # basic auth and extra headers from --web.config.file
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", healthy)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/", status_page)
    return app


async def metrics(request: web.Request) -> web.Response:
    _, content_type = choose_encoder(request.headers.get("Accept", ""))
    exporter = request.app[EXPORTER_KEY]
    # On the loop: each task's text is cached until it changes, so 1,000 tasks render in a few
    # milliseconds (a worker thread would cost a malloc arena of its own, ~20 MB at 1,000 tasks).
    body = exporter.render_metrics(list(exporter.scheduler.stats()), content_type.startswith("application/openmetrics"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


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

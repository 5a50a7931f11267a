"""The HTTP endpoint on the event loop (aiohttp): the routes /metrics, health, reload and the status page."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from exporter.service import Exporter
from exporter.web.scrape import ScrapeGate
from exporter.web.status import status_page
from exporter.web.webconfig import WebConfig, install

EXPORTER_KEY = web.AppKey("exporter", Exporter)


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
    app.router.add_get("/", status)
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


async def status(request: web.Request) -> web.Response:
    return web.Response(text=status_page(request.app[EXPORTER_KEY]), content_type="text/html")

"""The HTTP endpoint on the event loop (aiohttp): /metrics, health, readiness, reload, /config and the status page."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from exporter.config.dump import dump_config
from exporter.service import Exporter
from exporter.web.guard import WebGuard
from exporter.web.scrape import ScrapeGate
from exporter.web.status import status_page

DEFAULT_TELEMETRY_PATH = "/metrics"
OTHER_PATHS = ("/", "/-/healthy", "/-/ready", "/-/reload", "/config")

EXPORTER_KEY = web.AppKey("exporter", Exporter)
GATE_KEY = web.AppKey("scrape gate", ScrapeGate)
TELEMETRY_PATH_KEY = web.AppKey("telemetry path", str)


def make_app(
    exporter: Exporter, guard: WebGuard | None = None, telemetry_path: str = DEFAULT_TELEMETRY_PATH
) -> web.Application:
    app = web.Application()
    app[EXPORTER_KEY] = exporter
    app[GATE_KEY] = ScrapeGate(exporter)
    app[TELEMETRY_PATH_KEY] = telemetry_path
    if guard is not None:
        guard.install(app)  # basic auth and extra headers from --web.config.file, as in force at each request
    app.router.add_get(telemetry_path, metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/config", config)
    app.router.add_get("/", status)
    return app


async def metrics(request: web.Request) -> web.StreamResponse:
    _, content_type = choose_encoder(request.headers.get("Accept", ""))
    gate = request.app[GATE_KEY]
    if gate.full:
        return web.Response(status=503, text="too many concurrent scrapes\n", headers={"Retry-After": "1"})
    gzip = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    return await gate.serve(request, content_type.startswith("application/openmetrics"), content_type, gzip)


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    """Ready once the config is loaded and the scheduler runs (a load balancer or orchestrator waits for it)."""
    if not request.app[EXPORTER_KEY].ready:
        return web.Response(status=503, text="not ready: starting\n")
    return web.Response(text="OK\n")


async def reload(request: web.Request) -> web.Response:
    error = await request.app[EXPORTER_KEY].reload()
    if error is not None:
        return web.Response(status=500, text=f"reload failed: {error}\n")
    return web.Response(text="config reloaded\n")


async def config(request: web.Request) -> web.Response:
    """The running config, every secret replaced by <secret> (as blackbox_exporter's /config)."""
    exporter = request.app[EXPORTER_KEY]
    text = f"# {exporter.config_path}\n{dump_config(exporter.config)}"
    return web.Response(text=text, content_type="text/plain", charset="utf-8")


async def status(request: web.Request) -> web.Response:
    return web.Response(
        text=status_page(request.app[EXPORTER_KEY], request.app[TELEMETRY_PATH_KEY]), content_type="text/html"
    )

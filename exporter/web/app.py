"""The HTTP routing table (aiohttp): /metrics, health, readiness, reload, /config, the console and /probe.

Every route lives under ``--web.route-prefix``; links in the console's pages use ``--web.external-url``'s
path (web.paths). The web config's basic auth and headers apply to every path (web.guard)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from exporter.config.dump import dump_config
from exporter.service import Exporter
from exporter.web.console import handlers as console
from exporter.web.guard import WebGuard
from exporter.web.paths import Prefix
from exporter.web.scrape import ScrapeGate

DEFAULT_TELEMETRY_PATH = "/metrics"
# The fixed paths a --web.telemetry-path may not take (the console's own are under /task/ and /static/).
OTHER_PATHS = ("/", "/-/healthy", "/-/ready", "/-/reload", "/config", "/probe")

EXPORTER_KEY = web.AppKey("exporter", Exporter)
GATE_KEY = web.AppKey("scrape gate", ScrapeGate)


def make_app(
    exporter: Exporter,
    guard: WebGuard | None = None,
    telemetry_path: str = DEFAULT_TELEMETRY_PATH,
    prefix: Prefix | None = None,
) -> web.Application:
    prefix = prefix or Prefix()
    app = web.Application()
    app[EXPORTER_KEY] = exporter
    app[GATE_KEY] = ScrapeGate(exporter)
    app[console.CONSOLE_KEY] = console.Console(exporter, prefix, telemetry_path)
    if guard is not None:
        guard.install(app)  # basic auth and extra headers from --web.config.file, as in force at each request
    at = prefix.at
    app.router.add_get(at(telemetry_path), metrics)
    app.router.add_get(at("/-/healthy"), healthy)
    app.router.add_get(at("/-/ready"), ready)
    app.router.add_post(at("/-/reload"), reload)
    app.router.add_get(at("/config"), config)
    app.router.add_get(at("/"), console.overview)
    if prefix.route:
        app.router.add_get(prefix.route, _to_prefix_root)
    app.router.add_get(at("/task/{device}/{task}"), console.task_page)
    app.router.add_post(at("/task/{device}/{task}/probe"), console.probe_now)
    app.router.add_route("*", at("/probe"), console.probe)  # GET as blackbox_exporter; POST as it sends mail
    app.router.add_get(at("/static/console.css"), console.stylesheet)
    app.router.add_get(at("/static/console.js"), console.script)
    app.router.add_get(at("/static/favicon.svg"), console.favicon)
    return app


async def _to_prefix_root(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.app[console.CONSOLE_KEY].prefix.link("/"))


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
    """The running config, every secret replaced by <secret> (as blackbox_exporter's /config); the only
    page that names the config file."""
    exporter = request.app[EXPORTER_KEY]
    text = f"# {exporter.config_path}\n{dump_config(exporter.config)}"
    return web.Response(text=text, content_type="text/plain", charset="utf-8")

"""The console's HTTP handlers: overview, task page, Probe now, ``/probe`` and the two assets.
web/app.py says which path each one serves."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from exporter.service import Exporter
from exporter.web.console import assets
from exporter.web.console.markup import HEADERS
from exporter.web.console.overview import REFRESH_SECONDS, Overview
from exporter.web.console.probe_now import (
    ProbeNowGate,
    Refused,
    check_same_site,
    debug_text,
    result_json,
    run_now,
)
from exporter.web.console.task import TaskPage
from exporter.web.pace import Turns
from exporter.web.paths import Prefix


@dataclass
class Console:
    exporter: Exporter
    prefix: Prefix
    telemetry_path: str
    gate: ProbeNowGate = field(default_factory=ProbeNowGate)
    # Pages take turns (2 at a time, 10 a second, 32 waiting): browsers cannot hold the probes' event loop.
    pages: Turns = field(default_factory=lambda: Turns(per_second=10, at_once=2, waiting=32))

    def __post_init__(self) -> None:
        self.overview = Overview(self.prefix, self.telemetry_path)
        self.task_page = TaskPage(self.prefix, self.telemetry_path)


CONSOLE_KEY = web.AppKey("console", Console)


async def _page(request: web.Request, render: Callable[[], str | None]) -> web.StreamResponse:
    """Render and send a page in its turn: the body has left before the next one starts."""
    pages = request.app[CONSOLE_KEY].pages
    if pages.full:
        return web.Response(status=503, text="too many console requests\n", headers={"Retry-After": "1"})
    async with pages.turn():
        text = render()
        if text is None:
            response = web.Response(status=404, text="no such task\n")
        else:
            response = web.Response(text=text, content_type="text/html", charset="utf-8", headers=HEADERS)
        await response.prepare(request)
        await response.write_eof()
        return response


async def overview(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    refresh = request.query.get("refresh", "")
    seconds = min(3600, max(2, int(refresh))) if refresh.isdigit() and len(refresh) < 5 else REFRESH_SECONDS
    return await _page(request, lambda: console.overview.render(console.exporter, request.query.get("q", ""), seconds))


async def task_page(request: web.Request) -> web.StreamResponse:
    console = request.app[CONSOLE_KEY]
    device, task = request.match_info["device"], request.match_info["task"]
    return await _page(request, lambda: console.task_page.render(console.exporter, device, task))


async def probe_now(request: web.Request) -> web.StreamResponse:
    """The task page's button: run the task once, answer its page with the probe and its transcript."""
    console = request.app[CONSOLE_KEY]
    key = (request.match_info["device"], request.match_info["task"])
    try:
        check_same_site(request)
        result = await run_now(console.exporter, console.gate, key)
    except Refused as refused:
        return refused.response()
    return await _page(request, lambda: console.task_page.render(console.exporter, *key, fresh=result))


async def probe(request: web.Request) -> web.Response:
    """For scripts: ``/probe?device=D&task=T`` runs the task once and answers its result as JSON, or,
    with ``debug=true``, its transcript and report as text (as blackbox_exporter's /probe does)."""
    console = request.app[CONSOLE_KEY]
    device, task = request.query.get("device"), request.query.get("task")
    if not device or not task:
        return web.Response(status=400, text="device and task are required: /probe?device=D&task=T\n")
    try:
        check_same_site(request)
        result = await run_now(console.exporter, console.gate, (device, task))
    except Refused as refused:
        return refused.response()
    if request.query.get("debug", "").lower() == "true":
        return web.Response(text=debug_text(result), content_type="text/plain", charset="utf-8")
    return web.Response(text=json.dumps(result_json(result), indent=1) + "\n", content_type="application/json")


async def stylesheet(request: web.Request) -> web.Response:
    return _asset(assets.CSS, "text/css")


async def script(request: web.Request) -> web.Response:
    return _asset(assets.JS, "text/javascript")


async def favicon(request: web.Request) -> web.Response:
    return _asset(assets.FAVICON, "image/svg+xml")


def _asset(text: str, content_type: str) -> web.Response:
    # The URLs carry the assets' hash (?v=): a browser may keep them for a day without asking.
    headers = {"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"}
    return web.Response(text=text, content_type=content_type, charset="utf-8", headers=headers)

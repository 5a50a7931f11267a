"""Serving: the HTTP app on every --web.listen-address, until SIGTERM/SIGINT; then a clean stop."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from exporter.config.fields import join_host_port
from exporter.service import Exporter
from exporter.web.app import DEFAULT_TELEMETRY_PATH, make_app
from exporter.web.guard import WebGuard
from exporter.web.paths import Prefix

log = logging.getLogger(__name__)
# aiohttp keeps an idle connection for an hour by default: a crowd of silent clients would then hold
# file descriptors that probes need. Prometheus reconnects cheaply; 75 s is plenty.
KEEPALIVE_SECONDS = 75.0
EXIT_OK = 0
EXIT_LISTEN = 2


async def serve(
    exporter: Exporter,
    addresses: Sequence[tuple[str | None, int]],
    guard: WebGuard,
    telemetry_path: str = DEFAULT_TELEMETRY_PATH,
    prefix: Prefix | None = None,
) -> int:
    """Listen on every address (all or none), start the probes, serve until told to stop."""
    runner = web.AppRunner(
        make_app(exporter, guard, telemetry_path, prefix), access_log=None, keepalive_timeout=KEEPALIVE_SECONDS
    )
    await runner.setup()
    ssl_context = guard.listener_context()
    for host, port in addresses:
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except OSError as exc:
            print(f"error: cannot listen on {join_host_port(host or '*', port)}: {exc.strerror}", file=sys.stderr)
            await runner.cleanup()
            return EXIT_LISTEN
    exporter.install_signal_handlers()
    await exporter.start()
    listening = ",".join(join_host_port(host or "*", port) for host, port in addresses)
    log.info("listening", extra={"address": listening, "tls": guard.tls, "basic_auth": guard.basic_auth})
    if guard.basic_auth and not guard.tls:
        log.warning("basic auth without TLS: passwords cross the network in clear text")
    await exporter.stopping.wait()
    await exporter.stop()
    await runner.cleanup()
    return EXIT_OK

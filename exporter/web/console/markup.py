"""The console's HTML parts: every value escaped, the page frame, times and result badges.

Nothing reaches a page but through ``esc``: server text is sanitised (one line, printable, bounded,
sanitise.server_text) and then HTML-escaped, so a server's ``<script>`` is shown, never run. The
pages load their style and script from this exporter (console.assets): no inline script or style,
so they work offline and under a strict Content-Security-Policy (which the exporter sends itself).
"""

from __future__ import annotations

import html
import time

from exporter import __version__
from exporter.probe.result import ProbeResult
from exporter.sanitise import MESSAGE_LIMIT, server_text
from exporter.timefmt import utc_time
from exporter.web.console.assets import ASSET_VERSION
from exporter.web.paths import Prefix

# Everything from this exporter, nothing from elsewhere; forms post only back to it.
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def esc(value: object, limit: int = MESSAGE_LIMIT) -> str:
    """Any value as HTML text (also fit for a quoted attribute): sanitised, bounded, escaped."""
    return html.escape(server_text(str(value), limit), quote=True)


def when(unix: float | None, missing: str = "never", short: bool = False) -> str:
    """A time as a <time> element; console.js adds how long ago it was (``short``: says only that,
    with the time itself as the tooltip, for the overview's narrow columns)."""
    if unix is None:
        return f'<span class="muted">{missing}</span>'
    return f'<time datetime="{unix:.0f}" data-ago="{"short" if short else ""}">{utc_time(unix)}</time>'


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 0.01:
        return f"{value * 1000:.1f} ms"  # DNS and connect on a LAN: tenths of a millisecond tell apart
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def outcome(result: ProbeResult | None) -> tuple[str, str]:
    """(css class, word) of a result: ok, failed, or pending before the first probe."""
    if result is None:
        return "pending", "pending"
    return ("ok", "OK") if result.success else ("bad", "FAILED")


def badge(result: ProbeResult | None) -> str:
    css, word = outcome(result)
    return f'<span class="badge {css}">{word}</span>'


def task_link(prefix: Prefix, device: str, task: str) -> str:
    # Device and task names are letters, digits and _ . - (config.model): safe in a path.
    return prefix.link(f"/task/{esc(device)}/{esc(task)}")


def page(prefix: Prefix, title: str, body: str, telemetry_path: str, started: float, refresh: int = 0) -> str:
    """A whole page: header with the links, ``body``, when it was made and how long that took
    (``started``: time.perf_counter() when the request began). With ``refresh``, console.js fetches
    the page again every ``refresh`` seconds and swaps each element marked ``data-live`` for its new self."""
    nav = (
        f'<a href="{prefix.link("/")}">Overview</a>'
        f'<a href="{prefix.link(telemetry_path)}">Metrics</a>'
        f'<a href="{prefix.link("/config")}">Config</a>'
    )
    took = (time.perf_counter() - started) * 1000
    rendered = f'Rendered {utc_time(time.time())} <span class="muted">({took:.1f} ms)</span>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<link rel="icon" href="{prefix.link("/static/favicon.svg")}">
<link rel="stylesheet" href="{prefix.link("/static/console.css")}?v={ASSET_VERSION}">
<script src="{prefix.link("/static/console.js")}?v={ASSET_VERSION}" defer></script>
</head><body{f' data-refresh="{refresh}"' if refresh else ""}>
<header><strong>mail-roundtrip-exporter</strong> <span class="muted">{esc(__version__)}</span><nav>{nav}</nav></header>
<main>
{body}
<p class="rendered muted"><span id="rendered" data-live>{rendered}</span> <span id="refresh-state"></span></p>
</main>
</body></html>
"""

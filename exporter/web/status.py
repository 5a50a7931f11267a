"""The status page: every task's last result on one HTML page, every cell escaped and sanitised."""

from __future__ import annotations

import html

from exporter import __version__
from exporter.exposition.stats import TaskStats
from exporter.probe.result import LegResult
from exporter.sanitise import MESSAGE_LIMIT, server_text
from exporter.service import Exporter
from exporter.timefmt import utc_time


def status_page(exporter: Exporter, telemetry_path: str) -> str:
    rows = "\n".join(_row(stats) for stats in exporter.scheduler.stats())
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>mail-roundtrip-exporter</title>
<style>body{{font-family:sans-serif}} td,th{{padding:2px 8px;text-align:left}}
.bad{{color:#b00}} .ok{{color:#070}}</style>
</head><body><h1>mail-roundtrip-exporter {html.escape(__version__)}</h1>
<p><a href="{html.escape(telemetry_path)}">Metrics</a> &middot; <a href="/config">Config</a></p>
<table><tr><th>device</th><th>task</th><th>last result</th><th>reason</th><th>error</th><th>delivery (s)</th>
<th>last success</th><th>in flight</th><th>SMTP address</th><th>mailbox address</th></tr>
{rows}
</table></body></html>
"""
    return body


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
            _address(last.smtp),
            last.mailbox.address or "",
        ]
        css = "ok" if last.success else "bad"
    # Escaped for HTML, and sanitised like every output of server text (no bidi overrides, no controls).
    tds = "".join(f"<td>{html.escape(server_text(cell, MESSAGE_LIMIT))}</td>" for cell in cells)
    return f'<tr class="{css}">{tds}</tr>'


def _address(leg: LegResult) -> str:
    """The address a leg connected to, after the MX host that answered in MX mode."""
    return f"{leg.mx_host} ({leg.address})" if leg.mx_host else leg.address or ""


def _when(unix: float | None) -> str:
    return utc_time(unix) if unix is not None else "never"

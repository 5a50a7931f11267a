"""The overview (``/``): counts, failing tasks first, a filter, and one row per task.

An admin woken by a page opens this first, so it must load at once whatever the number of tasks:
each task's row is made once per change of its statistics (TaskStats.generation) and kept, so a
page of 1,000 tasks is mostly a join of cached rows (scripts/console_benchmark.py measures it).
Times are absolute (console.js adds "3 min ago" in the browser), so a row never goes stale by age.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from exporter.exposition.stats import ReloadStatus, TaskStats
from exporter.service import Exporter
from exporter.timefmt import utc_time
from exporter.web.console.markup import badge, esc, page, seconds, task_link, when
from exporter.web.paths import Prefix

REFRESH_SECONDS = 10  # how often the page reloads what it shows; ?refresh=N (2..3600) for a wall display
ERROR_LIMIT = 300  # of the error text in a row; the task page shows all of it
COLUMNS = (
    "Task",
    "Result",
    "Reason and error",
    "Failing since",
    "Last probe",
    "Delivery",
    "SMTP",
    "Mailbox",
    "In flight",
)


@dataclass(frozen=True)
class _Row:
    generation: int
    order: tuple[int, str, str]  # failing first, then pending, then the rest; by device and task
    search: str  # what the filter matches: device, task, reason, host names, addresses
    html: str  # the row after "<tr"
    failing: bool


class Overview:
    """Renders the overview, keeping each task's row until its statistics change."""

    def __init__(self, prefix: Prefix, telemetry_path: str) -> None:
        self.prefix = prefix
        self.telemetry_path = telemetry_path
        self._rows: weakref.WeakKeyDictionary[TaskStats, _Row] = weakref.WeakKeyDictionary()

    def render(self, exporter: Exporter, query: str = "", refresh: int = REFRESH_SECONDS) -> str:
        started = time.perf_counter()
        stats = list(exporter.scheduler.stats())
        rows = sorted((self._row(task) for task in stats), key=lambda row: row.order)
        wanted = query.strip().lower()
        shown = [not wanted or wanted in row.search for row in rows]
        body = "".join(
            (
                _banner(exporter.reload_status, _file_paths(exporter)),
                _counts(stats, rows),
                self._filter(query, sum(shown), len(rows), refresh),
                '<table id="tasks" data-live><thead><tr>',
                "".join(f'<th scope="col">{name}</th>' for name in COLUMNS),
                "</tr></thead><tbody>",
                "".join(f"<tr{'' if show else ' hidden'}{row.html}" for row, show in zip(rows, shown, strict=True)),
                "</tbody></table>",
                "" if rows else '<p class="muted">No tasks yet (the configuration is loading).</p>',
            )
        )
        return page(self.prefix, "Mail round trips", body, self.telemetry_path, started, refresh=refresh)

    def _row(self, stats: TaskStats) -> _Row:
        row = self._rows.get(stats)
        if row is None or row.generation != stats.generation:
            row = self._rows[stats] = self._make_row(stats)
        return row

    def _make_row(self, stats: TaskStats) -> _Row:
        last, info = stats.last, stats.info
        failing = last is not None and not last.success
        rank = 0 if failing else 1 if last is None else 2
        reason = last.reason.value if last is not None and last.reason is not None else ""
        # In MX mode the configured host is the domain: the MX host that answered says more.
        smtp_host = (last.smtp.mx_host if last else None) or (info.smtp_host if info else "")
        mailbox_host = info.incoming_host if info else ""
        smtp_address = last.smtp.address if last else None
        mailbox_address = last.mailbox.address if last else None
        words = (stats.device, stats.task, reason, smtp_host, mailbox_host, smtp_address, mailbox_address)
        search = " ".join(word for word in words if word).lower()
        error = last.error if last is not None and last.error else ""
        cells = (
            f'<th scope="row"><a href="{task_link(self.prefix, stats.device, stats.task)}">'
            f'<span class="muted">{esc(stats.device)} /</span> {esc(stats.task)}</a></th>',
            f"<td>{badge(last)}</td>",
            f'<td class="error"><strong>{esc(reason)}</strong> <span title="{esc(error)}">{esc(error, ERROR_LIMIT)}'
            "</span></td>",
            f"<td>{when(stats.history.failing_since, '', short=True)}</td>",
            f"<td>{when(last.finished if last else None, short=True)}</td>",
            f'<td class="num">{seconds(last.delivery_seconds if last else None)}</td>',
            f"<td>{_host(smtp_host, smtp_address)}</td>",
            f"<td>{_host(mailbox_host, mailbox_address, info.protocol if info else '')}</td>",
            f'<td class="num">{_in_flight(stats)}</td>',
        )
        html = f' class="{"failing" if failing else ""}" data-search="{esc(search)}">{"".join(cells)}</tr>'
        return _Row(stats.generation, (rank, stats.device, stats.task), search, html, failing)

    def _filter(self, query: str, shown: int, total: int, refresh: int) -> str:
        return (
            f'<form class="filter" role="search" method="get" action="{self.prefix.link("/")}">'
            f'<input type="hidden" name="refresh" value="{refresh}">'
            '<label for="filter">Filter</label> '
            f'<input id="filter" name="q" type="search" value="{esc(query, 200)}" autocomplete="off" '
            'placeholder="device, task, reason or host" autofocus> '
            f'<span id="shown" class="muted">{shown} of {total} shown</span></form>'
        )


def _host(host: str, address: str | None, protocol: str = "") -> str:
    kind = f'<span class="muted">{esc(protocol)}</span> ' if protocol else ""
    used = f' <span class="muted">({esc(address)})</span>' if address else ""
    return f"{kind}{esc(host)}{used}"


def _in_flight(stats: TaskStats) -> str:
    skipped = f' <span class="warn" title="runs skipped at max_in_flight">+{stats.skipped} skipped</span>'
    return f"{stats.in_flight}{skipped if stats.skipped else ''}"


def _file_paths(exporter: Exporter) -> list[str]:
    """The config files' paths: a reload error names them, and only /config may (the page is seen by
    whoever reaches the port)."""
    others = (getattr(other, "path", None) for other in exporter.also_reloaded)
    return [str(exporter.config_path), *(path for path in others if isinstance(path, str))]


def _banner(reload: ReloadStatus, paths: list[str]) -> str:
    if reload.error is None:
        return '<div id="banner" data-live></div>'  # where a refresh puts the banner of a later failure
    since = f" at {utc_time(reload.failed_at)}" if reload.failed_at is not None else ""
    error = reload.error
    for path in sorted(paths, key=len, reverse=True):
        error = error.replace(path, Path(path).name)
    return (
        '<div id="banner" data-live><section class="banner" role="alert" id="reload-failed">'
        f"<h2>The last configuration reload failed{since}</h2>"
        f"<p><code>{esc(error)}</code></p>"
        f"<p>The configuration loaded {utc_time(reload.last_success)} keeps running.</p></section></div>"
    )


def _counts(stats: list[TaskStats], rows: list[_Row]) -> str:
    counts = (
        ("tasks", len(rows), ""),
        ("failing", sum(row.failing for row in rows), "bad"),
        ("pending", sum(task.last is None for task in stats), ""),
        ("in flight", sum(task.in_flight for task in stats), ""),
        ("runs skipped", sum(task.skipped for task in stats), "warn"),
    )
    items = "".join(
        f'<div class="count {css if value else ""}"><dt>{name}</dt><dd>{value}</dd></div>'
        for name, value, css in counts
    )
    return f'<dl class="counts" id="counts" data-live>{items}</dl>'

"""The task page (``/task/DEVICE/TASK``): what the task is, its last probes with their phase
waterfalls, the delivery-time sparkline, the kept transcripts, and the Probe now button (whose
answer is this page with the fresh probe and its transcript on top)."""

from __future__ import annotations

import time

from exporter.config.model import TaskConfig
from exporter.exposition.stats import TaskStats
from exporter.letter.arrival import Arrival, Placement, hop_text
from exporter.probe.phases import Leg
from exporter.probe.result import LegResult, ProbeResult
from exporter.service import Exporter
from exporter.timefmt import utc_time
from exporter.transcript import Transcript
from exporter.web.console.markup import badge, esc, page, seconds, task_link, when
from exporter.web.console.svg import sparkline, waterfall
from exporter.web.paths import Prefix

DAY = 86400.0


class TaskPage:
    def __init__(self, prefix: Prefix, telemetry_path: str) -> None:
        self.prefix = prefix
        self.telemetry_path = telemetry_path

    def render(self, exporter: Exporter, device: str, task: str, fresh: ProbeResult | None = None) -> str | None:
        """The page, or None if there is no such task. ``fresh``: a Probe now's result, shown first."""
        started = time.perf_counter()
        runner = exporter.scheduler.runners.get((device, task))
        if runner is None:
            return None
        stats = runner.stats
        results = list(stats.history.newest_first())
        body = "".join(
            (
                f"<h1>{esc(device)} / {esc(task)} {badge(stats.last)}</h1>",
                _about(stats, runner.task),
                self._probe_now(stats, runner.task),
                _fresh(fresh) if fresh is not None else "",
                f"<section><h2>Delivery time</h2>{sparkline(results[::-1])}</section>",
                _history(results, stats.history.limit),
                _kept_transcripts(stats),
            )
        )
        return page(self.prefix, f"{device}/{task}", body, self.telemetry_path, started)

    def _probe_now(self, stats: TaskStats, config: TaskConfig) -> str:
        longest = config.completion_timeout * 8 + config.email_timeout  # roughly: every step, then the wait
        action = task_link(self.prefix, stats.device, stats.task) + "/probe"
        return (
            f'<form class="probe-now" method="post" action="{action}">'
            f'<button type="submit" data-busy="Probing… (up to {longest:.0f} s)">Probe now</button> '
            '<span class="muted">sends one test letter now and shows what was said; one at a time, a few per '
            "minute</span></form>"
        )


def _about(stats: TaskStats, config: TaskConfig) -> str:
    last = stats.last
    incoming = config.incoming
    items = (
        ("Failing since", when(stats.history.failing_since, "not failing")),
        ("Last probe", when(last.finished if last else None)),
        ("Last success", when(stats.last_success)),
        ("SMTP server", _server(config.smtp.host, config.smtp.port, config.smtp.security.value, last, Leg.SMTP)),
        (
            "Mailbox server",
            _server(incoming.server.host, incoming.server.port, incoming.server.security.value, last, Leg.MAILBOX)
            + f' <span class="muted">{esc(incoming.protocol.value)} {esc(incoming.mailbox)}</span>',
        ),
        ("Letter", f"{esc(config.sender)} → {esc(config.destination)}"),
        ("Schedule", f"every {stats.interval:g} s; email timeout {stats.email_timeout:g} s"),
        (
            "Probes",
            f"{stats.probes} finished, {stats.failures.total()} failed, {stats.in_flight} in flight, "
            f"{stats.skipped} skipped, {stats.late_arrivals} late letters",
        ),
    )
    return '<dl class="facts about">' + "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in items) + "</dl>"


def _server(host: str, port: int, security: str, last: ProbeResult | None, leg: Leg) -> str:
    facts = last.legs()[leg] if last is not None else None
    used = f' <span class="muted">({esc(facts.address)})</span>' if facts is not None and facts.address else ""
    return f'{esc(host)}:{port} <span class="muted">{esc(security)}</span>{used}'


def _fresh(result: ProbeResult) -> str:
    transcript = _transcript(result.transcript, open_=True) if result.transcript is not None else ""
    return (
        f'<section class="fresh" id="probe-now-result"><h2>Probe now: {badge(result)} '
        f'<span class="muted">{utc_time(result.finished)}</span></h2>'
        f"{_details(result)}{transcript}</section>"
    )


def _history(results: list[ProbeResult], limit: int) -> str:
    if not results:
        return '<section><h2>Last probes</h2><p class="muted">No probe finished yet.</p></section>'
    items = []
    for index, result in enumerate(results):
        reason = f" <strong>{esc(result.reason)}</strong>" if result.reason is not None else ""
        delivery = f" delivered in {seconds(result.delivery_seconds)}" if result.delivery_seconds is not None else ""
        summary = (
            f"<summary>{badge(result)} {when(result.finished)}{reason}{delivery} "
            f'<span class="muted">took {seconds(result.finished - result.started)}</span></summary>'
        )
        items.append(f'<details class="probe"{" open" if index == 0 else ""}>{summary}{_details(result)}</details>')
    return f'<section><h2>Last probes <span class="muted">(up to {limit} kept)</span></h2>{"".join(items)}</section>'


def _details(result: ProbeResult) -> str:
    rows = "".join(f'<tr><th scope="row">{name}</th><td>{value}</td></tr>' for name, value in facts(result))
    return f'<div class="probe-body">{waterfall(result)}<table class="facts">{rows}</table></div>'


def facts(result: ProbeResult) -> list[tuple[str, str]]:
    """What a probe learnt, as (name, HTML) pairs: one place for every fact a probe carries."""
    out: list[tuple[str, str]] = []
    if result.error:
        out.append(("Error", f'<span class="error-text">{esc(result.error)}</span>'))
    if result.failed_phase is not None:
        out.append(("Failed in", f"<strong>{esc(result.failed_phase)}</strong> ({esc(result.reason or '')})"))
    if result.smtp_reply:
        out.append(("SMTP reply", f"<code>{esc(result.smtp_reply)}</code>"))
    if result.delivery_seconds is not None:
        server = result.server_delivery_seconds
        clock = f' <span class="muted">(mailbox server\'s clock: {server:.0f} s)</span>' if server is not None else ""
        out.append(("Delivery", seconds(result.delivery_seconds) + clock))
    for leg, leg_result in result.legs().items():
        out.append(
            (f"{leg.value.upper() if leg.value == 'smtp' else 'Mailbox'} leg", _leg(leg_result, result.finished))
        )
    if result.arrival is not None:
        out.extend(_arrival(result.arrival))
    if result.swept:
        out.append(("Leftovers swept", str(result.swept)))
    out.append(("Started", f"{utc_time(result.started)} (token <code>{esc(result.token)}</code>)"))
    return out


def _arrival(arrival: Arrival) -> list[tuple[str, str]]:
    css = "bad" if arrival.placement is Placement.JUNK else ""
    score = f' <span class="muted">spam score {arrival.spam_score:g}</span>' if arrival.spam_score is not None else ""
    hops = "".join(f"<li>{esc(hop_text(hop))}</li>" for hop in arrival.hops)
    return [
        ("Placement", f'<span class="{css}">{esc(arrival.placement)}</span>{score}'),
        ("Authentication", f"<code>{esc(arrival.authentication_text())}</code>"),
        ("Hops", f'{esc(arrival.hops_summary())}<ol class="hops">{hops}</ol>'),
    ]


def _leg(leg: LegResult, now: float) -> str:
    parts = [esc(leg.address) if leg.address else '<span class="muted">not connected</span>']
    if leg.mx_host:
        parts.insert(0, f"MX {esc(leg.mx_host)}")
    if leg.dns_cached is not None:
        parts.append("DNS cache hit" if leg.dns_cached else "DNS looked up")
    tls = leg.tls
    if tls is None:
        parts.append("no TLS")
    else:
        parts.append(f"{esc(tls.version)} {esc(tls.cipher)}")
        if tls.not_after is not None:
            days = (tls.not_after - now) / DAY
            css = "bad" if days < 7 else "warn" if days < 14 else ""
            parts.append(f'<span class="{css}">certificate expires {utc_time(tls.not_after)} ({days:.0f} days)</span>')
    return " · ".join(parts)


def _kept_transcripts(stats: TaskStats) -> str:
    parts = []
    failure = stats.history.last_failure
    if failure is not None and failure.transcript is not None:
        title = f"Transcript of the last failed probe ({utc_time(failure.finished)}, {esc(failure.reason or '')})"
        parts.append(_transcript(failure.transcript, title=title))
    last = stats.last
    if last is not None and last is not failure and last.transcript is not None:
        parts.append(_transcript(last.transcript, title=f"Transcript of the last probe ({utc_time(last.finished)})"))
    return "".join(parts)


def _transcript(transcript: Transcript, title: str = "Transcript", open_: bool = False) -> str:
    """Every command and reply of both legs, by time; secrets were redacted when they were noted."""
    head, tail = transcript.parts()
    rows = [_line(*line) for line in head]
    if transcript.cut:
        rows.append(f'<tr><td colspan="4" class="muted">… {transcript.cut} lines not kept …</td></tr>')
    rows += [_line(*line) for line in tail]
    letter = ""
    if transcript.letter:
        headers = "\n".join(esc(header) for header in transcript.letter)
        letter = f'<h3>Header of the probe letter sent</h3><pre class="letter">{headers}</pre>'
    return (
        f'<details class="transcript"{" open" if open_ else ""}><summary>{title}</summary>'
        '<table class="transcript"><thead><tr><th scope="col">time</th><th scope="col">leg</th>'
        '<th scope="col"><span class="sr">direction</span></th><th scope="col">line</th></tr></thead><tbody>'
        f"{''.join(rows)}</tbody></table>{letter}</details>"
    )


def _line(at: float, leg: str, sent: bool, text: str) -> str:
    arrow = '<span title="sent by the exporter">→</span>' if sent else '<span title="from the server">←</span>'
    return (
        f'<tr class="{"sent" if sent else "heard"}"><td class="num">{at * 1000:.0f} ms</td><td>{esc(leg)}</td>'
        f"<td>{arrow}</td><td><code>{esc(text)}</code></td></tr>"
    )

"""Inline SVG drawings for the task page: a probe's phase waterfall and the delivery-time sparkline.

Drawn on the server as plain elements with CSS classes (colours live in console.css), so they need
no script and pass a strict Content-Security-Policy. Every text in them goes through markup.esc.
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.probe.phases import Leg, Phase
from exporter.probe.result import ProbeResult, Span
from exporter.web.console.markup import esc, seconds

# The rows of a waterfall, in the order a round trip goes; sweep sits where it runs for IMAP.
ROWS: tuple[tuple[str, tuple[Phase, ...]], ...] = (
    ("SMTP", tuple(p for p in Phase if p.leg is Leg.SMTP)),
    ("mailbox", tuple(p for p in Phase if p.leg is Leg.MAILBOX)),
)
WAIT = "wait for the letter"
LABEL_WIDTH, CHART_WIDTH, VALUE_WIDTH, ROW_HEIGHT, AXIS_HEIGHT = 150, 420, 80, 18, 16


def waterfall(result: ProbeResult) -> str:
    """When each phase ran, on the probe's own clock: the mailbox leg opens while SMTP connects."""
    rows = _rows(result)
    if not rows:
        return '<p class="muted">No phase ran.</p>'
    total = max([end for _, spans, _ in rows for end in (s.start + s.seconds for s in spans)] + [1e-3])
    scale = CHART_WIDTH / total
    height = len(rows) * ROW_HEIGHT + AXIS_HEIGHT
    width = LABEL_WIDTH + CHART_WIDTH + VALUE_WIDTH
    parts = [
        f'<svg class="waterfall" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="phase waterfall: {esc(_summary(rows))}"><title>Phases of this probe over {seconds(total)}'
        "</title>"
    ]
    for index, (name, spans, css) in enumerate(rows):
        y = index * ROW_HEIGHT
        parts.append(f'<text class="label" x="0" y="{y + 13}">{esc(name)}</text>')
        for span in spans:
            x, w = LABEL_WIDTH + span.start * scale, max(1.0, span.seconds * scale)
            tip = f"{name}: {seconds(span.seconds)}, from {seconds(span.start)}"
            parts.append(
                f'<rect class="{css}" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{ROW_HEIGHT - 6}">'
                f"<title>{esc(tip)}</title></rect>"
            )
        value = seconds(sum(span.seconds for span in spans))
        parts.append(f'<text class="value" x="{LABEL_WIDTH + CHART_WIDTH + 6}" y="{y + 13}">{value}</text>')
    parts.append(_axis(len(rows) * ROW_HEIGHT, total))
    parts.append("</svg>")
    return "".join(parts)


def _rows(result: ProbeResult) -> list[tuple[str, list[Span], str]]:
    by_phase: dict[Phase, list[Span]] = {}
    for span in result.spans:
        by_phase.setdefault(span.phase, []).append(span)
    rows = []
    for leg, phases in ROWS:
        for phase in phases:
            if phase in by_phase:
                css = "failed" if phase is result.failed_phase else leg.lower()
                rows.append((phase.value, by_phase[phase], css))
    wait = _wait(result, by_phase)
    if wait is not None:
        rows.append((WAIT, [wait], "wait"))
    return rows


def _wait(result: ProbeResult, by_phase: dict[Phase, list[Span]]) -> Span | None:
    """From SMTP's acceptance until the letter was seen (or, when it never was, until the probe ended)."""
    if result.accepted_offset is None:
        return None
    if result.delivery_seconds is not None:
        return Span(Phase.MAILBOX_SEARCH, result.accepted_offset, result.delivery_seconds)
    ends = [span.start + span.seconds for spans in by_phase.values() for span in spans]
    return Span(
        Phase.MAILBOX_SEARCH, result.accepted_offset, max([result.accepted_offset, *ends]) - result.accepted_offset
    )


def _summary(rows: Sequence[tuple[str, list[Span], str]]) -> str:
    return ", ".join(f"{name} {seconds(sum(span.seconds for span in spans))}" for name, spans, _ in rows)


def _axis(y: int, total: float) -> str:
    ticks = []
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        x = LABEL_WIDTH + fraction * CHART_WIDTH
        label = seconds(fraction * total) or "0"
        ticks.append(
            f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{y}"></line>'
            f'<text class="axis" x="{x:.1f}" y="{y + 12}" text-anchor="{anchor}">{label}</text>'
        )
    return "".join(ticks)


SPARK_WIDTH, SPARK_HEIGHT = 320, 48


def sparkline(results: Sequence[ProbeResult]) -> str:
    """Delivery time of each probe kept, oldest first; a failed probe is a red mark on the baseline."""
    if not results:
        return '<p class="muted">No probe finished yet.</p>'
    delivered = [r.delivery_seconds for r in results if r.delivery_seconds is not None]
    top = max([*delivered, 1e-3])
    step = SPARK_WIDTH / max(1, len(results) - 1)
    points, marks = [], []
    for index, result in enumerate(results):
        x = index * step if len(results) > 1 else SPARK_WIDTH / 2
        if result.delivery_seconds is not None:
            y = SPARK_HEIGHT - 4 - result.delivery_seconds / top * (SPARK_HEIGHT - 8)
            points.append((x, y))
        if not result.success:
            tip = f"failed: {esc(result.reason or '')}"
            bar = f'x="{max(0.0, x - 2):.1f}" y="{SPARK_HEIGHT - 6}" width="4" height="6"'
            marks.append(f'<rect class="failed" {bar}><title>{tip}</title></rect>')
    slowest = seconds(top) if delivered else "none"
    label = f"delivery time of the last {len(results)} probes: {len(delivered)} delivered, slowest {slowest}"
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    drawn = [f'<line class="tick" x1="0" x2="{SPARK_WIDTH}" y1="{SPARK_HEIGHT - 1}" y2="{SPARK_HEIGHT - 1}"></line>']
    drawn += [f'<polyline class="spark" points="{line}"></polyline>'] if len(points) > 1 else []
    drawn += [f'<circle class="spark" cx="{x:.1f}" cy="{y:.1f}" r="2"></circle>' for x, y in points]
    return (
        f'<div class="spark-row"><svg class="sparkline" role="img" viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}" '
        f'width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" aria-label="{esc(label)}">'
        f"<title>{esc(label)}</title>{''.join(drawn + marks)}</svg>"
        f'<span class="muted">{esc(label)}</span></div>'
    )

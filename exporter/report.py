"""The --once report: every task's result with its phases, one block per task, safe to print."""

from __future__ import annotations

from collections.abc import Sequence

from exporter.letter.arrival import Arrival, hop_text
from exporter.probe.phases import Phase
from exporter.probe.result import ProbeResult
from exporter.sanitise import MESSAGE_LIMIT, server_text
from exporter.timefmt import utc_time


def render_report(results: Sequence[ProbeResult]) -> str:
    return "\n\n".join(_render_one(result) for result in results)


def _render_one(r: ProbeResult) -> str:
    status = "OK" if r.success else f"FAILED ({r.reason})"
    lines = [f"== {r.device}/{r.task}: {status}"]
    if r.error:
        lines.append(f"   error: {_safe(r.error)}")
    lines.append(f"   {'phase':<18}{'seconds':>10}")
    for phase in (p for p in Phase if p in r.phases):
        note = "  (cache hit)" if phase.is_dns and r.legs()[phase.leg].dns_cached else ""
        lines.append(f"   {phase:<18}{r.phases[phase]:>10.4f}{note}")
    if r.delivery_seconds is not None:
        server = f"  (server clock: {r.server_delivery_seconds:.3f})" if r.server_delivery_seconds is not None else ""
        lines.append(f"   {'delivery':<18}{r.delivery_seconds:>10.4f}{server}")
    facts: list[tuple[str, str | None]] = [("smtp reply", r.smtp_reply)]
    for leg, leg_result in r.legs().items():
        facts.append((f"{leg} mx host", leg_result.mx_host))
        facts.append((f"{leg} address", leg_result.address))
        tls = leg_result.tls
        if tls is not None:
            facts.append((f"{leg} tls", f"{tls.version} {tls.cipher}"))
            facts.append((f"{leg} cert expires", _date(tls.not_after)))
    for label, value in facts:
        if value:
            lines.append(f"   {label}: {_safe(value)}")
    if r.arrival is not None:
        lines.extend(_arrival(r.arrival))
    return "\n".join(lines)


def _arrival(arrival: Arrival) -> list[str]:
    score = f" (spam score {arrival.spam_score:g})" if arrival.spam_score is not None else ""
    lines = [
        f"   placement: {arrival.placement}{score}",
        f"   authentication: {_safe(arrival.authentication_text())}",
        f"   hops: {_safe(arrival.hops_summary())}",
    ]
    return lines + [f"     {number}. {_safe(hop_text(hop))}" for number, hop in enumerate(arrival.hops, 1)]


def _safe(text: str) -> str:
    """Once more at the output, whatever the source did: a report line can never hold a line break or a
    terminal control, so no server can forge a "== device/task: OK" line or drive the terminal."""
    return server_text(text, MESSAGE_LIMIT)


def _date(unix: float | None) -> str | None:
    return utc_time(unix) if unix is not None else None

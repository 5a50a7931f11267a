"""A task's recent probes, kept in memory for the console: the last N results (without their
transcripts), when the current run of failures began, and the last failed probe with its transcript.

Bounded like blackbox_exporter's ``--history.limit``: N results per task, one kept transcript for the
last probe (``TaskStats.last``) and one for the last failure, whatever the task does.

A kept result is packed into nested tuples of plain values: the garbage collector does not track
those, so 1,000 tasks x 20 probes cost it nothing (as ProbeResult objects, ~330,000 tracked objects
made each full collection 100 ms instead of 9 ms: that long the probes' event loop stood still).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from exporter.net.tls import TLSFacts
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from exporter.probe.result import LegResult, ProbeResult, Span

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000  # --history.limit's bound: 1,000 tasks x 1,000 probes is already a few GB

Packed = tuple[Any, ...]


class ProbeHistory:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._packed: deque[Packed] = deque(maxlen=limit)
        self.failing_since: float | None = None  # when the first probe of the current failures started
        self.last_failure: ProbeResult | None = None  # with its transcript

    def add(self, result: ProbeResult) -> None:
        self._packed.append(pack(result))
        if result.success:
            self.failing_since = None
            return
        if self.failing_since is None:
            self.failing_since = result.started
        self.last_failure = result

    def newest_first(self) -> Iterator[ProbeResult]:
        return (unpack(packed) for packed in reversed(self._packed))

    def __len__(self) -> int:
        return len(self._packed)


def pack(r: ProbeResult) -> Packed:
    """A result as plain values (its transcript left out)."""
    return (
        (r.device, r.task, r.token, r.started, r.success, r.finished, r.error, r.smtp_reply, r.swept),
        (r.reason.value if r.reason else None, r.failed_phase.value if r.failed_phase else None),
        tuple((phase.value, seconds) for phase, seconds in r.phases.items()),
        tuple((span.phase.value, span.start, span.seconds) for span in r.spans),
        (_pack_leg(r.smtp), _pack_leg(r.mailbox)),
        (r.delivery_seconds, r.server_delivery_seconds, r.accepted_wall, r.accepted_offset),
    )


def unpack(packed: Packed) -> ProbeResult:
    (device, task, token, started, success, finished, error, smtp_reply, swept), outcome = packed[:2]
    phases, spans, (smtp, mailbox), (delivery, server_delivery, accepted_wall, accepted_offset) = packed[2:]
    reason, failed_phase = outcome
    return ProbeResult(
        device=device,
        task=task,
        token=token,
        started=started,
        success=success,
        reason=Reason(reason) if reason else None,
        error=error,
        failed_phase=Phase(failed_phase) if failed_phase else None,
        phases={Phase(name): seconds for name, seconds in phases},
        spans=[Span(Phase(name), start, seconds) for name, start, seconds in spans],
        smtp=_unpack_leg(smtp),
        mailbox=_unpack_leg(mailbox),
        delivery_seconds=delivery,
        server_delivery_seconds=server_delivery,
        smtp_reply=smtp_reply,
        accepted_wall=accepted_wall,
        accepted_offset=accepted_offset,
        swept=swept,
        finished=finished,
    )


def _pack_leg(leg: LegResult) -> Packed:
    tls = (leg.tls.version, leg.tls.cipher, leg.tls.not_after) if leg.tls is not None else None
    return (leg.address, leg.mx_host, leg.dns_cached, tls)


def _unpack_leg(packed: Packed) -> LegResult:
    address, mx_host, dns_cached, tls = packed
    return LegResult(address, mx_host, dns_cached, TLSFacts(*tls) if tls is not None else None)

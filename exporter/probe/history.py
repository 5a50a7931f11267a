"""A task's recent probes, kept in memory for the console: the last N results (without their
transcripts), when the current run of failures began, and the last failed probe with its transcript.

Bounded like blackbox_exporter's ``--history.limit``: N results per task, one kept transcript for the
last probe (``TaskStats.last``) and one for the last failure, whatever the task does.

A kept result is packed into tuples of plain values and bytes: the garbage collector does not track
those, so 1,000 tasks x 20 probes cost it nothing (as ProbeResult objects, ~330,000 tracked objects
made each full collection 100 ms instead of 9 ms: that long the probes' event loop stood still).
"""

from __future__ import annotations

import math
import struct
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from exporter.letter.arrival import Arrival, Placement
from exporter.letter.authresults import Method
from exporter.letter.hops import Hop
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
    """A result as plain values (its transcript left out), compact: numbers as bytes of C doubles
    (NaN for a missing one), phases by their index, repeated server strings interned. About 0.9 KB
    a result where nested tuples took 3.9 KB: 1,000 tasks x 20 probes, 18 MB instead of 79 MB."""
    return (
        (r.device, r.task, r.token, r.success, r.error, r.smtp_reply, r.swept),
        (r.reason.value if r.reason else None, r.failed_phase.value if r.failed_phase else None),
        _doubles(
            (r.started, r.finished, r.delivery_seconds, r.server_delivery_seconds, r.accepted_wall, r.accepted_offset)
        ),
        _doubles(r.phases.get(phase) for phase in _PHASES),
        bytes(_PHASE_INDEX[span.phase] for span in r.spans),
        _doubles(value for span in r.spans for value in (span.start, span.seconds)),
        (_pack_leg(r.smtp), _pack_leg(r.mailbox)),
        _pack_arrival(r.arrival) if r.arrival is not None else None,
    )


def unpack(packed: Packed) -> ProbeResult:
    (device, task, token, success, error, smtp_reply, swept), (reason, failed_phase), times = packed[:3]
    durations, span_phases, span_times, (smtp, mailbox), arrival = packed[3:]
    started, finished, delivery, server_delivery, accepted_wall, accepted_offset = _values(times)
    return ProbeResult(
        device=device,
        task=task,
        token=token,
        started=_given(started),
        success=success,
        reason=Reason(reason) if reason else None,
        error=error,
        failed_phase=Phase(failed_phase) if failed_phase else None,
        phases={
            phase: seconds for phase, seconds in zip(_PHASES, _values(durations), strict=True) if seconds is not None
        },
        spans=[Span(_PHASES[index], *times) for index, times in zip(span_phases, _pairs(span_times), strict=True)],
        smtp=_unpack_leg(smtp),
        mailbox=_unpack_leg(mailbox),
        delivery_seconds=delivery,
        server_delivery_seconds=server_delivery,
        smtp_reply=smtp_reply,
        accepted_wall=accepted_wall,
        accepted_offset=accepted_offset,
        swept=swept,
        finished=_given(finished),
        arrival=_unpack_arrival(arrival) if arrival is not None else None,
    )


_PHASES = tuple(Phase)
_PHASE_INDEX = {phase: index for index, phase in enumerate(_PHASES)}


def _doubles(values: Iterable[float | None]) -> bytes:
    """Numbers as the bytes of C doubles (bytes, unlike an array, are never tracked by the GC)."""
    numbers = [math.nan if value is None else value for value in values]
    return struct.pack(f"{len(numbers)}d", *numbers)


def _values(doubles: bytes) -> list[float | None]:
    return [None if math.isnan(value) else value for value in memoryview(doubles).cast("d")]


def _pairs(doubles: bytes) -> list[tuple[float, float]]:
    numbers = memoryview(doubles).cast("d").tolist()
    return list(zip(numbers[::2], numbers[1::2], strict=True))


def _given(value: float | None) -> float:
    assert value is not None
    return value


def _pack_leg(leg: LegResult) -> Packed:
    tls = (_same(leg.tls.version), _same(leg.tls.cipher), leg.tls.not_after) if leg.tls is not None else None
    return (_same(leg.address), _same(leg.mx_host), leg.dns_cached, tls)


def _unpack_leg(packed: Packed) -> LegResult:
    address, mx_host, dns_cached, tls = packed
    return LegResult(address, mx_host, dns_cached, TLSFacts(*tls) if tls is not None else None)


def _pack_arrival(arrival: Arrival) -> Packed:
    names = tuple(_same(text) for hop in arrival.hops for text in (hop.by, hop.sender, hop.protocol))
    times = _doubles(value for hop in arrival.hops for value in (hop.at, hop.delay))
    results = _same(" ".join(f"{method}={result}" for method, result in arrival.authentication))
    return (arrival.placement.value, results, arrival.spam_score, names, times)


def _unpack_arrival(packed: Packed) -> Arrival:
    placement, results, spam_score, names, times = packed
    moments = _values(times)
    hops = tuple(
        Hop(names[3 * n], names[3 * n + 1], names[3 * n + 2], moments[2 * n], moments[2 * n + 1])
        for n in range(len(names) // 3)
    )
    pairs = (pair.split("=") for pair in results.split())
    return Arrival(Placement(placement), tuple((Method(method), result) for method, result in pairs), spam_score, hops)


def _same(text: str | None) -> str | None:
    """One copy of a string that every probe of a task repeats (a server's name, a cipher)."""
    return sys.intern(text) if text is not None else None

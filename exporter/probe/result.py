"""What a probe reports: success, or exactly one failure reason, with per-phase timings, one record
per leg, and the delivery time (SMTP server accepted the letter -> the letter was seen)."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.letter.arrival import Arrival
from exporter.net.tls import TLSFacts
from exporter.probe.errors import Reason
from exporter.probe.phases import Leg, Phase
from exporter.transcript import Transcript


@dataclass(frozen=True, slots=True)
class Span:
    """When a phase ran: ``start`` seconds after the probe began (monotonic), for ``seconds``."""

    phase: Phase
    start: float
    seconds: float


@dataclass
class LegResult:
    """What one leg (SMTP out, the mailbox in) learnt about its server."""

    address: str | None = None  # which address of the host answered
    mx_host: str | None = None  # in MX mode (SMTP): which MX host answered
    dns_cached: bool | None = None  # was the host's answer a cache hit (None: not looked up)
    tls: TLSFacts | None = None  # None without TLS


@dataclass
class ProbeResult:
    device: str
    task: str
    token: str
    started: float  # Unix time
    success: bool = False
    reason: Reason | None = None
    error: str | None = None  # human-readable, phase first; never contains a secret
    failed_phase: Phase | None = None  # the phase the failure happened in
    phases: dict[Phase, float] = field(default_factory=dict)  # seconds per phase
    spans: list[Span] = field(default_factory=list)  # when each phase ran (the legs overlap)
    smtp: LegResult = field(default_factory=LegResult)
    mailbox: LegResult = field(default_factory=LegResult)
    delivery_seconds: float | None = None  # accepted -> seen, our clock
    server_delivery_seconds: float | None = None  # accepted -> the mailbox server's arrival time
    smtp_reply: str | None = None
    accepted_wall: float | None = None
    accepted_offset: float | None = None  # seconds after the probe began that SMTP accepted the letter
    swept: int = 0  # leftover letters of earlier runs this probe deleted
    arrival: Arrival | None = None  # where and how the letter arrived, once found
    finished: float = 0.0
    # What the probe said and heard (redacted); the console keeps it only for the last probe, the last
    # failed one and a Probe now, so it is left out of the repr (log lines, tracebacks).
    transcript: Transcript | None = field(default=None, repr=False)

    @property
    def sent(self) -> bool:
        """The SMTP server took the letter: it may still arrive later (late arrival)."""
        return self.accepted_wall is not None

    def legs(self) -> dict[Leg, LegResult]:
        return {Leg.SMTP: self.smtp, Leg.MAILBOX: self.mailbox}

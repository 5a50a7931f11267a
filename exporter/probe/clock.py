"""The probe's clock: times each phase, notes where it started, and bounds it by the completion timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from exporter.probe.errors import ProbeError, ServerTimeout
from exporter.probe.phases import Phase
from exporter.probe.result import Span

# A phase that runs many times (EHLO twice, POP3 logging in at every look) would otherwise grow a
# probe's timeline without bound; the durations stay exact past this, only the drawing stops.
MAX_SPANS = 64


@dataclass
class PhaseClock:
    """Times phases and bounds each one by the completion timeout.

    ``spans`` say when each phase ran, in seconds after ``origin`` (the probe's start on the monotonic
    clock), so that the two legs, which overlap, can be drawn as they really ran."""

    limit: float
    durations: dict[Phase, float] = field(default_factory=dict)
    origin: float = field(default_factory=time.monotonic)
    spans: list[Span] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def phase(
        self, name: Phase, on_timeout: type[ProbeError] = ServerTimeout, accumulate: bool = False, hint: str = ""
    ) -> AsyncIterator[None]:
        """Time one phase. ``accumulate`` adds to an earlier run of the same phase (EHLO after STARTTLS);
        otherwise the last run counts: for repeated searches, the one that found the letter."""
        start = time.monotonic()
        earlier = self.durations.get(name, 0.0) if accumulate else 0.0
        try:
            async with asyncio.timeout(self.limit):
                yield
        except TimeoutError:
            raise on_timeout(f"no answer within {self.limit:g}s{hint}", phase=name) from None
        except ProbeError as exc:
            exc.phase = exc.phase or name
            raise
        finally:
            end = time.monotonic()
            self.durations[name] = earlier + end - start
            self.mark(name, start, end, accumulate)

    def mark(self, name: Phase, start: float, end: float, accumulate: bool = False) -> None:
        """Note that ``name`` ran from ``start`` to ``end`` (monotonic). As with the durations, a run
        that does not accumulate replaces the earlier runs of its phase."""
        if not accumulate:
            self.spans = [span for span in self.spans if span.phase is not name]
        if len(self.spans) < MAX_SPANS:
            self.spans.append(Span(name, start - self.origin, end - start))

    def split(self, first: Phase, second: Phase, start: float, at: float, end: float) -> None:
        """One timed call that did two phases' work (aiosmtplib's connect: TLS handshake, then banner):
        ``first`` ran from ``start`` to ``at``, ``second`` from ``at`` to ``end``."""
        self.durations[first] = at - start
        self.durations[second] = end - at
        self.mark(first, start, at)
        self.mark(second, at, end)

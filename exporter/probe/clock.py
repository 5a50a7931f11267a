"""The probe's clock: times each phase and bounds it by the completion timeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from exporter.probe.errors import ProbeError, ServerTimeout
from exporter.probe.phases import Phase


@dataclass
class PhaseClock:
    """Times phases and bounds each one by the completion timeout."""

    limit: float
    durations: dict[Phase, float] = field(default_factory=dict)

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
            self.durations[name] = earlier + time.monotonic() - start

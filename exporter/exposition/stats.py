"""Per-task statistics, updated as probes start and finish; exposition.render writes them out.

Metrics are rendered from the live task statistics at scrape time, so a task's series exist from the
moment it is configured (all counters at 0, success at 0) and vanish when a reload removes it.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field

from exporter.config.model import Labels
from exporter.letter.arrival import Arrival
from exporter.net.tls import TLSFacts
from exporter.probe.errors import Reason
from exporter.probe.history import ProbeHistory
from exporter.probe.phases import Leg
from exporter.probe.result import ProbeResult

# Mail takes from milliseconds (same host) to the full email timeout (at most an hour).
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = DELIVERY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(DELIVERY_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


@dataclass(frozen=True)
class TaskInfo:
    """Which servers a task uses, from its config: alerts and dashboards group tasks by them."""

    protocol: str
    smtp_host: str
    incoming_host: str


@dataclass(eq=False)
class TaskStats:
    """Everything the exporter knows about one task, updated as probes start and finish.

    ``generation`` changes with every change of the statistics: setting any field bumps it, and
    record() (which also updates counters in place) bumps it once more at its end. The rendered text
    is cached per generation (exposition.render), so no change can render stale, whoever makes it.
    """

    device: str
    task: str
    interval: float
    email_timeout: float
    info: TaskInfo | None = None
    labels: Labels = ()  # the config's labels: on every series of the task
    last: ProbeResult | None = None
    probes: int = 0
    failures: Counter[Reason] = field(default_factory=Counter)
    delivery: Histogram = field(default_factory=Histogram)
    late_arrivals: int = 0
    swept: int = 0
    skipped: int = 0
    in_flight: int = 0
    last_success: float | None = None
    arrival: Arrival | None = None  # how the last letter found arrived (a later failed probe keeps it)
    dns_lookups: Counter[tuple[Leg, bool]] = field(default_factory=Counter)  # (leg, cache hit)
    tls: dict[Leg, TLSFacts] = field(default_factory=dict)  # the last TLS session of each leg
    history: ProbeHistory = field(default_factory=ProbeHistory, repr=False)  # for the console, not the metrics
    generation: int = field(default=0, repr=False)
    rendered: tuple[int, tuple[str, ...]] | None = field(default=None, repr=False)  # (generation, text)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name not in ("generation", "rendered"):
            self.changed()

    def changed(self) -> None:
        object.__setattr__(self, "generation", self.generation + 1)

    def record(self, result: ProbeResult) -> None:
        self.last = result
        self.history.add(result)
        self.probes += 1
        if result.success:
            self.last_success = result.finished
        elif result.reason is not None:
            self.failures[result.reason] += 1
        if result.delivery_seconds is not None:
            self.delivery.observe(result.delivery_seconds)
        self.swept += result.swept
        if result.arrival is not None:
            self.arrival = result.arrival
        for leg, facts in result.legs().items():
            if facts.dns_cached is not None:
                self.dns_lookups[(leg, facts.dns_cached)] += 1
            if facts.tls is not None:
                self.tls[leg] = facts.tls
        self.changed()


@dataclass
class ReloadStatus:
    successful: bool = True
    last_success: float = field(default_factory=time.time)
    error: str | None = None  # the last failed reload's one line (already without secrets), until one succeeds
    failed_at: float | None = None

"""Per-task statistics and the Prometheus collector that exposes them.

The collector reads the live task statistics at scrape time, so a task's series exist from the
moment it is configured (all counters at 0, success at 0) and vanish when a reload removes it.
"""

from __future__ import annotations

import bisect
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.errors import Reason
from exporter.probe import PHASES, ProbeResult

PREFIX = "mail_roundtrip"
# Mail takes from milliseconds (same host) to the full email timeout (at most an hour).
DELIVERY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
LEGS = ("smtp", "mailbox")


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


@dataclass
class TaskStats:
    """Everything the exporter knows about one task, updated as probes finish."""

    device: str
    task: str
    interval: float
    email_timeout: float
    last: ProbeResult | None = None
    probes: int = 0
    failures: Counter[Reason] = field(default_factory=Counter)
    delivery: Histogram = field(default_factory=Histogram)
    late_arrivals: int = 0
    swept: int = 0
    skipped: int = 0
    in_flight: int = 0
    last_success: float | None = None
    dns_lookups: Counter[tuple[str, bool]] = field(default_factory=Counter)  # (leg, cache hit)
    certificate_not_after: dict[str, float] = field(default_factory=dict)  # leg -> Unix time

    def record(self, result: ProbeResult) -> None:
        self.last = result
        self.probes += 1
        if result.success:
            self.last_success = result.finished
        elif result.reason is not None:
            self.failures[result.reason] += 1
        if result.delivery_seconds is not None:
            self.delivery.observe(result.delivery_seconds)
        self.swept += result.swept
        for leg, cached in result.dns_cached.items():
            self.dns_lookups[(leg, cached)] += 1
        for leg, not_after in (
            ("smtp", result.smtp_certificate_not_after),
            ("mailbox", result.mailbox_certificate_not_after),
        ):
            if not_after is not None:
                self.certificate_not_after[leg] = not_after


@dataclass
class ReloadStatus:
    successful: bool = True
    last_success: float = field(default_factory=time.time)


class ExporterCollector(Collector):
    def __init__(self, stats: Callable[[], Iterable[TaskStats]], reload: ReloadStatus) -> None:
        self._stats = stats
        self._reload = reload

    def collect(self) -> Iterator[Metric]:
        stats = list(self._stats())
        yield from _task_metrics(stats)
        yield from _self_metrics(self._reload)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["device", "task", *labels])


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=["device", "task", *labels])


def _task_metrics(stats: list[TaskStats]) -> Iterator[Metric]:
    success = _gauge("probe_success", "1 if the last finished round trip of the task succeeded, else 0.")
    probes = _counter("probes", "Finished round-trip probes.")
    failures = _counter("probe_failures", "Failed round-trip probes by failure reason.", ("reason",))
    reason = _gauge("probe_failure_reason", "1 for the failure reason of the last probe, 0 for the others.",
                    ("reason",))
    failed_phase = _gauge("probe_failure_phase",
                          "1 for the phase the last probe failed in (smtp_* or mailbox_*), 0 for the others.",
                          ("phase",))
    interval = _gauge("task_interval_seconds", "Configured probe interval of the task (its device's interval).")
    email_timeout = _gauge("task_email_timeout_seconds", "Configured email timeout of the task.")
    delivery = HistogramMetricFamily(
        f"{PREFIX}_delivery_seconds",
        "Time from the SMTP server accepting the letter to the exporter seeing it in the mailbox.",
        labels=["device", "task"],
    )
    server_delivery = _gauge(
        "last_server_delivery_seconds",
        "Last probe: SMTP acceptance to the mailbox server's own arrival time (INTERNALDATE or Received).",
    )
    phase = _gauge("phase_duration_seconds", "Duration of each phase of the last probe.", ("phase",))
    late = _counter("late_arrivals", "Letters found after their probe had already failed (email timeout).")
    swept = _counter("letters_swept", "Signed leftover letters of earlier runs (older than 2 h) deleted.")
    skipped = _counter("probes_skipped", "Probes not started because max_in_flight letters were travelling.")
    in_flight = _gauge("probes_in_flight", "Probes of the task currently running (letters travelling).")
    last_success = _gauge("last_success_timestamp_seconds", "Unix time of the last successful round trip.")
    last_probe = _gauge("last_probe_timestamp_seconds", "Unix time the last probe finished.")
    dns = _counter("dns_lookups", "Host name lookups by leg and whether the answer came from a cache.",
                   ("leg", "cache"))
    cert = _gauge("tls_certificate_not_after_timestamp_seconds",
                  "Not-after time of the server certificate, per leg (smtp, mailbox), also over STARTTLS.", ("leg",))
    for s in stats:
        key = [s.device, s.task]
        last = s.last
        success.add_metric(key, 1.0 if last is not None and last.success else 0.0)
        probes.add_metric(key, s.probes)
        for r in Reason:
            failures.add_metric([*key, r.value], s.failures[r])
            reason.add_metric([*key, r.value], 1.0 if last is not None and last.reason is r else 0.0)
        for name in PHASES:
            failed_phase.add_metric([*key, name], 1.0 if last is not None and last.failed_phase == name else 0.0)
        interval.add_metric(key, s.interval)
        email_timeout.add_metric(key, s.email_timeout)
        delivery.add_metric(key, s.delivery.cumulative(), s.delivery.total)
        late.add_metric(key, s.late_arrivals)
        swept.add_metric(key, s.swept)
        skipped.add_metric(key, s.skipped)
        in_flight.add_metric(key, s.in_flight)
        if s.last_success is not None:
            last_success.add_metric(key, s.last_success)
        if last is not None:
            last_probe.add_metric(key, last.finished)
            if last.server_delivery_seconds is not None:
                server_delivery.add_metric(key, last.server_delivery_seconds)
            for name in PHASES:
                if name in last.phases:
                    phase.add_metric([*key, name], last.phases[name])
        for leg in LEGS:
            for hit in (True, False):
                dns.add_metric([*key, leg, "hit" if hit else "miss"], s.dns_lookups[(leg, hit)])
            if leg in s.certificate_not_after:
                cert.add_metric([*key, leg], s.certificate_not_after[leg])
    yield from (success, probes, failures, reason, failed_phase, interval, email_timeout, delivery,
                server_delivery, phase, late, swept, skipped, in_flight, last_success, last_probe, dns, cert)


def _self_metrics(reload: ReloadStatus) -> Iterator[Metric]:
    info = GaugeMetricFamily(f"{PREFIX}_exporter_build_info", "Exporter version and Python version; always 1.",
                             labels=["version", "python"])
    info.add_metric([__version__, platform.python_version()], 1.0)
    yield info
    yield GaugeMetricFamily(f"{PREFIX}_exporter_config_last_reload_successful",
                            "1 if the last configuration (re)load succeeded.", value=1.0 if reload.successful else 0.0)
    yield GaugeMetricFamily(f"{PREFIX}_exporter_config_last_reload_success_timestamp_seconds",
                            "Unix time of the last successful configuration (re)load.", value=reload.last_success)

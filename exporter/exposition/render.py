"""The Prometheus exposition: task metrics written out directly, and the exporter's own collector.

prometheus-client validates and escapes every label of every sample on every scrape: at 1,000 tasks
(about 64,000 samples) that took 0.8 s of the event loop. Here each task's lines are formatted once
per change of its statistics (TaskStats.generation), for both the text format and OpenMetrics.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.build import revision
from exporter.config.model import Labels
from exporter.exposition.stats import DELIVERY_BUCKETS, Histogram, ReloadStatus, TaskInfo, TaskStats
from exporter.letter.arrival import Arrival, Placement
from exporter.letter.hops import slowest
from exporter.probe.errors import Reason
from exporter.probe.phases import Leg, Phase
from exporter.probe.result import ProbeResult
from exporter.sharding import Shard

PREFIX = "mail_roundtrip"


class SelfCollector(Collector):
    """The exporter's own state (build, reload) for prometheus-client's registry, beside the process
    and platform collectors. Task metrics do not go through the registry: see render_tasks."""

    def __init__(self, reload: ReloadStatus, shard: Shard) -> None:
        self._reload = reload
        self._shard = shard
        # Asked once here, at start: revision() may run git, which must not happen on a scrape (the
        # scrape runs on the event loop the probes share).
        self._revision = revision()

    def collect(self) -> Iterator[Metric]:
        yield from _self_metrics(self._reload, self._revision)
        yield GaugeMetricFamily(
            f"{PREFIX}_exporter_shard_ordinal", "This exporter's shard (--shard).", value=self._shard.ordinal
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_exporter_total_shards",
            "How many shards share the config (--total-shards).",
            value=self._shard.total,
        )


@dataclass(frozen=True)
class _Family:
    name: str  # without _total for counters
    kind: str  # gauge, counter or histogram
    help: str


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def task_labels(device: str, task: str, labels: Labels = ()) -> str:
    """The labels every series of a task carries: device, task and the labels the config gives it."""
    own = "".join(f',{name}="{_escape(value)}"' for name, value in labels)
    return f'device="{_escape(device)}",task="{_escape(task)}"{own}'


_BUCKET_LABELS = (*(f'le="{float(bound)!r}"' for bound in DELIVERY_BUCKETS), 'le="+Inf"')


_REASON_LABELS = tuple((reason, f'reason="{reason.value}"') for reason in Reason)


_PHASE_LABELS = tuple((phase, f'phase="{phase}"') for phase in Phase)


_DNS_LABELS = tuple(
    ((leg, hit), f'leg="{leg}",cache="{"hit" if hit else "miss"}"') for leg in Leg for hit in (True, False)
)


def _families() -> dict[str, _Family]:
    def family(name: str, kind: str, doc: str) -> _Family:
        return _Family(f"{PREFIX}_{name}", kind, doc)

    return {
        f.name.removeprefix(PREFIX + "_"): f
        for f in (
            family(
                "task_info",
                "gauge",
                "The servers a task uses (protocol, SMTP host, incoming host, as configured); always 1.",
            ),
            family("probe_success", "gauge", "1 if the last finished round trip of the task succeeded, else 0."),
            family("probes", "counter", "Finished round-trip probes."),
            family("probe_failures", "counter", "Failed round-trip probes by failure reason."),
            family(
                "probe_failure_reason", "gauge", "Present (1) with the failure reason of the last probe if it failed."
            ),
            family(
                "probe_failure_phase",
                "gauge",
                "Present (1) with the phase the last probe failed in (smtp_* or mailbox_*) if it failed.",
            ),
            family("task_interval_seconds", "gauge", "Configured probe interval of the task (its device's interval)."),
            family("task_email_timeout_seconds", "gauge", "Configured email timeout of the task."),
            family(
                "delivery_seconds",
                "histogram",
                "Time from the SMTP server accepting the letter to the exporter seeing it in the mailbox.",
            ),
            family(
                "last_server_delivery_seconds",
                "gauge",
                "Last probe: SMTP acceptance to the mailbox server's own arrival time (INTERNALDATE or Received).",
            ),
            family("phase_duration_seconds", "gauge", "Duration of each phase of the last probe."),
            family("late_arrivals", "counter", "Letters found after their probe had already failed (email timeout)."),
            family("letters_swept", "counter", "Signed leftover letters of earlier runs (older than 2 h) deleted."),
            family("probes_skipped", "counter", "Probes not started because max_in_flight letters were travelling."),
            family("probes_in_flight", "gauge", "Probes of the task currently running (letters travelling)."),
            family("last_success_timestamp_seconds", "gauge", "Unix time of the last successful round trip."),
            family("last_probe_timestamp_seconds", "gauge", "Unix time the last probe finished."),
            family("probe_duration_seconds", "gauge", "How long the last probe took, start to finish."),
            family("dns_lookups", "counter", "Host name lookups by leg and whether the answer came from a cache."),
            family(
                "tls_certificate_not_after_timestamp_seconds",
                "gauge",
                "Not-after time of the server certificate, per leg (smtp, mailbox), also over STARTTLS.",
            ),
            family("tls_info", "gauge", "The last TLS session of each leg: its protocol version and cipher; always 1."),
            family(
                "letter_placement",
                "gauge",
                "Where the last letter found was: 1 for its folder (inbox: the configured mailbox; junk).",
            ),
            family(
                "authentication_result",
                "gauge",
                "The receiving side's Authentication-Results for the last letter found: 1 per method (spf, dkim, "
                "dmarc, arc) with its result; absent for a method the trusted header does not report.",
            ),
            family("spam_score", "gauge", "The spam score a filter gave the last letter found (rspamd, SpamAssassin)."),
            family("received_hops", "gauge", "How many Received header fields the last letter found carries."),
            family(
                "slowest_hop_seconds",
                "gauge",
                "The longest delay between two Received fields of the last letter found (by the servers' clocks).",
            ),
        )
    }


def _add_task(f: dict[str, list[str]], s: TaskStats) -> None:
    key, last, n = task_labels(s.device, s.task, s.labels), s.last, _number
    if s.info is not None:
        f["task_info"].append(f"{{{key},{_info_labels(s.info)}}} 1")
    f["probe_success"].append(f"{{{key}}} {n(1 if last is not None and last.success else 0)}")
    f["probes"].append(f"_total{{{key}}} {n(s.probes)}")
    for reason, label in _REASON_LABELS:
        f["probe_failures"].append(f"_total{{{key},{label}}} {n(s.failures[reason])}")
    # Only the last probe's reason and phase: a row of zeros per task would be a fifth of the scrape.
    if last is not None and last.reason is not None:
        f["probe_failure_reason"].append(f'{{{key},reason="{last.reason.value}"}} 1')
    if last is not None and last.failed_phase is not None:
        f["probe_failure_phase"].append(f'{{{key},phase="{last.failed_phase.value}"}} 1')
    f["task_interval_seconds"].append(f"{{{key}}} {n(s.interval)}")
    f["task_email_timeout_seconds"].append(f"{{{key}}} {n(s.email_timeout)}")
    _add_histogram(f["delivery_seconds"], key, s.delivery)
    f["late_arrivals"].append(f"_total{{{key}}} {n(s.late_arrivals)}")
    f["letters_swept"].append(f"_total{{{key}}} {n(s.swept)}")
    f["probes_skipped"].append(f"_total{{{key}}} {n(s.skipped)}")
    f["probes_in_flight"].append(f"{{{key}}} {n(s.in_flight)}")
    if s.last_success is not None:
        f["last_success_timestamp_seconds"].append(f"{{{key}}} {n(s.last_success)}")
    if last is not None:
        _add_last_probe(f, key, last)
    for (leg, hit), label in _DNS_LABELS:
        f["dns_lookups"].append(f"_total{{{key},{label}}} {n(s.dns_lookups[(leg, hit)])}")
    for leg, tls in s.tls.items():
        if tls.not_after is not None:
            f["tls_certificate_not_after_timestamp_seconds"].append(f'{{{key},leg="{leg}"}} {n(tls.not_after)}')
        version, cipher = _escape(tls.version), _escape(tls.cipher)
        f["tls_info"].append(f'{{{key},leg="{leg}",version="{version}",cipher="{cipher}"}} 1')
    if s.arrival is not None:
        _add_arrival(f, key, s.arrival)


def _add_arrival(f: dict[str, list[str]], key: str, arrival: Arrival) -> None:
    for placement in Placement:
        f["letter_placement"].append(f'{{{key},placement="{placement}"}} {1 if placement is arrival.placement else 0}')
    for method, result in arrival.authentication:
        f["authentication_result"].append(f'{{{key},method="{method}",result="{result}"}} 1')
    if arrival.spam_score is not None:
        f["spam_score"].append(f"{{{key}}} {_number(arrival.spam_score)}")
    f["received_hops"].append(f"{{{key}}} {len(arrival.hops)}")
    hop = slowest(arrival.hops)
    if hop is not None and hop.delay is not None:
        f["slowest_hop_seconds"].append(f"{{{key}}} {_number(hop.delay)}")


def _info_labels(info: TaskInfo) -> str:
    hosts = f'smtp_host="{_escape(info.smtp_host)}",incoming_host="{_escape(info.incoming_host)}"'
    return f'protocol="{info.protocol}",{hosts}'


def _add_last_probe(f: dict[str, list[str]], key: str, last: ProbeResult) -> None:
    f["last_probe_timestamp_seconds"].append(f"{{{key}}} {_number(last.finished)}")
    f["probe_duration_seconds"].append(f"{{{key}}} {_number(max(0.0, last.finished - last.started))}")
    if last.server_delivery_seconds is not None:
        f["last_server_delivery_seconds"].append(f"{{{key}}} {_number(last.server_delivery_seconds)}")
    for phase, label in _PHASE_LABELS:
        if phase in last.phases:
            f["phase_duration_seconds"].append(f"{{{key},{label}}} {_number(last.phases[phase])}")


def _add_histogram(lines: list[str], key: str, histogram: Histogram) -> None:
    for label, (_, count) in zip(_BUCKET_LABELS, histogram.cumulative(), strict=True):
        lines.append(f"_bucket{{{key},{label}}} {_number(count)}")
    lines.append(f"_count{{{key}}} {_number(sum(histogram.counts))}")
    lines.append(f"_sum{{{key}}} {_number(histogram.total)}")


FAMILIES = _families()


def task_chunks(s: TaskStats) -> tuple[str, ...]:
    """One task's sample lines, one string per family (in FAMILIES order)."""
    lines: dict[str, list[str]] = {key: [] for key in FAMILIES}
    _add_task(lines, s)
    return tuple("".join(f"{family.name}{line}\n" for line in lines[key]) for key, family in FAMILIES.items())


def task_text(s: TaskStats) -> tuple[str, ...]:
    """This task's exposition, rendered again only when its statistics changed: most tasks finish a
    probe once per interval, while Prometheus scrapes every few seconds."""
    if s.rendered is None or s.rendered[0] != s.generation:
        s.rendered = (s.generation, task_chunks(s))
    return s.rendered[1]


def render_tasks(stats: Iterable[TaskStats], openmetrics: bool) -> str:
    return "".join(_family_texts([task_text(s) for s in stats], openmetrics))


def _family_texts(tasks: list[tuple[str, ...]], openmetrics: bool) -> Iterator[str]:
    """Each family's text: its HELP and TYPE, then every task's lines of it."""
    for index, family in enumerate(FAMILIES.values()):
        # The text format names a counter family with its _total suffix; OpenMetrics without it.
        name = family.name + ("_total" if family.kind == "counter" and not openmetrics else "")
        help_text = family.help.replace("\\", "\\\\").replace("\n", "\\n")
        yield "".join([f"# HELP {name} {help_text}\n# TYPE {name} {family.kind}\n", *(task[index] for task in tasks)])


@dataclass(frozen=True)
class Exposition:
    """One scrape's text as the tasks' cached pieces (taken when it was rendered), written out or
    compressed a family at a time: at 1,000 tasks no 6.5 MB string is made for a compressed answer
    (three such copies were made before, and glibc kept the heap they grew: 110 -> 126 MB)."""

    tasks: list[tuple[str, ...]]
    openmetrics: bool
    tail: bytes  # the registry's samples (and OpenMetrics' # EOF)

    @classmethod
    def of(cls, stats: Iterable[TaskStats], openmetrics: bool, tail: bytes) -> Exposition:
        return cls([task_text(s) for s in stats], openmetrics, tail)

    def parts(self) -> Iterator[bytes]:
        for text in _family_texts(self.tasks, self.openmetrics):
            yield text.encode()
        yield self.tail


def _self_metrics(reload: ReloadStatus, source_revision: str) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        f"{PREFIX}_exporter_build_info",
        "Exporter version, source revision (git commit or unknown) and Python version; always 1.",
        labels=["version", "revision", "python"],
    )
    info.add_metric([__version__, source_revision, platform.python_version()], 1.0)
    yield info
    yield GaugeMetricFamily(
        f"{PREFIX}_exporter_config_last_reload_successful",
        "1 if the last configuration (re)load succeeded.",
        value=1.0 if reload.successful else 0.0,
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_exporter_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration (re)load.",
        value=reload.last_success,
    )

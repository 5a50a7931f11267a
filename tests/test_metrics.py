"""The directly written exposition parses in both formats and says what the statistics say."""

from __future__ import annotations

import gzip
import time

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from exporter.exposition.render import Exposition, render_tasks
from exporter.exposition.stats import TaskStats
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from exporter.probe.result import LegResult, ProbeResult
from exporter.web.scrape import _Rendered


def stats() -> list[TaskStats]:
    now = time.time()
    ok = TaskStats("dev-1", 'odd "task"\\name', 60.0, 600.0)
    ok.record(
        ProbeResult(
            device="dev-1",
            task="t",
            token="x",
            started=now - 1,
            success=True,
            phases=dict.fromkeys(Phase, 0.25),
            smtp=LegResult(dns_cached=True),
            mailbox=LegResult(dns_cached=False),
            delivery_seconds=1.5,
            accepted_wall=now,
            finished=now,
        )
    )
    failed = TaskStats("dev-1", "failing", 60.0, 600.0)
    failed.record(
        ProbeResult(
            device="dev-1",
            task="failing",
            token="y",
            started=now - 1,
            reason=Reason.AUTH,
            failed_phase=Phase.MAILBOX_LOGIN,
            finished=now,
        )
    )
    return [ok, failed]


def samples(families: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in families for s in family.samples}  # type: ignore[attr-defined]


def test_text_and_openmetrics_agree() -> None:
    both = stats()
    text = samples(parse_text(render_tasks(both, openmetrics=False)))
    openmetrics = samples(parse_openmetrics(render_tasks(both, openmetrics=True) + "# EOF\n"))  # type: ignore[no-untyped-call]
    assert text == openmetrics
    odd = 'odd "task"\\name'
    assert text[key("probe_success", task=odd)] == 1.0
    assert text[key("probe_success", task="failing")] == 0.0
    assert text[key("probe_failures_total", task="failing", reason="auth")] == 1.0
    assert text[key("probe_failure_phase", task="failing", phase="mailbox_login")] == 1.0
    assert text[key("delivery_seconds_bucket", task=odd, le="1.0")] == 0.0
    assert text[key("delivery_seconds_bucket", task=odd, le="2.5")] == 1.0
    assert text[key("delivery_seconds_count", task=odd)] == 1.0
    assert text[key("dns_lookups_total", task=odd, leg="smtp", cache="hit")] == 1.0


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return f"mail_roundtrip_{name}", tuple(sorted({"device": "dev-1", **labels}.items()))


def test_a_changed_task_is_rendered_again() -> None:
    task = TaskStats("d", "t", 60.0, 600.0)
    assert 'mail_roundtrip_probes_in_flight{device="d",task="t"} 0\n' in render_tasks([task], openmetrics=False)
    task.in_flight += 1
    assert 'mail_roundtrip_probes_in_flight{device="d",task="t"} 1\n' in render_tasks([task], openmetrics=False)
    task.record(ProbeResult(device="d", task="t", token="x", started=0.0, success=True, finished=2.0))
    assert 'mail_roundtrip_last_probe_timestamp_seconds{device="d",task="t"} 2.0\n' in render_tasks([task], False)


def test_thousand_tasks_render() -> None:
    many = [TaskStats("d", f"task-{i}", 60.0, 600.0) for i in range(1000)]
    started = time.perf_counter()
    body = render_tasks(many, openmetrics=False)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    assert render_tasks(many, openmetrics=False) == body
    warm = time.perf_counter() - started
    print(
        f"\n1,000 tasks: {len(body.splitlines())} lines, {len(body) / 1e6:.1f} MB, "
        f"first render {cold * 1000:.0f} ms, unchanged tasks {warm * 1000:.1f} ms"
    )
    assert sum(1 for _ in parse_text(body)) > 10


def test_a_shared_render_gives_the_same_text_plain_and_compressed() -> None:
    """/metrics compresses the exposition a family at a time, never as one string: the compressed
    answer must still be the plain one, byte for byte (the registry's text last)."""
    both = stats()
    rendered = _Rendered((), 0.0, Exposition.of(both, False, b"# registry\n"))
    plain = rendered.body(gzip=False)
    assert plain == render_tasks(both, openmetrics=False).encode() + b"# registry\n"
    assert gzip.decompress(rendered.body(gzip=True)) == plain

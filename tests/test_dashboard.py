"""Lint of the shipped Grafana dashboard and Prometheus rules, without any server.

Every metric name the dashboard and the rules use must be one the exporter really exports: the names come
from rendering the exporter's own collector, not from a hand-kept list. The PromQL helpers here are also
used by tests/test_alerting.py, which runs the same expressions on a real Prometheus.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.exposition.render import SelfCollector, render_tasks
from exporter.exposition.stats import ReloadStatus, TaskInfo, TaskStats
from exporter.letter.arrival import Arrival, Placement
from exporter.letter.authresults import Method
from exporter.letter.hops import Hop
from exporter.net.tls import TLSFacts
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from exporter.probe.result import LegResult, ProbeResult
from exporter.sharding import Shard

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "mail-roundtrip.json"
RULES = ROOT / "prometheus" / "rules.yml"
PROVISIONING = ROOT / "grafana" / "provisioning"

# Series Prometheus makes itself for every target; the dashboard and alerts may use them too.
PROMETHEUS_SERIES = {"up"}
# Labels Prometheus adds to every scraped series (job, instance) and the histogram's bucket label.
PROMETHEUS_LABELS = {"job", "instance", "le", "__name__"}
UNITS_EXPECTED = {"s", "percentunit", "d"}


# --- what the exporter exports ----------------------------------------------------------------------------


# The labels the shipped rules group by (rules.params.yml group_labels): a config gives them to tasks.
GROUP_LABELS = tuple(
    (name, "x") for name in yaml.safe_load((ROOT / "prometheus" / "rules.params.yml").read_text())["group_labels"]
)


def _probe_result() -> ProbeResult:
    """A finished probe that touched everything, so that every optional series is present."""
    now = time.time()
    return ProbeResult(
        device="d",
        task="t",
        token="mrt-0-0-0",
        started=now - 2,
        success=True,
        phases=dict.fromkeys(Phase, 0.1),
        smtp=LegResult(dns_cached=True, tls=TLSFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", now + 86400)),
        mailbox=LegResult(dns_cached=False, tls=TLSFacts("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", now + 86400)),
        delivery_seconds=1.5,
        server_delivery_seconds=1.0,
        accepted_wall=now - 1,
        finished=now,
        arrival=Arrival(
            Placement.INBOX,
            ((Method.SPF, "pass"), (Method.DKIM, "pass"), (Method.DMARC, "pass")),
            spam_score=-0.1,
            hops=(
                Hop("submit.test", "[127.0.0.1]", "ESMTPSA", now - 2, None),
                Hop("mx.test", "submit.test", "ESMTPS", now - 1, 1.0),
            ),
        ),
    )


def scrape_text(stats: TaskStats) -> str:
    """What /metrics serves for this task and a failing one (text format), without the process metrics."""
    failing = TaskStats("d", "failing", 60.0, 600.0)
    failing.record(
        ProbeResult(
            device="d",
            task="failing",
            token="x",
            started=0.0,
            reason=Reason.AUTH,
            failed_phase=Phase.SMTP_AUTH,
            finished=1.0,
        )
    )
    registry = CollectorRegistry()
    registry.register(SelfCollector(ReloadStatus(), Shard()))
    return render_tasks([stats, failing], openmetrics=False) + generate_latest(registry).decode()


def exported() -> tuple[set[str], set[str]]:
    """(sample names, label names) the exporter's collector produces, rendered as Prometheus scrapes it."""
    stats = TaskStats("d", "t", 60.0, 600.0, TaskInfo("imap", "smtp.example.test", "imap.example.test"), GROUP_LABELS)
    stats.record(_probe_result())
    text = scrape_text(stats)
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names.add(sample.name)
            labels.update(sample.labels)
    return names, labels


@pytest.fixture(scope="module")
def exporter_names() -> set[str]:
    return exported()[0]


@pytest.fixture(scope="module")
def exporter_labels() -> set[str]:
    return exported()[1]


def test_the_fake_source_fills_every_metric_family() -> None:
    """Guards the fixture: a family without samples would make the name checks below too strict or too lenient."""
    stats = TaskStats("d", "t", 60.0, 600.0, TaskInfo("imap", "smtp.example.test", "imap.example.test"), GROUP_LABELS)
    stats.record(_probe_result())
    empty = [f.name for f in text_string_to_metric_families(scrape_text(stats)) if not f.samples]
    assert not empty, f"_probe_result() leaves these families empty: {empty}"


# --- PromQL, roughly: enough to find metric and label names -------------------------------------------------

KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
    "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression mentions. Grafana variables must be substituted first."""
    labels: set[str] = set()
    text = _STRING.sub('""', expr)
    for match in _LABEL_LIST.finditer(text):
        labels.update(name.strip() for name in match.group(2).split(",") if name.strip())
    text = _LABEL_LIST.sub(" ", text)
    for match in _MATCHERS.finditer(text):
        labels.update(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(1)))
    text = _RANGE.sub(" ", _MATCHERS.sub(" ", text))
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(0)
        is_call = re.match(r"\s*\(", text[match.end() :]) is not None
        if not is_call and name.lower() not in KEYWORDS:
            names.add(name)
    return names, labels


def test_promql_names_helper() -> None:
    names, labels = promql_names(
        'histogram_quantile(0.95, sum by (device, le) (rate(x_bucket{task=~"a|b", le!="1"}[5m]))) '
        "/ on (job) group_left (version) y_total > 1e-3 and z unless sum(w) without (reason)"
    )
    assert names == {"x_bucket", "y_total", "z", "w"}
    assert labels == {"device", "le", "task", "job", "version", "reason"}


# --- the dashboard --------------------------------------------------------------------------------------------

# Values the test substitutes for Grafana's variables (test_alerting runs these on a real Prometheus).
VARIABLES = {
    "$__rate_interval": "15s",
    "$__interval": "5s",
    "$__range": "1m",
    "$window": "1m",
    "$job": ".*",  # Grafana's "All"
    "$instance": ".*",
    "$site": ".*",
}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} (longest names first, so $__range does not eat $__range_s)."""
    for name in sorted(values, key=len, reverse=True):
        bare = name.lstrip("$")
        expr = expr.replace("${" + bare + "}", values[name]).replace(name, values[name])
    # label_replace's "$1" is a regex group for Prometheus, not a dashboard variable.
    assert "$" not in re.sub(r'"\$[0-9]+"', '""', expr), f"unsubstituted variable in {expr}"
    return expr


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows hold their panels


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    return [(p["title"], t) for p in data_panels(dashboard) for t in p["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"}


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield value
            else:
                yield from _datasources(value)
    elif isinstance(node, list):
        for item in node:
            yield from _datasources(item)


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_is_current_grafana_json(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "an id would clash on import; Grafana assigns it"
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in all_panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    titles = [p["title"] for p in data_panels(dashboard)]
    assert len(titles) == len(set(titles)), titles


def test_datasource_is_a_variable_everywhere(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    found = list(_datasources(dashboard))
    assert found
    for datasource in found:
        assert datasource == {"type": "prometheus", "uid": "${datasource}"}, datasource
    for panel in data_panels(dashboard):
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t.get("datasource") == panel["datasource"] for t in panel["targets"]), panel["title"]


def test_device_and_task_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    scope = ("job", "instance", "site", "device", "task")  # several exporters, locations, devices, tasks
    for name in scope:
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"] and var["allValue"] == ".*"
        assert re.fullmatch(rf"label_values\(mail_roundtrip_probe_success(\{{.*\}})?, {name}\)", var["query"])
    assert variables["window"]["type"] == "interval"
    # every panel query filters by all of them (the exporter's own metrics by job and instance)
    for title, target in dashboard_queries(dashboard):
        if "mail_roundtrip_" in target["expr"]:
            names = scope[:2] if "exporter_" in target["expr"] else scope
            for name in names:
                assert f'{name}=~"${name}"' in target["expr"], (title, target["expr"])
        # per-task panels keep exporters apart: a max over replicas would hide a failing one
        assert "by (device, task" not in target["expr"], (title, target["expr"])
    assert any(link["url"] == "http://${instance}/" for link in dashboard["links"])  # the status page


def test_every_panel_has_title_description_unit_and_queries(dashboard: dict[str, Any]) -> None:
    units = set()
    for panel in data_panels(dashboard):
        title = panel["title"]
        assert title.strip(), panel
        assert len(panel.get("description", "")) >= 30, f"{title}: description missing or too short"
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit, f"{title}: no fieldConfig.defaults.unit"
        units.add(unit)
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            legend = target.get("legendFormat", "")
            if panel["type"] in ("timeseries", "state-timeline", "bargauge"):
                assert "{{" in legend, f"{title}: unreadable legend {legend!r}"
        if panel["type"] == "heatmap":
            assert panel["options"]["yAxis"]["unit"] == "s" and panel["options"]["calculate"] is False
            assert all(t["format"] == "heatmap" for t in panel["targets"])
    assert units >= UNITS_EXPECTED, units


def test_dashboard_uses_only_exported_metrics_and_labels(
    dashboard: dict[str, Any], exporter_names: set[str], exporter_labels: set[str]
) -> None:
    allowed_labels = exporter_labels | PROMETHEUS_LABELS
    used: set[str] = set()
    for title, target in dashboard_queries(dashboard):
        expr = substitute(target["expr"], {**VARIABLES, "$device": ".*", "$task": ".*"})
        names, labels = promql_names(expr)
        assert names, (title, expr)
        assert names <= exporter_names | PROMETHEUS_SERIES, (title, names - exporter_names)
        made = set(re.findall(r'"(\w+)",\s*"\$\d+"', expr))  # label_replace(v, "made", "$1", "source", re)
        assert labels <= allowed_labels | made, (title, labels - allowed_labels)
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
        assert legend_labels <= allowed_labels, (title, legend_labels)
        used |= names
    for query in variable_queries(dashboard).values():
        match = re.fullmatch(r"label_values\((\w+)(?:\{.*\})?, (\w+)\)", query)
        assert match, query
        metric, label = match.groups()
        assert metric in exporter_names and label in exporter_labels | PROMETHEUS_LABELS, query
    # The panels the issue asks for: every metric family of a task shows up somewhere.
    for needed in (
        "mail_roundtrip_probe_success",
        "mail_roundtrip_probe_failure_reason",
        "mail_roundtrip_delivery_seconds_bucket",
        "mail_roundtrip_phase_duration_seconds",
        "mail_roundtrip_probe_failures_total",
        "mail_roundtrip_late_arrivals_total",
        "mail_roundtrip_letters_swept_total",
        "mail_roundtrip_probes_in_flight",
        "mail_roundtrip_probes_skipped_total",
        "mail_roundtrip_tls_certificate_not_after_timestamp_seconds",
        "mail_roundtrip_dns_lookups_total",
        "mail_roundtrip_letter_placement",
        "mail_roundtrip_authentication_result",
        "mail_roundtrip_spam_score",
        "mail_roundtrip_received_hops",
        "mail_roundtrip_slowest_hop_seconds",
    ):
        assert needed in used, needed


def test_failure_reasons_in_descriptions_are_real(dashboard: dict[str, Any]) -> None:
    reasons = {r.value for r in Reason}
    text = " ".join(p["description"] for p in data_panels(dashboard))
    for word in re.findall(r"\b([a-z_]+):", text):
        if word in {
            "auth",
            "connect",
            "tls",
            "delivery_timeout",
            "smtp_rejected",
            "junk",
            "dns",
            "mailbox",
            "timeout",
            "protocol",
        }:
            assert word in reasons


# --- the rules ------------------------------------------------------------------------------------------------


def load_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def test_rules_use_only_exported_metrics_and_labels(exporter_names: set[str], exporter_labels: set[str]) -> None:
    rules = load_rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    for rule in rules:
        names, labels = promql_names(rule["expr"])
        assert names, rule["expr"]
        assert names <= exporter_names | PROMETHEUS_SERIES | recorded, names - exporter_names
        assert labels <= exporter_labels | PROMETHEUS_LABELS, labels
    # the description templates query the exporter too
    for rule in rules:
        for query in re.findall(r'printf "([^"]*\{[^"]*)"', rule.get("annotations", {}).get("description", "")):
            names, labels = promql_names(query.replace("%q", '"x"'))
            assert names <= exporter_names and labels <= exporter_labels | PROMETHEUS_LABELS, query


# --- provisioning examples ------------------------------------------------------------------------------------


def test_provisioning_examples() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http")
    dashboards = yaml.safe_load((PROVISIONING / "dashboards" / "mail-roundtrip.yml").read_text())
    assert dashboards["apiVersion"] == 1
    (provider,) = dashboards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]

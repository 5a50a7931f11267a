"""The shipped Prometheus rules and Grafana dashboard, proven with promtool and on a real Prometheus.

* promtool checks the rules and runs their unit tests (prometheus/tests/*.yml); every alert there has a
  case where it fires and one where it stays quiet.
* A real Prometheus scrapes the exporter while it probes the real Postfix+Dovecot rig: every dashboard
  query (variables substituted) and every recording rule returns data. One task has a wrong password,
  so that failure panels have a reason to show.
* Stopping the rig's SMTP server makes MailRoundTripFailing fire for a task that was fine, and the alert
  reaches a real Alertmanager. The test copy of the rules has short `for:`; the shipped file stays as is.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.rig import MailRig, RigError, free_ports, wait_for
from tests.tasks import task_dict
from tests.test_dashboard import (
    ROOT,
    RULES,
    VARIABLES,
    dashboard_queries,
    load_dashboard,
    load_rules,
    substitute,
    variable_queries,
)

PROMETHEUS_DIR = ROOT / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
JOB = "mail-roundtrip"
USERS = ("al-a", "al-b")
DEVICE = "al"
TASKS = ("imap", "pop3", "wrong-password")


def tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' or '.join(names)} not installed (scripts/install-deps installs it)")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=ROOT, timeout=60)


# --- promtool / amtool ----------------------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS
    result = run(tool("promtool"), "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout, result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in load_rules() if "alert" in rule}
    assert alerts - fires == set(), "alerts without a test where they fire"
    assert alerts - quiet == set(), "alerts without a test where they stay quiet"
    recorded = {rule["record"] for rule in load_rules() if "record" in rule}
    tested = {  # the metric a test's expression selects (with or without a {label} selector)
        re.split(r"[{\s]", check["expr"], maxsplit=1)[0]
        for path in UNIT_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for check in case.get("promql_expr_test", [])
    }
    assert recorded <= tested, recorded - tested


def test_the_shipped_rules_are_what_their_parameters_render() -> None:
    result = run(sys.executable, str(ROOT / "scripts" / "render_rules.py"), "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generator_follows_its_parameters(tmp_path: Path) -> None:
    params = yaml.safe_load((PROMETHEUS_DIR / "rules.params.yml").read_text())
    params.update(job="mail-eu", group_labels=["region"], slo_target=0.99, certificate_warning_days=30)
    (tmp_path / "params.yml").write_text(yaml.safe_dump(params))
    out = tmp_path / "rules.yml"
    result = run(
        sys.executable,
        str(ROOT / "scripts" / "render_rules.py"),
        "--params",
        str(tmp_path / "params.yml"),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    rules = [rule for group in yaml.safe_load(out.read_text())["groups"] for rule in group["rules"]]
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert {"MailRoundTripRegionFailing", "MailRoundTripRegionErrorBudgetBurn"} <= alerts
    assert not any("Site" in name for name in alerts)
    text = out.read_text()
    assert 'up{job="mail-eu"}' in text and "> 0.144" in text and "< 30 > 0" in text  # 14.4 x 1 %; 30 days
    assert run(tool("promtool"), "check", "rules", str(out)).returncode == 0


def test_every_alert_has_a_runbook_section_and_a_dashboard() -> None:
    headings = {
        line[4:].strip().lower()
        for line in (ROOT / "docs" / "runbook.md").read_text().splitlines()
        if line.startswith("### ")
    }
    for rule in (r for r in load_rules() if "alert" in r):
        annotations = rule["annotations"]
        assert annotations["runbook_url"].endswith("runbook.md#" + rule["alert"].lower()), rule["alert"]
        assert rule["alert"].lower() in headings, f"docs/runbook.md has no section {rule['alert']}"
        assert annotations["dashboard_url"].startswith("http"), rule["alert"]


def test_example_prometheus_and_alertmanager_configs_are_valid() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = run(tool("amtool"), "check-config", str(PROMETHEUS_DIR / "alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_realistic_and_routed() -> None:
    rules = load_rules()
    alertmanager = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text())
    routed = {m for route in alertmanager["route"]["routes"] for m in route.get("matchers", [])}
    prometheus = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert [job["job_name"] for job in prometheus["scrape_configs"]] == [JOB]
    assert prometheus["scrape_configs"][0]["scrape_interval"] == "30s"
    assert prometheus["rule_files"] == ["rules.yml"]
    for rule in (r for r in rules if "alert" in r):
        name = rule["alert"]
        assert _seconds(rule["for"]) >= 300, f"{name}: for: {rule['for']} is too short to be realistic"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert f'severity="{rule["labels"]["severity"]}"' in routed, name
        assert rule["annotations"]["summary"] and "Check first" in rule["annotations"]["description"], name
        if "up{" in rule["expr"]:
            assert f'job="{JOB}"' in rule["expr"], name


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(duration[:-1]) * units[duration[-1]]


# --- a real Prometheus and Alertmanager -----------------------------------------------------------------------


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: str) -> Any:
        query = "?" + urllib.parse.urlencode(params) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=5) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise RigError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"----- {self.name} log -----\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Stack:
    exporter: Server
    prometheus: Server
    alertmanager: Server
    servers: list[Server] = field(default_factory=list)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.prometheus.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", answer
        result = answer["data"]["result"]
        if answer["data"]["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def am_alerts(self) -> list[dict[str, Any]]:
        return list(self.alertmanager.get("/api/v2/alerts"))

    def logs(self) -> str:
        return "\n".join(server.tail() for server in self.servers)


def start(name: str, args: list[str], url: str, tmp: Path) -> Server:
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    server = Server(name, url, process, log)
    try:
        wait_for(server.ready, 30, f"{name} to be ready", server.tail)
    except BaseException:
        server.stop()
        raise
    return server


def exporter_config(rig: MailRig) -> dict[str, Any]:
    wrong = task_dict(rig, USERS[0], name="wrong-password")
    wrong["smtp"]["password"] = "not-the-password"
    return {
        "devices": [
            {
                "name": DEVICE,
                "interval": "1s",
                "labels": {"site": "lab", "path": "submission"},  # the site and path rules need data too
                "tasks": [
                    task_dict(rig, USERS[0], name="imap"),
                    task_dict(rig, USERS[1], name="pop3", smtp="submissions-tls-auth", mailbox="pop3s"),
                    wrong,
                ],
            }
        ]
    }


# Absent until Prometheus scraped its target once: with `for: 1s` it would fire at every start.
STARTUP_ALERTS = frozenset({"MailRoundTripExporterAbsent"})


def short_for_rules(tmp: Path) -> Path:
    """The shipped rules with every `for:` cut to 1s, so that alerts fire within the test (but those
    that are true only while Prometheus starts)."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule and rule.get("alert") not in STARTUP_ALERTS:
                rule["for"] = "1s"
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def prometheus_config(tmp: Path, exporter_port: int, alertmanager_port: int) -> Path:
    """The shipped prometheus.yml, pointed at the test's servers and scraping every second."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(short_for_rules(tmp))]
    config["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s", static_configs=[{"targets": [f"127.0.0.1:{exporter_port}"]}])
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def stack(rig: MailRig, tmp_path: Path) -> Iterator[Stack]:
    rig.add_users(USERS)
    exporter_port, prometheus_port, alertmanager_port = free_ports(3)
    config = tmp_path / "exporter.yml"
    config.write_text(yaml.safe_dump(exporter_config(rig)))
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(yaml.safe_dump({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}))
    servers: list[Server] = []
    try:
        servers.append(
            start(
                "exporter",
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    "--config.file",
                    str(config),
                    "--signing.key-file",
                    str(tmp_path / "signing.key"),
                    "--web.listen-address",
                    f"127.0.0.1:{exporter_port}",
                ],
                f"http://127.0.0.1:{exporter_port}",
                tmp_path,
            )
        )
        servers.append(
            start(
                "alertmanager",
                [
                    tool("prometheus-alertmanager", "alertmanager"),
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                    "--cluster.listen-address=",
                ],
                f"http://127.0.0.1:{alertmanager_port}",
                tmp_path,
            )
        )
        servers.append(
            start(
                "prometheus",
                [
                    tool("prometheus"),
                    f"--config.file={prometheus_config(tmp_path, exporter_port, alertmanager_port)}",
                    f"--storage.tsdb.path={tmp_path / 'prometheus'}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                f"http://127.0.0.1:{prometheus_port}",
                tmp_path,
            )
        )
        yield Stack(exporter=servers[0], alertmanager=servers[1], prometheus=servers[2], servers=servers)
    finally:
        for server in reversed(servers):
            server.stop()


def _finite(result: list[dict[str, Any]]) -> bool:
    """Some sample is a number: NaN (e.g. a quantile of nothing) shows as a gap in Grafana."""
    for series in result:
        values = [series["value"]] if "value" in series else series.get("values", [])
        if any(math.isfinite(float(v)) for _, v in values):
            return True
    return False


def _all_answer(stack: Stack, queries: dict[str, str]) -> dict[str, list[dict[str, Any]]] | None:
    results = {}
    for what, expr in queries.items():
        result = stack.query(expr)
        if not _finite(result):
            return None
        results[what] = result
    return results


def _missing(stack: Stack, queries: dict[str, str]) -> str:
    return "\n".join(f"  {what}: {expr}" for what, expr in queries.items() if not _finite(stack.query(expr)))


def _alert(stack: Stack, task: str) -> dict[str, Any] | None:
    for alert in stack.am_alerts():
        labels = alert["labels"]
        if (labels.get("alertname"), labels.get("device"), labels.get("task")) == (
            "MailRoundTripFailing",
            DEVICE,
            task,
        ):
            return alert
    return None


NEEDS_A_FILTER = ("mail_roundtrip_authentication_result", "mail_roundtrip_spam_score")


def test_dashboard_and_rules_on_real_prometheus(rig: MailRig, stack: Stack) -> None:
    dashboard = load_dashboard()
    values = {**VARIABLES, "$device": DEVICE, "$task": "(" + "|".join(TASKS) + ")"}  # Grafana's multi-value form
    targets = {f"{title} [{t['refId']}]": t for title, t in dashboard_queries(dashboard)}
    queries = {what: substitute(t["expr"], values) for what, t in targets.items()}
    # This rig has no filter that writes Authentication-Results or a spam score (rspamd on the path of
    # tests/test_mailpath_probe.py does, and that test proves those series and their alert).
    queries = {what: expr for what, expr in queries.items() if not any(name in expr for name in NEEDS_A_FILTER)}
    for rule in load_rules():
        if "record" in rule:
            queries[f"recording rule {rule['record']} (expr)"] = rule["expr"]
            queries[f"recording rule {rule['record']} (recorded)"] = rule["record"]
    try:
        results = wait_for(
            lambda: _all_answer(stack, queries),
            40,
            "every dashboard query and recording rule to return data",
            lambda: "still no data:\n" + _missing(stack, queries) + "\n" + stack.logs(),
        )

        # Legends name labels that the results really have ({{device}}/{{task}} must not print as empty).
        for what, target in targets.items():
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")) if what in queries else ():
                assert all(label in series["metric"] for series in results[what]), (what, label, results[what][:1])

        # The variables list the jobs, exporters, sites, devices and tasks (Grafana runs label_values via
        # the series API).
        expected = {
            "job": {JOB},
            "instance": {stack.exporter.url.removeprefix("http://")},
            "site": {"lab"},
            "device": {DEVICE},
            "task": set(TASKS),
        }
        for name, query in variable_queries(dashboard).items():
            metric = substitute(query.split("(", 1)[1].rsplit(",", 1)[0], {**VARIABLES, "$device": ".*"})
            label = query.rsplit(",", 1)[1].strip(" )")
            answer = stack.prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
            assert set(answer["data"]) == expected[name], (name, answer)

        # The wrong password fails from the start: its alert reaches Alertmanager, saying what to check.
        alert = wait_for(lambda: _alert(stack, "wrong-password"), 30, "the wrong-password alert in Alertmanager")
        assert "reason auth" in alert["annotations"]["description"], alert
        assert "password" in alert["annotations"]["description"], alert
        assert alert["labels"]["severity"] == "warning"  # a ticket: the task's group pages (test_paging)

        # A task that works stays quiet (never even pending since Prometheus started) ...
        success = f'mail_roundtrip_probe_success{{device="{DEVICE}", task="imap"}} == 1'
        wait_for(lambda: stack.query(success), 20, "the imap task to succeed")
        assert not stack.query('ALERTS{alertname="MailRoundTripFailing", task="imap"}[10m]')
        assert _alert(stack, "imap") is None

        # ... until its SMTP server stops: the alert's expression becomes true, it fires, Alertmanager has it.
        failing = next(r["expr"] for r in load_rules() if r.get("alert") == "MailRoundTripFailing")
        rig.stop_smtp()
        try:
            wait_for(
                lambda: [s for s in stack.query(failing) if s["metric"].get("task") == "imap"],
                30,
                "MailRoundTripFailing's expression to be true for imap",
            )
            wait_for(
                lambda: stack.query('ALERTS{alertname="MailRoundTripFailing", task="imap", alertstate="firing"}'),
                30,
                "MailRoundTripFailing to fire for imap",
            )
            alert = wait_for(lambda: _connect_alert(stack), 30, "the imap alert (reason connect) in Alertmanager")
            assert alert["labels"]["severity"] == "warning" and alert["labels"]["job"] == "mail-roundtrip"
        finally:
            rig.start_smtp()

        # ... and once the server is back, the expression is false again.
        wait_for(
            lambda: not [s for s in stack.query(failing) if s["metric"].get("task") == "imap"],
            30,
            "MailRoundTripFailing's expression to be false for imap again",
        )
    except (AssertionError, RigError) as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from exc


def _connect_alert(stack: Stack) -> dict[str, Any] | None:
    alert = _alert(stack, "imap")
    if alert is not None and "reason connect" in alert["annotations"]["description"]:
        return alert
    return None

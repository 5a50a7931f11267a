#!/usr/bin/env python3
"""Render prometheus/rules.yml from prometheus/rules.params.yml (job, group labels, thresholds, SLO).

    .venv/bin/python scripts/render_rules.py                   # write prometheus/rules.yml
    .venv/bin/python scripts/render_rules.py --check           # exit 1 if rules.yml is not what the params give
    .venv/bin/python scripts/render_rules.py --params P --out F

The rendered file is committed and tested (promtool check, promtool unit tests, a real Prometheus and
Alertmanager); the parameters are the knobs a monitoring mixin would have. Alert texts live here.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "prometheus" / "rules.params.yml"
RULES = ROOT / "prometheus" / "rules.yml"
# The burn-rate windows of the Google SRE workbook ("Alerting on SLOs", multiwindow, multi-burn-rate):
# (long window, short window, burn rate, severity). 14.4x over 1 h spends 2 % of a 30-day budget.
BURN_WINDOWS = (("1h", "5m", 14.4, "critical"), ("6h", "30m", 6.0, "critical"), ("1d", "2h", 3.0, "warning"))
SLOW_BURN = ("3d", "6h", 1.0, "warning")
TASK = "job, instance, device, task"

Rule = dict[str, Any]


@dataclass(frozen=True)
class Params:
    job: str
    group_labels: tuple[str, ...]
    group_failing_ratio: float
    failing_for: str
    slo_target: float
    certificate_warning_days: int
    runbook_url: str
    dashboard_url: str

    @classmethod
    def load(cls, path: Path) -> Params:
        data = yaml.safe_load(path.read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise SystemExit(f"{path}: unknown parameter(s) {', '.join(sorted(unknown))}")
        params = cls(**{**data, "group_labels": tuple(data["group_labels"])})
        if not 0 < params.slo_target < 1 or not 0 < params.group_failing_ratio < 1:
            raise SystemExit(f"{path}: slo_target and group_failing_ratio must be between 0 and 1")
        if not all(re.fullmatch(r"[a-z_][a-z0-9_]*", label) for label in params.group_labels):
            raise SystemExit(f"{path}: group_labels must be label names")
        return params

    @property
    def budget(self) -> float:
        return 1 - self.slo_target


def text(words: str) -> str:
    """A description written across lines in this file, as one line (Alertmanager wraps it)."""
    return " ".join(words.split())


def annotate(rule: Rule, params: Params, summary: str, description: str) -> Rule:
    anchor = rule["alert"].lower()
    rule["annotations"] = {
        "summary": summary,
        "description": text(description),
        "runbook_url": f"{params.runbook_url}#{anchor}",
        "dashboard_url": params.dashboard_url,
    }
    return rule


def alert(name: str, expr: str, duration: str, severity: str, **labels: str) -> Rule:
    return {"alert": name, "expr": expr, "for": duration, "labels": {"severity": severity, **labels}}


# --- recording rules -----------------------------------------------------------------------------------------


def task_recordings() -> list[Rule]:
    return [
        {
            "record": "device_task:mail_roundtrip_probe_success:ratio_1h",
            "expr": "clamp(\n  1 - (\n    sum without (reason) (increase(mail_roundtrip_probe_failures_total[1h]))\n"
            "    / (increase(mail_roundtrip_probes_total[1h]) > 0)\n  ),\n  0, 1\n)\n",
        },
        {
            "record": "device_task:mail_roundtrip_delivery_seconds:p95_30m",
            "expr": "histogram_quantile(0.95, rate(mail_roundtrip_delivery_seconds_bucket[30m]))",
        },
        {
            # Every task that finished a probe, with its labels and the servers it uses (task_info).
            "record": "device_task:mail_roundtrip_probe_failing:bool",
            # 1 failing, 0 not; absent until a task finished a probe (after a restart success is 0).
            "expr": f"(mail_roundtrip_probe_success == bool 0)\n"
            f"* on ({TASK}) group_left (protocol, smtp_host, incoming_host) mail_roundtrip_task_info\n"
            f"and on ({TASK}) mail_roundtrip_probes_total > 0\n",
        },
    ]


def group_recordings(params: Params, group: str) -> list[Rule]:
    """A group's share of failing tasks, and its error ratio over every burn-rate window."""
    job = f'job="{params.job}"'
    selector = f'{{{job},{group}!=""}}'
    rules: list[Rule] = [
        {
            "record": f"{group}:mail_roundtrip_tasks_failing:ratio",
            "expr": f"avg by (job, {group}) (device_task:mail_roundtrip_probe_failing:bool{selector})",
        }
    ]
    windows = sorted({w for long, short, _, _ in (*BURN_WINDOWS, SLOW_BURN) for w in (long, short)}, key=_seconds)
    for window in windows:
        rules.append(
            {
                "record": f"{group}:mail_roundtrip_probe_errors:ratio_rate{window}",
                "expr": f"sum by (job, {group}) (increase(mail_roundtrip_probe_failures_total{selector}[{window}]))\n"
                f"/ (sum by (job, {group}) (increase(mail_roundtrip_probes_total{selector}[{window}])) > 0)\n",
            }
        )
    return rules


def server_recordings(params: Params) -> list[Rule]:
    return [
        {
            "record": f"{label}:mail_roundtrip_tasks_failing:ratio",
            "expr": f'avg by (job, {label}) (device_task:mail_roundtrip_probe_failing:bool{{job="{params.job}"}})',
        }
        for label in ("smtp_host", "incoming_host")
    ]


def _words(duration: str) -> str:
    """``10m`` as ``10 minutes``, for descriptions."""
    unit = {"m": "minute", "h": "hour", "d": "day"}[duration[-1]]
    count = int(duration[:-1])
    return f"{count} {unit}{'s' if count != 1 else ''}"


def _seconds(window: str) -> int:
    return int(window[:-1]) * {"m": 60, "h": 3600, "d": 86400}[window[-1]]


# --- alerts: a task ------------------------------------------------------------------------------------------

FAILING_CHECKS = """
{{ if eq $reason "dns" -}} does the host name of the SMTP or mailbox server resolve from the exporter host (dig),
and do the device's DNS servers answer?
{{- else if eq $reason "connect" -}} is the server up and listening on that port, or does a firewall or routing
change block the exporter (nc -v host port from the exporter host)?
{{- else if eq $reason "tls" -}} the server certificate (expired, not yet valid, for another name, untrusted CA)
and whether STARTTLS is still offered (openssl s_client -connect host:port -starttls smtp|imap|pop3).
{{- else if eq $reason "auth" -}} the probe account's password (changed or expired? the exporter's
password_file/password_env) and whether the account is locked out after failed logins.
{{- else if eq $reason "smtp_rejected" -}} the refusal (the status page shows it: the SMTP reply, or the status
and diagnostic of the bounce that came back): sender or recipient restrictions, relay denied, an unknown or
over-quota destination, rate limits or greylisting (4xx).
{{- else if eq $reason "junk" -}} why the letter was filed as spam: the spam score and the authentication results
on the task's status page, and the spam filter's log (rspamd, SpamAssassin, Exchange Online Protection).
{{- else if eq $reason "mailbox" -}} the mailbox server's log: does the folder exist, is the mailbox over quota
or read-only?
{{- else if eq $reason "timeout" -}} the server accepts connections but does not answer in time: its load, stuck
processes, a full disk, or a middlebox that drops traffic.
{{- else if eq $reason "protocol" -}} what answers on that port (wrong port or service, a proxy) and the exporter
log for the unexpected reply.
{{- else if eq $reason "delivery_timeout" -}} the queue on the SMTP server (mailq or postqueue -p): are the
letters deferred, held or stuck? Then the delivery to the mailbox (LMTP/local delivery, content filter,
sieve/spam rules).
{{- else -}} the exporter's status page and log.
{{- end }}"""


def task_alerts(params: Params) -> list[Rule]:
    failing = alert(
        "MailRoundTripFailing",
        f'device_task:mail_roundtrip_probe_failing:bool{{job="{params.job}"}} == 1',
        params.failing_for,
        "warning",
    )
    groups = ", ".join(["smtp_host", "incoming_host", *params.group_labels])
    annotate(
        failing,
        params,
        "Mail round trip {{ $labels.device }}/{{ $labels.task }} is failing",
        """{{- $reason := "unknown" -}}
        {{- with printf "mail_roundtrip_probe_failure_reason{job=%q,instance=%q,device=%q,task=%q} == 1"
        $labels.job $labels.instance $labels.device $labels.task | query -}}
        {{- $reason = . | first | label "reason" -}} {{- end -}}
        Every round trip of {{ $labels.device }}/{{ $labels.task }} (exporter {{ $labels.instance }}) failed for at
        least """
        + _words(params.failing_for)
        + """; the last one with reason {{ $reason }}. Check first: """
        + FAILING_CHECKS
        + f""" The exporter's status page (/) shows the full error text of the last probe. A ticket, not a page:
        when most tasks of its group ({groups}) fail, the group's alert pages and this one is inhibited.""",
    )
    return [failing, *quality_alerts(params)]


def quality_alerts(params: Params) -> list[Rule]:
    unreliable = annotate(
        alert("MailRoundTripUnreliable", "device_task:mail_roundtrip_probe_success:ratio_1h < 0.9", "15m", "warning"),
        params,
        "Only {{ $value | humanizePercentage }} of the round trips of {{ $labels.device }}/{{ $labels.task }} succeed",
        """In the last hour only {{ $value | humanizePercentage }} of the probes of {{ $labels.device }}/{{
        $labels.task }} succeeded (threshold 90%). Check first which reasons the failures had (dashboard "Failures
        by reason", or increase(mail_roundtrip_probe_failures_total[1h]) > 0) and the server logs at those times.""",
    )
    slow = annotate(
        alert(
            "MailRoundTripDeliverySlow", "device_task:mail_roundtrip_delivery_seconds:p95_30m > 300", "15m", "warning"
        ),
        params,
        "Mail to {{ $labels.device }}/{{ $labels.task }} takes {{ $value | humanizeDuration }} (p95, 30 min)",
        """95% of the test letters of {{ $labels.device }}/{{ $labels.task }} in the last 30 minutes took up to {{
        $value | humanizeDuration }} from SMTP acceptance to the mailbox (threshold 5m). Check first the queue on the
        SMTP server (mailq or postqueue -p): deferred letters, greylisting, a slow content filter; then the load of
        the delivery agent on the mailbox server.""",
    )
    timeouts = annotate(
        alert(
            "MailRoundTripDeliveryTimeouts",
            'increase(mail_roundtrip_probe_failures_total{reason="delivery_timeout"}[1h]) > 0',
            "5m",
            "warning",
        ),
        params,
        "Test letters of {{ $labels.device }}/{{ $labels.task }} do not arrive in time",
        """{{ $value | printf "%.0f" }} test letter(s) of {{ $labels.device }}/{{ $labels.task }} accepted by the
        SMTP server in the last hour did not reach the mailbox within the email timeout. Check first the queue on the
        SMTP server (mailq or postqueue -p): deferred or held letters and the reason Postfix/Exchange gives for them.
        If mail_roundtrip_late_arrivals_total grows, the letters do arrive, only later than the email timeout.""",
    )
    stalled = annotate(
        alert(
            "MailRoundTripProbesStalled",
            "time() - mail_roundtrip_last_probe_timestamp_seconds\n"
            "> 3 * mail_roundtrip_task_interval_seconds + mail_roundtrip_task_email_timeout_seconds\n",
            "5m",
            "warning",
        ),
        params,
        "No probe of {{ $labels.device }}/{{ $labels.task }} finished recently",
        """The last probe of {{ $labels.device }}/{{ $labels.task }} (exporter {{ $labels.instance }}) finished {{
        $value | humanizeDuration }} ago, more than three intervals plus the email timeout. Check first
        mail_roundtrip_probes_skipped_total and mail_roundtrip_probes_in_flight for this task (letters still
        travelling block new probes at max_in_flight), then the exporter log and its CPU.""",
    )
    return [unreliable, slow, timeouts, stalled, authentication_alert(params), *certificate_alerts(params)]


def authentication_alert(params: Params) -> Rule:
    return annotate(
        alert(
            "MailRoundTripAuthenticationFailing",
            'mail_roundtrip_authentication_result{method=~"dkim|dmarc",result!="pass"} == 1',
            "30m",
            "warning",
        ),
        params,
        "{{ $labels.method | toUpper }} is {{ $labels.result }} for letters of {{ $labels.device }}/{{ $labels.task }}",
        """The receiving server's Authentication-Results for the test letters of {{ $labels.device }}/{{ $labels.task
        }} have said {{ $labels.method }}={{ $labels.result }} for 30 minutes. Mail that fails DKIM or DMARC is
        delivered here but will soon be refused or filed as spam elsewhere. Check first: for dkim, the signing on the
        SMTP server (is it still signing, with the key that DNS publishes at selector._domainkey?); for dmarc, the
        _dmarc record and whether SPF or DKIM passes for the From: domain (dig TXT).""",
    )


def certificate_alerts(params: Params) -> list[Rule]:
    days = "(mail_roundtrip_tls_certificate_not_after_timestamp_seconds - time()) / 86400"
    which = "{{ $labels.leg }} server of {{ $labels.device }}/{{ $labels.task }}"
    expiring = annotate(
        alert("MailRoundTripCertificateExpiring", f"{days} < {params.certificate_warning_days} > 0", "15m", "warning"),
        params,
        f'TLS certificate of the {which} expires in {{{{ $value | printf "%.1f" }}}} days',
        f"""The certificate the {which} presented expires in {{{{ $value | printf "%.1f" }}}} days (warning from
        {params.certificate_warning_days} days on). Check first why the automatic renewal (certbot/acme timer) did
        not renew it, and whether the server was reloaded after a renewal (openssl s_client -connect host:port shows
        what it serves); then renew it.""",
    )
    expired = annotate(
        alert(
            "MailRoundTripCertificateExpired",
            "(time() - mail_roundtrip_tls_certificate_not_after_timestamp_seconds) / 86400 >= 0",
            "5m",
            "critical",
        ),
        params,
        f"TLS certificate of the {which} has expired",
        f"""The certificate the {which} presented expired {{{{ $value | printf "%.1f" }}}} days ago: clients that
        verify certificates (and the probes, unless insecure_skip_verify) fail. Check first the renewal (certbot/acme
        timer, its log), then reload the server and check what it serves (openssl s_client -connect host:port).""",
    )
    return [expiring, expired]


# --- alerts: groups (one page per outage) and error budgets ------------------------------------------------


def group_alert(params: Params, label: str, name: str, what: str) -> Rule:
    ratio = params.group_failing_ratio
    rule = alert(name, f"{label}:mail_roundtrip_tasks_failing:ratio > {ratio:g}", params.failing_for, "critical")
    return annotate(
        rule,
        params,
        f"Most mail round trips through {what} {{{{ $labels.{label} }}}} fail",
        f"""{{{{ $value | humanizePercentage }}}} of the tasks of {what} {{{{ $labels.{label} }}}} (job {{{{
        $labels.job }}}}) failed their last probe for {_words(params.failing_for)} (threshold {ratio:.0%}): one
        outage, one page; its tasks' own alerts are inhibited. Check first what the failing tasks share: {what} {{{{
        $labels.{label} }}}} itself (is it up, reachable, its certificate, its queue), then the tasks' reasons
        (mail_roundtrip_probe_failure_reason) and the exporter's status page.""",
    )


def group_alerts(params: Params) -> list[Rule]:
    alerts = [
        group_alert(params, "smtp_host", "MailRoundTripSMTPServerFailing", "SMTP server"),
        group_alert(params, "incoming_host", "MailRoundTripMailboxServerFailing", "mailbox server"),
    ]
    for label in params.group_labels:
        alerts.append(group_alert(params, label, f"MailRoundTrip{_camel(label)}Failing", label))
        alerts.extend(burn_alerts(params, label))
    return alerts


def burn_alerts(params: Params, label: str) -> list[Rule]:
    def over(long: str, short: str, rate: float) -> str:
        threshold = f"{rate * params.budget:.6g}"
        return (
            f"({label}:mail_roundtrip_probe_errors:ratio_rate{long} > {threshold}\n"
            f" and {label}:mail_roundtrip_probe_errors:ratio_rate{short} > {threshold})"
        )

    page = [over(long, short, rate) for long, short, rate, severity in BURN_WINDOWS if severity == "critical"]
    ticket = [
        over(long, short, rate) for long, short, rate, severity in (*BURN_WINDOWS, SLOW_BURN) if severity == "warning"
    ]
    name = f"MailRoundTrip{_camel(label)}ErrorBudgetBurn"
    describe = f"""The probes of {label} {{{{ $labels.{label} }}}} failed {{{{ $value | humanizePercentage }}}} of
    the time over the alert's long window (and still fail in its short one), against an objective of
    {params.slo_target:.2%} success: at this rate the error budget of 30 days is spent in"""
    rules = [
        annotate(
            alert(name, "\nor\n".join(page) + "\n", "5m", "critical", window="fast"),
            params,
            f"{label} {{{{ $labels.{label} }}}} burns its mail error budget fast",
            f"""{describe} hours to days. Check first the group's failing tasks and their reasons (dashboard, status
            page), then what they share (site network, relay, mailbox server).""",
        ),
        annotate(
            alert(name, "\nor\n".join(ticket) + "\n", "15m", "warning", window="slow"),
            params,
            f"{label} {{{{ $labels.{label} }}}} burns its mail error budget",
            f"""{describe} days to weeks: a ticket, not a page. Check first which tasks fail intermittently
            (MailRoundTripUnreliable, increase(mail_roundtrip_probe_failures_total[1d]) > 0) and why.""",
        ),
    ]
    return rules


def _camel(label: str) -> str:
    return "".join(part.capitalize() for part in label.split("_"))


# --- alerts: the exporters themselves ----------------------------------------------------------------------


def exporter_alerts(params: Params) -> list[Rule]:
    up = f'up{{job="{params.job}"}}'
    return [
        annotate(
            alert("MailRoundTripExporterDown", f"{up} == 0", "5m", "critical"),
            params,
            "mail-roundtrip-exporter {{ $labels.instance }} cannot be scraped",
            """Prometheus has not been able to scrape the mail-roundtrip-exporter at {{ $labels.instance }} for 5
            minutes: while it is down nobody checks that mail flows. Check first that the process runs (systemctl
            status mail-roundtrip-exporter; its log), then that it listens on that address (curl http://{{
            $labels.instance }}/-/healthy from the Prometheus host) and firewalls.""",
        ),
        annotate(
            alert("MailRoundTripExporterAbsent", f"absent({up})", "15m", "critical"),
            params,
            "No mail-roundtrip-exporter target in Prometheus",
            f"""Prometheus has no target of job "{params.job}" at all, so nobody checks that mail flows. Check first
            the scrape configuration (job_name, targets or service discovery) and the Prometheus targets page
            (/targets).""",
        ),
        annotate(
            alert(
                "MailRoundTripConfigReloadFailed",
                "mail_roundtrip_exporter_config_last_reload_successful == 0",
                "5m",
                "warning",
            ),
            params,
            "mail-roundtrip-exporter {{ $labels.instance }} rejected its new configuration",
            """The last configuration reload of the exporter at {{ $labels.instance }} failed; it keeps probing with
            the previous configuration. Check first the exporter log (one line naming the file, field and problem)
            or run mail-roundtrip-exporter --config.file FILE --config.check.""",
        ),
        *shard_alerts(params),
    ]


def shard_alerts(params: Params) -> list[Rule]:
    total = f'mail_roundtrip_exporter_total_shards{{job="{params.job}"}}'
    ordinal = f'mail_roundtrip_exporter_shard_ordinal{{job="{params.job}"}}'
    return [
        annotate(
            alert("MailRoundTripShardsDisagree", f"max by (job) ({total}) != min by (job) ({total})", "5m", "warning"),
            params,
            "The exporters of job {{ $labels.job }} disagree on --total-shards",
            """Not every exporter of job {{ $labels.job }} has the same --total-shards, so some tasks are probed
            twice and others not at all. Check first the --shard/--total-shards flags of every instance
            (mail_roundtrip_exporter_total_shards per instance), e.g. a rollout that changed the replica count.""",
        ),
        annotate(
            alert(
                "MailRoundTripShardMissing", f"count by (job) ({ordinal}) < max by (job) ({total})", "5m", "critical"
            ),
            params,
            "A shard of job {{ $labels.job }} is missing: its tasks are not probed",
            """Fewer exporters of job {{ $labels.job }} report a shard than --total-shards says there are, so the
            tasks of the missing shard are not probed. Check first which --shard ordinal is absent
            (mail_roundtrip_exporter_shard_ordinal per instance), then that exporter's pod or process and its
            scrape target.""",
        ),
    ]


# --- rendering -------------------------------------------------------------------------------------------------

HEADER = """\
# Recording and alerting rules for mail-roundtrip-exporter, RENDERED by scripts/render_rules.py from
# prometheus/rules.params.yml: change the parameters and render again rather than editing this file.
#
# Load with `rule_files: [rules.yml]` in prometheus.yml (see prometheus.yml next to this file).
# Check:  promtool check rules prometheus/rules.yml
# Test:   promtool test rules prometheus/tests/*.yml
#
# One page per outage: a task's own failure is a ticket (severity warning); what broke pages (critical):
# an SMTP server, a mailbox server (tasks grouped by mail_roundtrip_task_info), or a group label
# (group_labels) when most of its tasks fail, and a group's error budget burning fast. Alertmanager's
# example config inhibits a group's task alerts while the group pages. Every alert has `summary`,
# `description` (what to check first), `runbook_url` and `dashboard_url`.
"""


def render(params: Params) -> str:
    recording = task_recordings() + server_recordings(params)
    for label in params.group_labels:
        recording += group_recordings(params, label)
    groups = [
        {"name": "mail-roundtrip.recording", "rules": recording},
        {"name": "mail-roundtrip.tasks", "rules": task_alerts(params)},
        {"name": "mail-roundtrip.groups", "rules": group_alerts(params)},
        {"name": "mail-roundtrip.exporter", "rules": exporter_alerts(params)},
    ]
    return HEADER + "\n" + yaml.dump({"groups": groups}, Dumper=_Dumper, sort_keys=False, width=110, allow_unicode=True)


class _Dumper(yaml.SafeDumper):
    """Expressions with line breaks as literal blocks, long texts folded: a file people can read."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else (">" if len(value) > 100 and " " in value else None)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=PARAMS)
    parser.add_argument("--out", type=Path, default=RULES)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what --params give")
    args = parser.parse_args(argv)
    rendered = render(Params.load(args.params))
    if args.check:
        if args.out.read_text() != rendered:
            print(f"{args.out} is not what {args.params} renders: run scripts/render_rules.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())

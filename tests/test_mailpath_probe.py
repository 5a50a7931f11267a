"""Where and how the letter arrived, on a realistic path of real servers (tests/mailpath.py): a
submission Postfix that DKIM-signs (OpenDKIM) and relays to an MX Postfix whose milter is rspamd
(SPF, DKIM, DMARC against the loopback DNS server), delivering to Dovecot, whose sieve files what
rspamd marks as spam into the \\Junk folder. The exporter probes it as it would any server."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config.model import SpamTest
from exporter.exposition.render import render_tasks
from exporter.exposition.stats import TaskStats
from exporter.letter.arrival import Arrival, Placement
from exporter.letter.authresults import Method
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from exporter.probe.result import ProbeResult
from tests.mailpath import MailPath
from tests.tasks import probe_once, task_dict

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def path(mail_path: MailPath) -> Iterator[MailPath]:
    """The session's path with a clean mailbox and the DNS records as published at start, after too."""
    mail_path.restore()
    mail_path.clear_mailbox(mail_path.mailbox)
    yield mail_path
    mail_path.restore()


def path_task(path: MailPath, mailbox: str = "imaps", **extra: Any) -> dict[str, Any]:
    # The letter goes out as the mailbox's own address: the domain whose SPF, DKIM and DMARC the DNS
    # server publishes, and where a bounce comes back to.
    return task_dict(path, path.mailbox, mailbox=mailbox, sender=path.address(path.mailbox), **extra)


def results(arrival: Arrival | None) -> dict[Method, str]:
    assert arrival is not None
    return dict(arrival.authentication)


def junk_letters(path: MailPath) -> list[Path]:
    folder = path.junk_maildir(path.mailbox)
    return [item for sub in ("new", "cur") if (folder / sub).is_dir() for item in (folder / sub).iterdir()]


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_a_clean_letter_arrives_in_the_inbox_authenticated(path: MailPath, mailbox: str) -> None:
    result = await probe_once(path_task(path, mailbox))
    assert result.success, result.error
    arrival = result.arrival
    assert arrival is not None and arrival.placement is Placement.INBOX
    assert results(arrival) == {Method.SPF: "pass", Method.DKIM: "pass", Method.DMARC: "pass"}, path.logs()
    assert arrival.spam_score is not None  # rspamd's X-Spamd-Result
    # Submission Postfix, MX Postfix, Dovecot's LMTP: each took the letter, each with a time.
    assert len(arrival.hops) >= 3 and all(hop.at is not None for hop in arrival.hops)
    assert [hop.delay is not None for hop in arrival.hops] == [False] + [True] * (len(arrival.hops) - 1)
    assert arrival.hops[-1].protocol.upper() == "LMTP"
    assert Phase.MAILBOX_HEADERS in result.phases
    assert path.messages(path.mailbox) == []


async def test_spam_is_found_in_the_junk_folder_and_fails_as_junk(path: MailPath) -> None:
    result = await probe_once(path_task(path, spam_test=SpamTest.GTUBE_ADD_HEADER.value, email_timeout="60s"))
    assert not result.success and result.reason is Reason.JUNK, (result.error, path.logs())
    assert result.arrival is not None and result.arrival.placement is Placement.JUNK
    assert result.delivery_seconds is not None  # recorded either way
    assert "in the junk folder" in (result.error or "")
    assert junk_letters(path) == [] and path.messages(path.mailbox) == []  # cleaned up like any other


async def test_junk_is_not_a_failure_when_told(path: MailPath) -> None:
    task = path_task(path, spam_test=SpamTest.GTUBE_ADD_HEADER.value, email_timeout="60s")
    task["incoming"]["junk_is_failure"] = False
    result = await probe_once(task)
    assert result.success, result.error
    assert result.arrival is not None and result.arrival.placement is Placement.JUNK
    assert junk_letters(path) == []


async def test_without_the_junk_check_a_junk_letter_is_not_found(path: MailPath) -> None:
    """junk_folders: [] turns the check off: the letter is not where the probe looks (as on POP3)."""
    task = path_task(path, spam_test=SpamTest.GTUBE_ADD_HEADER.value, email_timeout="3s")
    task["incoming"]["junk_folders"] = []
    result = await probe_once(task)
    assert result.reason is Reason.DELIVERY_TIMEOUT, result.error
    assert len(junk_letters(path)) == 1  # the probe never looked there: nothing of the junk folder touched


async def test_a_broken_spf_record_shows_as_spf_fail(path: MailPath) -> None:
    path.break_spf()
    result = await probe_once(path_task(path))
    assert result.success, result.error  # DKIM still passes, aligned: DMARC passes, the letter arrives
    assert results(result.arrival)[Method.SPF] == "fail", path.logs()
    assert results(result.arrival)[Method.DKIM] == "pass"


async def test_a_removed_dkim_key_fails_dkim_and_fires_the_alert(path: MailPath, tmp_path: Path) -> None:
    path.remove_dkim_key()
    result = await probe_once(path_task(path))
    assert result.success, result.error  # SPF still passes, aligned
    dkim = results(result.arrival)[Method.DKIM]
    assert dkim != "pass", path.logs()
    assert_alert_fires(result, tmp_path, Method.DKIM, dkim)


async def test_spf_and_dkim_broken_fail_dmarc_and_fire_the_alert(path: MailPath, tmp_path: Path) -> None:
    path.break_spf()
    path.remove_dkim_key()
    result = await probe_once(path_task(path))
    assert result.success, result.error  # rspamd here enforces no DMARC policy: the letter arrives
    assert results(result.arrival)[Method.DMARC] == "fail", path.logs()
    assert_alert_fires(result, tmp_path, Method.DMARC, "fail")


async def test_an_unknown_recipient_bounces_as_smtp_rejected_at_once(path: MailPath) -> None:
    task = path_task(path, destination=path.unknown_recipient, email_timeout="600s")
    result = await probe_once(task)
    assert not result.success and result.reason is Reason.SMTP_REJECTED, (result.error, path.logs())
    assert result.failed_phase is Phase.MAILBOX_SEARCH  # the MX refused it after submission accepted it
    assert result.error is not None and "bounced: status 5.1.1" in result.error
    assert result.delivery_seconds is None and result.sent
    assert result.finished - result.started < 600  # the bounce ended it, not the email timeout
    assert path.messages(path.mailbox) == []  # the DSN was provably about our letter: deleted


def assert_alert_fires(result: ProbeResult, directory: Path, method: Method, value: str) -> None:
    """The real letter's results, as /metrics shows them, held for 40 minutes in promtool: the shipped
    MailRoundTripAuthenticationFailing (its expression and duration; annotations left out, promtool
    tests them in prometheus/tests) fires at 31 minutes, once for each of DKIM and DMARC that did not pass,
    ``method`` among them."""
    assert result.arrival is not None
    failing = [(m, r) for m, r in result.arrival.authentication if m in (Method.DKIM, Method.DMARC) and r != "pass"]
    assert (method, value) in failing
    stats = TaskStats("path", "t", 60.0, 600.0)
    stats.record(result)
    samples = [line for line in render_tasks([stats], openmetrics=False).splitlines() if line.startswith(METRIC + "{")]
    assert samples
    shipped = yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())
    (rule,) = [rule for group in shipped["groups"] for rule in group["rules"] if rule.get("alert") == ALERT]
    rule.pop("annotations")
    rules = directory / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "authentication", "rules": [rule]}]}))
    job = '{job="mail-roundtrip",instance="x:1",'
    labels = {"severity": "warning", "job": "mail-roundtrip", "instance": "x:1", "device": "path", "task": "t"}
    test = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": line.rsplit(" ", 1)[0].replace("{", job, 1), "values": "1x40"} for line in samples
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "31m",
                        "alertname": ALERT,
                        "exp_alerts": [{"exp_labels": labels | {"method": m.value, "result": r}} for m, r in failing],
                    }
                ],
            }
        ],
    }
    (directory / "test.yml").write_text(yaml.safe_dump(test))
    check = subprocess.run(
        ["promtool", "test", "rules", str(directory / "test.yml")], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


METRIC = "mail_roundtrip_authentication_result"
ALERT = "MailRoundTripAuthenticationFailing"


async def test_a_letter_the_mx_refuses_as_spam_bounces_back_as_smtp_rejected(path: MailPath) -> None:
    """The standard GTUBE: rspamd refuses it at the MX (554 5.7.1). The letter went out with RET=HDRS,
    so its bounce carries only the headers, and the MX takes the bounce (with the whole letter it
    would refuse that as well, and the probe would wait out its email timeout)."""
    result = await probe_once(path_task(path, spam_test=SpamTest.GTUBE.value, email_timeout="30s"))
    assert not result.success and result.reason is Reason.SMTP_REJECTED, (result.error, path.logs())
    assert result.error is not None and "status 5.7.1" in result.error, result.error
    assert path.messages(path.mailbox) == [] and junk_letters(path) == []

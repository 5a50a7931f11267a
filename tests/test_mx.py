"""MX mode against the rig's Postfix (port 25 moved to its test port): the test DNS server serves the
destination domain's MX records, the probe delivers as another domain's server would."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.cli import run_once
from exporter.config.load import parse_config
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from exporter.probe.result import ProbeResult
from exporter.report import render_report
from tests.dnsserver import DNSServer
from tests.rig import DOMAIN, MailRig
from tests.tasks import SIGNER, FreshUsers, mailbox_leg, probe_once

HELO = "probe.example.net"


@pytest.fixture
async def zone() -> AsyncIterator[DNSServer]:
    """mail.test (in the rig's certificate) and dead.test (127.0.0.2: nothing listens there)."""
    server = await DNSServer().start()
    server.add("mail.test", "A", "127.0.0.1")
    server.add("mail.test", "AAAA", "::1")
    server.add("dead.test", "A", "127.0.0.2")
    yield server
    server.close()


def mx_task(rig: MailRig, user: str, zone: DNSServer, name: str = "t", **smtp: Any) -> dict[str, Any]:
    return {
        "name": name,
        "destination": rig.address(user),
        "completion_timeout": "10s",
        "email_timeout": "15s",
        "smtp": {"mx": True, "port": rig.ports.smtp, "ca_file": str(rig.ca_file), "helo_name": HELO, **smtp},
        "incoming": mailbox_leg(rig, "imaps", user),
    }


async def probe(task: dict[str, Any], zone: DNSServer, mode: str = "device_cached") -> ProbeResult:
    return await probe_once(task, dns={"mode": mode, "servers": [zone.spec]})


async def test_the_first_mx_host_that_answers_takes_the_letter(
    rig: MailRig, fresh_user: str, zone: DNSServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Preference order, a dead host first; STARTTLS because Postfix offers it, verified for the MX
    host's name; EHLO with helo_name; the host that answered in the result and the report."""
    zone.add(DOMAIN, "MX", "20 mail.test.")
    zone.add(DOMAIN, "MX", "10 dead.test.")
    caplog.set_level(logging.DEBUG, logger="exporter.transcript")
    result = await probe(mx_task(rig, fresh_user, zone), zone)
    assert result.success, result.error
    assert result.smtp.mx_host == "mail.test" and result.smtp.address == "::1"
    assert result.smtp.tls is not None  # may: STARTTLS when offered
    assert {Phase.SMTP_DNS, Phase.SMTP_CONNECT, Phase.SMTP_TLS} <= set(result.phases)
    assert (zone.count(DOMAIN, "MX"), zone.count("dead.test", "A"), zone.count("mail.test", "AAAA")) == (1, 1, 1)
    assert "smtp mx host: mail.test" in render_report([result])
    said = [getattr(record, "line", "") for record in caplog.records if getattr(record, "leg", "") == "smtp"]
    assert f"EHLO {HELO}" in said and not any(str(line).startswith("AUTH") for line in said)


async def test_an_mx_host_that_is_a_cname(rig: MailRig, fresh_user: str, zone: DNSServer) -> None:
    zone.add(DOMAIN, "MX", "10 alias.test.")
    zone.add("alias.test", "CNAME", "mail.test.")
    result = await probe(mx_task(rig, fresh_user, zone, security="none"), zone)
    assert result.success, result.error
    assert result.smtp.mx_host == "alias.test" and result.smtp.tls is None  # none: never STARTTLS


async def test_without_mx_records_the_domain_itself(rig: MailRig, fresh_user: str, zone: DNSServer) -> None:
    """RFC 5321 5.1: no MX records, the domain's own A/AAAA (its name is not in the rig's certificate:
    verification off, as most sending MTAs do it)."""
    zone.add(DOMAIN, "A", "127.0.0.1")
    result = await probe(mx_task(rig, fresh_user, zone, insecure_skip_verify=True), zone, mode="non_cached")
    assert result.success, result.error
    assert result.smtp.mx_host == DOMAIN and result.smtp.tls is not None
    assert zone.count(DOMAIN, "MX") == 1 and zone.count(DOMAIN, "A") >= 1


async def test_a_null_mx_takes_no_mail(rig: MailRig, fresh_user: str, zone: DNSServer) -> None:
    zone.add(DOMAIN, "MX", "0 .")
    result = await probe(mx_task(rig, fresh_user, zone), zone)
    assert result.reason is Reason.DNS and result.failed_phase is Phase.SMTP_DNS, result.error
    assert "null MX (RFC 7505)" in (result.error or "")


async def test_no_mx_host_answers(rig: MailRig, fresh_user: str, zone: DNSServer) -> None:
    zone.add(DOMAIN, "MX", "10 dead.test.")
    zone.add(DOMAIN, "MX", "20 nowhere.test.")
    result = await probe(mx_task(rig, fresh_user, zone), zone)
    assert result.reason is Reason.CONNECT and result.failed_phase is Phase.SMTP_CONNECT, result.error
    error = result.error or ""
    assert "no MX host of example.test accepted a connection" in error, error
    assert "dead.test: 127.0.0.2:" in error and "nowhere.test: nowhere.test: NXDOMAIN" in error, error


async def test_mx_answers_are_shared_in_a_device_run(rig: MailRig, fresh_users: FreshUsers, zone: DNSServer) -> None:
    zone.add(DOMAIN, "MX", "10 mail.test.")
    tasks = [mx_task(rig, fresh_users.take(), zone, name=f"t{i}") for i in range(2)]
    config = parse_config({"devices": [{"name": "mx", "dns": {"servers": [zone.spec]}, "tasks": tasks}]})
    results = await run_once(config, SIGNER)
    assert all(result.success for result in results), [result.error for result in results]
    assert zone.count(DOMAIN, "MX") == 1  # device_cached: one query for the run

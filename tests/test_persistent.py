"""persistent: true against the real Postfix + Dovecot rig: a kept IMAP session serves the next probes,
every fresh_login_every-th probe logs in anew (and fails truthfully when the login does), and a
session the server dropped or lost in a restart is replaced by a fresh login in the same probe."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import exporter.legs.outbox
from exporter.config.dump import dump_config
from exporter.legs.outbox import Outbox
from exporter.probe.errors import Reason
from exporter.probe.result import ProbeResult
from exporter.probe.watch import Mailbox
from tests.hostile import HostileServer, Switch, proxy, serve
from tests.rig import MailRig
from tests.tasks import SIGNER, config_of, probe_once, smtp_leg, task_dict, task_of
from tests.test_faults import stop_dovecot_like_systemd, until

FRESH = {"mailbox_connect", "mailbox_tls", "mailbox_login"}


def persistent_task(rig: MailRig, user: str, every: int) -> dict[str, Any]:
    """SMTP without AUTH (port 25, STARTTLS): a password changed for the mailbox must not fail the SMTP leg."""
    task = task_dict(rig, user, smtp="smtp-starttls", name="kept", completion_timeout="10s")
    task["incoming"].update(persistent=True, fresh_login_every=every)
    return task


@pytest.fixture
async def kept(rig: MailRig, fresh_user: str) -> AsyncIterator[tuple[dict[str, Any], Mailbox]]:
    """A persistent task (a fresh login every 3rd probe) on a mailbox of its own, and its Mailbox,
    closed afterwards with the rig as it was (Dovecot up, the user's password its own)."""
    task = persistent_task(rig, fresh_user, every=3)
    mailbox = Mailbox(task_of(task).incoming, SIGNER)
    yield task, mailbox
    await mailbox.close()
    await asyncio.to_thread(rig.start_imap_pop3)
    await asyncio.to_thread(rig.set_password, fresh_user, f"{fresh_user}-secret")


def logins(rig: MailRig, user: str) -> int:
    text = (rig.dir / "log" / "dovecot.log").read_text(errors="replace")
    return len(re.findall(rf"imap-login: Info: Login: user=<{re.escape(rig.address(user))}>", text))


def logouts(rig: MailRig, user: str) -> int:
    text = (rig.dir / "log" / "dovecot.log").read_text(errors="replace")
    return len(re.findall(rf"imap\({re.escape(rig.address(user))}\)[^\n]*Logged out", text))


def letters_left(rig: MailRig, user: str) -> list[Path]:
    return [p for p in rig.messages(user) if b"X-Mail-Roundtrip-Probe" in p.read_bytes()]


def logged_in_anew(result: ProbeResult) -> bool:
    return set(result.phases) >= FRESH


async def test_kept_session_serves_the_next_probes(rig: MailRig, fresh_user: str, kept: Any) -> None:
    task, mailbox = kept
    before = logins(rig, fresh_user)
    results = [await probe_once(task, mailbox) for _ in range(4)]
    assert all(result.success for result in results), [result.error for result in results]
    # 1st: a fresh login; 2nd and 3rd: the kept session (its NOOP check is their login phase); 4th: anew.
    assert [logged_in_anew(result) for result in results] == [True, False, False, True]
    kept_probe = results[1]
    assert "mailbox_login" in kept_probe.phases and {"mailbox_connect", "mailbox_tls"}.isdisjoint(kept_probe.phases)
    assert kept_probe.mailbox.address == results[0].mailbox.address and kept_probe.mailbox.tls is not None
    assert all(result.delivery_seconds is not None for result in results)
    await asyncio.to_thread(rig.wait_for, lambda: logins(rig, fresh_user) - before == 2, 10, "two logins")
    assert letters_left(rig, fresh_user) == []


async def test_a_dropped_session_is_replaced_in_the_same_probe(rig: MailRig, fresh_user: str, kept: Any) -> None:
    task, mailbox = kept
    first = await probe_once(task, mailbox)
    assert first.success, first.error
    await asyncio.to_thread(rig.kick, fresh_user)
    second = await probe_once(task, mailbox)
    assert second.success, second.error
    assert logged_in_anew(second)
    assert letters_left(rig, fresh_user) == []


async def test_a_kept_session_survives_a_dovecot_restart(rig: MailRig, fresh_user: str, kept: Any) -> None:
    task, mailbox = kept
    first = await probe_once(task, mailbox)
    assert first.success, first.error
    await asyncio.to_thread(stop_dovecot_like_systemd, rig)
    down = await probe_once(task, mailbox)  # the kept session is gone and no fresh one can log in
    assert down.reason is Reason.CONNECT and down.failed_phase is not None, down.error
    assert down.failed_phase.value == "mailbox_connect"
    await asyncio.to_thread(rig.start_imap_pop3)
    results = [await probe_once(task, mailbox) for _ in range(2)]
    assert all(result.success for result in results), [result.error for result in results]
    assert [logged_in_anew(result) for result in results] == [True, False]  # kept again after the restart
    assert letters_left(rig, fresh_user) == []


async def test_a_failed_fresh_login_is_reported(rig: MailRig, fresh_user: str, kept: Any) -> None:
    """The kept session outlives a password change; the probe that logs in anew tells the truth."""
    task, mailbox = kept
    first = await probe_once(task, mailbox)
    assert first.success, first.error
    await asyncio.to_thread(rig.set_password, fresh_user, "changed-password-789")
    results = [await probe_once(task, mailbox) for _ in range(3)]
    assert [result.success for result in results] == [True, True, False], [result.error for result in results]
    failed = results[2]
    assert failed.reason is Reason.AUTH, failed.error
    assert failed.error is not None and failed.error.startswith("mailbox_login")
    assert not failed.sent  # the mailbox could not be opened: no letter was sent
    again = await probe_once(task, mailbox)  # no session is kept from a failed login: each probe tries anew
    assert again.reason is Reason.AUTH, again.error


async def test_once_keeps_nothing_open(rig: MailRig, fresh_user: str) -> None:
    """A probe without a task's Mailbox (--once, /probe) logs its session out at the end."""
    result = await probe_once(persistent_task(rig, fresh_user, every=10))
    assert result.success, result.error
    await asyncio.to_thread(rig.wait_for, lambda: logouts(rig, fresh_user) == 1, 10, "the session to log out")


def test_persistent_keys_in_config_dump(rig: MailRig, fresh_user: str) -> None:
    task = persistent_task(rig, fresh_user, every=7)
    task["smtp"].update(persistent=True, fresh_login_every=4)
    config = config_of(task)
    dumped = dump_config(config)
    assert dumped.count("persistent: true") == 2 and "fresh_login_every: 7" in dumped
    assert "fresh_login_every: 4" in dumped
    again = task_of(yaml.safe_load(dumped)["devices"][0]["tasks"][0])  # it loads back (secrets as <secret>)
    assert (again.smtp.persistent, again.smtp.fresh_login_every) == (True, 4)


# --- the SMTP leg (smtp.persistent) ------------------------------------------------------------------

SMTP_FRESH = {"smtp_connect", "smtp_tls", "smtp_greeting", "smtp_auth"}


@pytest.fixture
async def relay(rig: MailRig) -> AsyncIterator[HostileServer]:
    """A loopback proxy in front of the rig's submission port: every SMTP connection a probe makes is
    one of its peers, which the test can count, and cut or freeze from the server's side."""
    async with serve(proxy("127.0.0.1", rig.ports.submission)) as server:
        yield server


def kept_smtp_task(
    rig: MailRig, user: str, relay: HostileServer, every: int, sender: str | None = None
) -> dict[str, Any]:
    """Submission with STARTTLS and AUTH (as ``sender``, else ``user``) through the relay, its session kept."""
    task = task_dict(rig, user, name="kept-smtp", completion_timeout="10s")
    task["smtp"] = smtp_leg(rig, "submission-starttls-auth", sender or user)
    task["smtp"].update(host=f"localhost:{relay.port}", persistent=True, fresh_login_every=every)
    return task


def connected_anew(result: ProbeResult) -> bool:
    return set(result.phases) >= SMTP_FRESH


@pytest.fixture
async def outbox() -> AsyncIterator[list[Outbox]]:
    """The test's Outbox (made once the task is known), QUIT afterwards."""
    made: list[Outbox] = []
    yield made
    for box in made:
        await box.close()


def outbox_of(task: dict[str, Any], made: list[Outbox]) -> Outbox:
    made.append(Outbox(task_of(task).smtp))
    return made[-1]


async def test_kept_smtp_session_serves_the_next_probes(
    rig: MailRig, fresh_user: str, relay: HostileServer, outbox: list[Outbox]
) -> None:
    task = kept_smtp_task(rig, fresh_user, relay, every=3)
    box = outbox_of(task, outbox)
    results = [await probe_once(task, outbox=box) for _ in range(4)]
    assert all(result.success for result in results), [result.error for result in results]
    # 1st: connect, STARTTLS and AUTH; 2nd and 3rd: MAIL FROM on the kept session; 4th: anew.
    assert [connected_anew(result) for result in results] == [True, False, False, True]
    assert len(relay.peers) == 2
    kept_probe = results[1]
    assert "smtp_submit" in kept_probe.phases and SMTP_FRESH.isdisjoint(kept_probe.phases)
    assert kept_probe.smtp.address == results[0].smtp.address and kept_probe.smtp.tls is not None
    assert all(result.delivery_seconds is not None for result in results)
    assert letters_left(rig, fresh_user) == []


async def test_overlapping_probes_get_sessions_of_their_own(
    rig: MailRig, fresh_user: str, relay: HostileServer, outbox: list[Outbox]
) -> None:
    task = kept_smtp_task(rig, fresh_user, relay, every=10)
    box = outbox_of(task, outbox)
    both = await asyncio.gather(probe_once(task, outbox=box), probe_once(task, outbox=box))
    assert all(result.success for result in both), [result.error for result in both]
    assert len(relay.peers) == 2  # one session each; one of them is kept, the other said QUIT
    await until(lambda: relay.busy == 1, "the second session to end")
    after = await probe_once(task, outbox=box)
    assert after.success and not connected_anew(after), after.error
    assert len(relay.peers) == 2


async def test_a_dropped_smtp_session_is_replaced_in_the_same_probe(
    rig: MailRig, fresh_user: str, relay: HostileServer, outbox: list[Outbox]
) -> None:
    task = kept_smtp_task(rig, fresh_user, relay, every=10)
    box = outbox_of(task, outbox)
    first = await probe_once(task, outbox=box)
    assert first.success, first.error
    relay.peers[0].writer.transport.abort()  # the server's side hangs up (a restart, its idle timeout)
    second = await probe_once(task, outbox=box)
    assert second.success, second.error
    assert connected_anew(second) and len(relay.peers) == 2
    assert letters_left(rig, fresh_user) == []


async def test_a_silent_kept_smtp_session_is_given_up(
    rig: MailRig, fresh_user: str, relay: HostileServer, outbox: list[Outbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept session whose server no longer answers (a connection lost without a word) holds the
    probe only for the check's bound, then a fresh session takes the letter."""
    monkeypatch.setattr(exporter.legs.outbox, "CHECK_SECONDS", 0.5)
    task = kept_smtp_task(rig, fresh_user, relay, every=10)
    box = outbox_of(task, outbox)
    first = await probe_once(task, outbox=box)
    assert first.success, first.error
    frozen = relay.peers[0].writer.transport
    assert isinstance(frozen, asyncio.Transport)
    frozen.pause_reading()  # MAIL FROM never reaches the server
    second = await probe_once(task, outbox=box)
    assert second.success, second.error
    assert connected_anew(second) and len(relay.peers) == 2
    assert second.transcript is not None
    sent = [line.text for line in second.transcript.lines if line.leg == "smtp" and line.sent]
    assert sum(text.startswith("MAIL FROM") for text in sent) == 2  # the kept session's, then the fresh one's
    assert letters_left(rig, fresh_user) == []


async def test_a_failed_fresh_smtp_login_is_reported(rig: MailRig, fresh_user: str, outbox: list[Outbox]) -> None:
    """The kept session outlives a change of the server (new connections reach one without AUTH);
    the probe that logs in anew fails with auth, and so does every probe after it."""
    switch = Switch(proxy("127.0.0.1", rig.ports.submission))
    async with serve(switch) as relay:
        task = kept_smtp_task(rig, fresh_user, relay, every=2)
        box = outbox_of(task, outbox)
        first = await probe_once(task, outbox=box)
        assert first.success, first.error
        switch.handler = proxy("127.0.0.1", rig.ports.smtp)  # port 25: STARTTLS, but no AUTH
        results = [await probe_once(task, outbox=box) for _ in range(3)]
    assert [result.success for result in results] == [True, False, False], [result.error for result in results]
    for failed in results[1:]:
        assert failed.reason is Reason.AUTH and failed.failed_phase is not None, failed.error
        assert failed.failed_phase.value == "smtp_auth" and not failed.sent
    assert len(relay.peers) == 3


async def test_once_keeps_no_smtp_session(rig: MailRig, fresh_user: str, relay: HostileServer) -> None:
    """A probe without the task's Outbox (--once, /probe) says QUIT at the end."""
    result = await probe_once(kept_smtp_task(rig, fresh_user, relay, every=10))
    assert result.success, result.error
    await asyncio.wait_for(relay.finished(), 10)
    assert len(relay.peers) == 1

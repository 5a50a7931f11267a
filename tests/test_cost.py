"""No sender can make a probe expensive or break it (issue 10, section 2), against the real servers.

- A foreign letter with 25,000 header lines (real Postfix accepts it on port 25) does not break
  POP3 or IMAP probes, and nothing is left behind.
- Foreign letters with ``mrt-`` in a 100 KB Subject, or with a forged probe header, cost a probe a
  bounded number of bytes (counted by a proxy in front of Dovecot), whatever their number, and a
  letter once read is not read again.
- A probe whose mailbox cannot be opened sends no letter: the SMTP session ends before DATA.
- The leftover sweep runs once per SWEEP_EVERY per mailbox, in a phase of its own, never inside
  delivery time.
"""

from __future__ import annotations

import secrets
import smtplib
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from typing import Any

import pytest

from exporter.legs.imap import HEADER_BYTES
from exporter.legs.mailbox import EXAMINE_BATCH
from exporter.probe.errors import Reason
from exporter.probe.watch import SWEEP_AGE, Mailbox
from tests import letters
from tests.hostile import Traffic, proxy, serve
from tests.rig import MailRig
from tests.tasks import SIGNER, FreshUsers, probe_once, task_dict, task_of

BIG_SUBJECT = 100 * 1024


def foreign(subject: str, *extra: str) -> bytes:
    headers = [
        "From: someone@example.test",
        "To: box@example.test",
        f"Subject: {subject}",
        f"Date: {formatdate()}",
        f"Message-ID: <{secrets.token_hex(8)}@example.test>",
        *extra,
    ]
    return letters.letter(headers, b"hello\r\n")


def big_subject_letter() -> bytes:
    """``mrt-`` and a token-like word in a 100 KB Subject: what a careless or hostile sender makes."""
    return foreign(f"mrt-{secrets.token_hex(4)}-{secrets.token_hex(8)} " + "x" * BIG_SUBJECT)


def forged_header_letter() -> bytes:
    """Our dedicated header with a forged token, and a 100 KB Subject: the sweep's search matches it."""
    return foreign("hello " + "x" * BIG_SUBJECT, f"X-Mail-Roundtrip-Probe: mrt-1-{secrets.token_hex(8)}-forged")


def many_header_lines(count: int = 25_000) -> bytes:
    return foreign("many headers", *(f"X-Line-{i}: {i}" for i in range(count)))


def send_on_port_25(rig: MailRig, user: str, raw: bytes) -> None:
    """Through the real Postfix, as any sender on the internet could."""
    with smtplib.SMTP("127.0.0.1", rig.ports.smtp, timeout=60) as client:
        client.sendmail("someone@example.test", [rig.address(user)], raw)


@pytest.fixture
async def counted(rig: MailRig) -> AsyncIterator[tuple[int, Traffic]]:
    """A proxy in front of Dovecot's clear-text IMAP port that counts what the server sends."""
    traffic = Traffic()
    async with serve(proxy("127.0.0.1", rig.ports.imap, traffic)) as server:
        yield server.port, traffic


def counted_task(rig: MailRig, user: str, port: int) -> dict[str, Any]:
    task = task_dict(rig, user, mailbox="imap-plain")
    task["incoming"]["host"] = f"127.0.0.1:{port}"
    return task


@pytest.mark.parametrize("mailbox", ["pop3s", "imaps"])
async def test_a_letter_with_25000_header_lines_breaks_no_probe(
    rig: MailRig, fresh_users: FreshUsers, mailbox: str
) -> None:
    user = fresh_users.take()
    raw = many_header_lines()
    send_on_port_25(rig, user, raw)
    rig.wait_for(lambda: rig.messages(user), 60, "the foreign letter in the mailbox")
    task = task_dict(rig, user, mailbox=mailbox)
    box = Mailbox(task_of(task).incoming, SIGNER)
    for _ in range(2):
        result = await probe_once(task, box)
        assert result.success, result.error
    assert len(rig.messages(user)) == 1  # the foreign letter, and no probe letter left behind
    assert b"X-Line-24999: 24999" in rig.messages(user)[0].read_bytes()


@pytest.mark.parametrize("make", [big_subject_letter, forged_header_letter])
async def test_foreign_letters_cost_a_probe_bounded_bytes(
    rig: MailRig, fresh_users: FreshUsers, counted: tuple[int, Traffic], make: Callable[[], bytes]
) -> None:
    """More foreign letters than one look examines: the first probe (which sweeps) reads at most
    EXAMINE_BATCH header blocks of HEADER_BYTES each; the next probe reads none of them again."""
    user = fresh_users.take()
    count = EXAMINE_BATCH + 20
    for _ in range(count):
        rig.deliver_raw(user, make())
    port, traffic = counted
    task = counted_task(rig, user, port)
    box = Mailbox(task_of(task).incoming, SIGNER)
    per_probe = []
    for _ in range(2):
        before = traffic.to_client
        result = await probe_once(task, box)
        assert result.success, result.error
        per_probe.append(traffic.to_client - before)
    session_overhead = 64 * 1024  # greeting, capabilities, SELECT, the probe letter's own fetch and replies
    assert per_probe[0] < EXAMINE_BATCH * (HEADER_BYTES + 256) + session_overhead, per_probe
    assert per_probe[1] < session_overhead, per_probe  # nothing foreign read twice, no sweep again
    assert len(rig.messages(user)) == count  # all foreign letters kept


@pytest.mark.parametrize(
    ("mailbox", "reason"),
    [("imaps", Reason.AUTH), ("pop3s", Reason.AUTH), ("imaps", Reason.CONNECT), ("pop3s", Reason.CONNECT)],
)
async def test_a_mailbox_that_cannot_be_opened_gets_no_letter(
    rig: MailRig, fresh_users: FreshUsers, mailbox: str, reason: Reason
) -> None:
    user = fresh_users.take()
    task = task_dict(rig, user, mailbox=mailbox)
    if reason is Reason.AUTH:
        task["incoming"]["password"] = "wrong-password"
    else:
        task["incoming"]["host"] = "127.0.0.1:1"  # nothing listens on port 1
    result = await probe_once(task)
    assert result.reason is reason, result.error
    assert result.failed_phase is not None and result.failed_phase.startswith("mailbox_"), result.failed_phase
    assert result.accepted_wall is None  # the SMTP session ended before DATA
    assert rig.queue_ids() == []
    assert rig.messages(user) == []


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_the_sweep_is_bounded_and_outside_delivery_time(
    rig: MailRig, fresh_users: FreshUsers, mailbox: str
) -> None:
    """The first probe of a mailbox sweeps a leftover in phase mailbox_sweep; the next probe (within
    SWEEP_EVERY) does not sweep again, so a leftover that appeared meanwhile stays until the next sweep."""
    user = fresh_users.take()
    old = SIGNER.new_token(now=time.time() - SWEEP_AGE - 600)
    rig.deliver_raw(user, letters.probe_letter(old))
    task = task_dict(rig, user, mailbox=mailbox)
    box = Mailbox(task_of(task).incoming, SIGNER)
    first = await probe_once(task, box)
    assert first.success, first.error
    assert first.swept == 1
    assert "mailbox_sweep" in first.phases
    later = SIGNER.new_token(now=time.time() - SWEEP_AGE - 600)
    rig.deliver_raw(user, letters.probe_letter(later))
    second = await probe_once(task, box)
    assert second.success, second.error
    assert second.swept == 0
    assert len(rig.messages(user)) == 1
    box.next_sweep = float("-inf")  # the sweep is due again
    third = await probe_once(task, box)
    assert third.success, third.error
    assert third.swept == 1
    assert rig.messages(user) == []

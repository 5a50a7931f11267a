"""Round trips against the real Postfix + Dovecot rig: every security mode, and the failures a
mail administrator meets (wrong password, unknown recipient, bad certificate, mail stuck in queue)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from exporter.letter.compose import build_letter
from exporter.letter.token import Signer
from exporter.probe.errors import Reason
from exporter.probe.watch import Mailbox
from tests.rig import MailRig
from tests.tasks import MAILBOX_LEGS, SIGNER, SMTP_LEGS, config_of, probe_once, task_dict, task_of

USERS = ("rt-a", "rt-b", "rt-c", "rt-d")


@pytest.fixture(scope="module")
def users(rig: MailRig) -> Iterator[tuple[str, ...]]:
    rig.add_users(USERS)
    yield USERS


@pytest.fixture
def user(rig: MailRig, users: tuple[str, ...]) -> Iterator[str]:
    """rt-a with an empty mailbox, and nothing left in the Postfix queue afterwards."""
    rig.clear_mailbox(users[0])
    yield users[0]
    rig.release()


def leftover_probe_letters(rig: MailRig, user: str) -> list[Path]:
    return [p for p in rig.messages(user) if b"X-Mail-Roundtrip-Probe" in p.read_bytes()]


@pytest.mark.parametrize("smtp", list(SMTP_LEGS))
async def test_each_smtp_mode(rig: MailRig, user: str, smtp: str) -> None:
    result = await probe_once(task_dict(rig, user, smtp=smtp, mailbox="imaps"))
    assert result.success, result.error
    _, security, auth = SMTP_LEGS[smtp]
    assert ("smtp_tls" in result.phases) == (security != "none")
    assert ("smtp_auth" in result.phases) == auth
    assert {"smtp_connect", "smtp_greeting", "smtp_submit"} <= set(result.phases)
    assert result.smtp_reply is not None and "queued as" in result.smtp_reply
    assert (result.smtp.tls is not None) == (security != "none")
    assert result.smtp.tls is None or result.smtp.tls.not_after is not None
    assert result.delivery_seconds is not None and result.delivery_seconds >= 0
    assert leftover_probe_letters(rig, user) == []


async def test_imap_commands_of_a_probe(rig: MailRig, user: str) -> None:
    """The one new letter is fetched once, with its whole header block (which also gives its
    arrival); commands that depend on the one before wait for its reply (RFC 3501 5.5)."""
    result = await probe_once(task_dict(rig, user, mailbox="imaps"))
    assert result.success, result.error
    assert result.arrival is not None and result.arrival.hops  # read from the block the FETCH brought
    assert result.transcript is not None
    lines = [(line.sent, line.text.partition(" ")[2]) for line in result.transcript.lines if line.leg == "mailbox"]
    sent = [text for was_sent, text in lines if was_sent]
    fetches = [text for text in sent if text.startswith("UID FETCH")]
    assert len(fetches) == 1 and "BODY.PEEK[HEADER]<0.65536>" in fetches[0], fetches
    for first, second in (("NOOP", "UID SEARCH"), ("UID STORE", "UID EXPUNGE")):
        at = next(i for i, (was_sent, text) in enumerate(lines) if was_sent and text.startswith(first))
        after = next(j for j in range(at + 1, len(lines)) if lines[j][0])  # the next command sent
        assert lines[after][1].startswith(second), lines[at : after + 1]
        assert any(not was_sent and text.startswith("OK") for was_sent, text in lines[at + 1 : after])


@pytest.mark.parametrize("mailbox", list(MAILBOX_LEGS))
async def test_each_mailbox_mode(rig: MailRig, user: str, mailbox: str) -> None:
    result = await probe_once(task_dict(rig, user, mailbox=mailbox))
    assert result.success, result.error
    security = MAILBOX_LEGS[mailbox][2]
    assert ("mailbox_tls" in result.phases) == (security != "none")
    assert {"mailbox_connect", "mailbox_login", "mailbox_search", "mailbox_delete"} <= set(result.phases)
    assert (result.mailbox.tls is not None) == (security != "none")
    assert result.mailbox.tls is None or result.mailbox.tls.not_after is not None
    assert result.server_delivery_seconds is not None  # INTERNALDATE (IMAP) or Received (POP3)
    assert leftover_probe_letters(rig, user) == []


async def test_ipv6_loopback(rig: MailRig, user: str) -> None:
    task = task_dict(rig, user)
    task["smtp"]["host"] = f"[::1]:{rig.ports.submission}"
    task["smtp"]["insecure_skip_verify"] = False
    task["incoming"]["host"] = f"[::1]:{rig.ports.imaps}"
    result = await probe_once(task)
    assert result.success, result.error
    assert result.smtp.address == "::1" and result.mailbox.address == "::1"


async def test_wrong_smtp_password(rig: MailRig, user: str) -> None:
    task = task_dict(rig, user)
    task["smtp"]["password"] = "wrong-password-123"
    result = await probe_once(task)
    assert (result.reason, result.error and result.error.split(":")[0]) == (Reason.AUTH, "smtp_auth")
    assert "wrong-password-123" not in (result.error or "")
    assert not result.sent


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_wrong_mailbox_password(rig: MailRig, user: str, mailbox: str) -> None:
    task = task_dict(rig, user, mailbox=mailbox, email_timeout="3s")
    task["incoming"]["password"] = "wrong-password-456"
    result = await probe_once(task)
    assert result.reason is Reason.AUTH, result.error
    assert result.error is not None and result.error.startswith("mailbox_login")
    assert "wrong-password-456" not in result.error


async def test_unknown_recipient(rig: MailRig, user: str) -> None:
    result = await probe_once(task_dict(rig, user, destination="nobody@example.test"))
    assert result.reason is Reason.SMTP_REJECTED, result.error
    assert result.error is not None and "nobody@example.test" in result.error and "550" in result.error


@pytest.mark.parametrize("leg", ["smtp", "incoming"])
async def test_untrusted_certificate(rig: MailRig, user: str, leg: str) -> None:
    task = task_dict(rig, user)
    del task[leg]["ca_file"]  # the rig's CA is not in the system store
    result = await probe_once(task)
    assert result.reason is Reason.TLS, result.error
    assert result.error is not None and "certificate verification failed" in result.error


async def test_insecure_skip_verify_accepts_untrusted(rig: MailRig, user: str) -> None:
    task = task_dict(rig, user, mailbox="imap-starttls")
    for leg in ("smtp", "incoming"):
        del task[leg]["ca_file"]
        task[leg]["insecure_skip_verify"] = True
    result = await probe_once(task)
    assert result.success, result.error


async def test_certificate_for_another_name(rig: MailRig, user: str) -> None:
    rig.use_server_cert("wrong_name")
    try:
        for mailbox in ("imaps", "pop3-stls"):
            result = await probe_once(task_dict(rig, user, mailbox=mailbox))
            assert result.reason is Reason.TLS, result.error
            assert result.error is not None and "Hostname mismatch" in result.error
    finally:
        rig.use_server_cert("good")


async def wait_queued(rig: MailRig) -> None:
    await asyncio.to_thread(rig.wait_for, rig.queue_ids, 10, "the probe letter to sit in the queue")


async def test_delivery_timeout_then_late_arrival_is_cleaned_up(rig: MailRig, user: str) -> None:
    late: list[str] = []
    task = task_dict(rig, user, email_timeout="1s")
    mailbox = Mailbox(task_of(task).incoming, SIGNER, on_late=lambda letter, accepted: late.append(letter.token.value))
    rig.hold()
    held = await probe_once(task, mailbox)
    assert held.reason is Reason.DELIVERY_TIMEOUT, held.error
    assert held.sent and list(mailbox.late) == [held.token]
    rig.release()
    await asyncio.to_thread(rig.wait_for, lambda: leftover_probe_letters(rig, user), 10, "the held letter")
    following = await probe_once(task, mailbox)
    assert following.success, following.error
    assert late == [held.token] and mailbox.late == {}
    assert leftover_probe_letters(rig, user) == []


async def test_letter_delayed_within_timeout(rig: MailRig, user: str) -> None:
    rig.hold()
    probe = asyncio.create_task(probe_once(task_dict(rig, user, email_timeout="30s")))
    await wait_queued(rig)
    assert not probe.done()
    rig.release()
    result = await probe
    assert result.success, result.error


def foreign_letters(rig: MailRig) -> list[bytes]:
    token = Signer(b"someone-else").new_token()
    valid_shape = build_letter(token, "x@example.test", "y@example.test", "d", "t")
    tampered = valid_shape.replace(token.value.encode()[-4:], b"0000")
    plain = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hello\r\n\r\nnot a probe\r\n"
    ours_by_subject_only = (
        b"From: a@example.test\r\nSubject: [mail-roundtrip-exporter] test letter mrt-0000000000-"
        b"0000000000000000-00000000000000000000\r\n\r\nmimic\r\n"
    )
    return [plain, valid_shape, tampered, ours_by_subject_only]


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_foreign_letters_untouched(rig: MailRig, users: tuple[str, ...], mailbox: str) -> None:
    user = users[1]
    rig.clear_mailbox(user)
    originals = foreign_letters(rig)
    for raw in originals:
        rig.deliver_raw(user, raw)
    for _ in range(3):
        result = await probe_once(task_dict(rig, user, mailbox=mailbox))
        assert result.success, result.error
    contents = sorted(path.read_bytes() for path in rig.messages(user))
    assert contents == sorted(originals)


def test_once_cli_prints_report(rig: MailRig, users: tuple[str, ...], tmp_path: Path) -> None:
    good = task_dict(rig, users[2], name="imap-ok")
    pop = task_dict(rig, users[2], name="pop3-ok", mailbox="pop3s")
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"devices": [{"name": "rig", "tasks": [good, pop]}]}))
    config_of(good, pop)  # valid as written
    run = [
        sys.executable,
        "-m",
        "exporter",
        "--once",
        "--config.file",
        str(config),
        "--signing.key-file",
        str(tmp_path / "key"),
    ]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== rig/imap-ok: OK" in done.stdout and "== rig/pop3-ok: OK" in done.stdout
    assert "smtp_submit" in done.stdout and "mailbox_search" in done.stdout and "delivery" in done.stdout

    bad = dict(good, incoming=dict(good["incoming"], password="nope"))
    config.write_text(yaml.safe_dump({"devices": [{"name": "rig", "tasks": [bad]}]}))
    failed = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "FAILED (auth)" in failed.stdout


async def test_idle_wakes_the_probe_before_the_next_poll(rig: MailRig, user: str) -> None:
    """With a poll interval longer than the test's deadline, only the server's IDLE push can end the wait."""
    task = task_dict(rig, user, mailbox="imaps", email_timeout="10m")
    task["incoming"]["poll_interval"] = "10m"
    rig.hold()
    probe = asyncio.create_task(probe_once(task))
    await wait_queued(rig)
    rig.release()
    result = await asyncio.wait_for(probe, timeout=60)
    assert result.success, result.error

"""Only the probe letter itself is ever deleted (issue 10, section 1).

Unit tests of the recogniser (exporter.message.recognise) for every letter a user or a mail system
makes of a probe letter, and real-server tests: such letters, all older than the sweep age, survive
probes over IMAP and POP3 byte for byte while a real leftover is swept; a real Postfix bounce ends
the probe with reason ``smtp_rejected`` (a rejection, only later) and never counts as delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from email.utils import formatdate

import pytest

from exporter.letter.recognise import Recognised, is_delivery_report, recognise
from exporter.letter.token import Token
from exporter.probe.errors import Reason
from exporter.probe.watch import SWEEP_AGE, Mailbox
from tests import letters
from tests.rig import MailRig
from tests.tasks import SIGNER, probe_once, task_dict, task_of


def old_token() -> Token:
    """Older than the sweep age: the sweep would take it if it thought the letter ours."""
    return SIGNER.new_token(now=time.time() - SWEEP_AGE - 600)


def own_id(token: Token) -> bytes:
    return f"<{token.value}@mail-roundtrip-exporter.invalid>".encode()


def with_header(extra: str) -> Callable[[Token], bytes]:
    return lambda token: f"{extra}\r\n".encode() + letters.probe_letter(token)


def replaced(old: Callable[[Token], bytes], new: Callable[[Token], bytes]) -> Callable[[Token], bytes]:
    return lambda token: letters.probe_letter(token).replace(old(token), new(token), 1)


def marker(token: Token) -> bytes:
    return b"X-Mail-Roundtrip-Probe: " + token.value.encode()


OTHER = SIGNER.new_token()  # another correctly signed token of ours
# Our letter with exactly one thing changed: each breaks one rule of the recogniser, and each still
# carries a correctly signed token where the old recogniser looked (dedicated header, Subject, Message-ID).
ONE_RULE_BROKEN: dict[str, Callable[[Token], bytes]] = {
    "in-reply-to": with_header("In-Reply-To: <earlier@example.test>"),
    "references": with_header("References: <earlier@example.test>"),
    "resent-from": with_header("Resent-From: user@example.test"),
    "resent-message-id": with_header("Resent-Message-ID: <r@example.test>"),
    "subject-re": replaced(lambda t: b"Subject: [", lambda t: b"Subject: Re: ["),
    "subject-extra-word": replaced(
        lambda t: t.value.encode() + b"\r\nDate", lambda t: t.value.encode() + b" ok\r\nDate"
    ),
    "message-id-other": replaced(own_id, lambda t: b"<copy@example.test>"),
    "message-id-of-other-token": replaced(own_id, lambda t: own_id(OTHER)),
    "marker-missing": replaced(lambda t: marker(t) + b"\r\n", lambda t: b""),
    "marker-forged": replaced(marker, lambda t: marker(t)[:-6] + b"000000"),
    "marker-quoted-in-words": replaced(marker, lambda t: b"X-Mail-Roundtrip-Probe: see " + t.value.encode()),
    "marker-twice": replaced(marker, lambda t: marker(t) + b"\r\n" + marker(OTHER)),
    "marker-of-other-token": replaced(marker, lambda t: marker(OTHER)),
    "content-type-digest": replaced(
        lambda t: b"text/plain; charset=us-ascii", lambda t: b"multipart/digest; boundary=x"
    ),
    "content-type-report": replaced(
        lambda t: b"text/plain; charset=us-ascii",
        lambda t: b"multipart/report; report-type=delivery-status; boundary=x",
    ),
    "content-type-message": replaced(lambda t: b"text/plain; charset=us-ascii", lambda t: b"message/rfc822"),
}


def header_block(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"


def test_our_letter_is_recognised_from_its_headers_and_whole() -> None:
    token = old_token()
    raw = letters.probe_letter(token)
    assert recognise(SIGNER, raw) == Recognised(token)
    assert recognise(SIGNER, header_block(raw)) == Recognised(token)


def test_our_letter_as_delivered_is_recognised() -> None:
    """What the servers add (trace headers, a folded Subject) does not change the letter's identity."""
    token = old_token()
    raw = letters.probe_letter(token).replace(
        b"Subject: [mail-roundtrip-exporter] test letter ", b"Subject: [mail-roundtrip-exporter] test letter\r\n\t"
    )
    delivered = (
        b"Return-Path: <probe@example.test>\r\nDelivered-To: box@example.test\r\n"
        b"Received: from mail.test by vm with LMTP; " + formatdate().encode() + b"\r\n" + raw
    )
    assert recognise(SIGNER, delivered) == Recognised(token)


@pytest.mark.parametrize("kind", list(letters.USER_LETTERS))
def test_letters_about_ours_are_not_ours(kind: str) -> None:
    raw = letters.USER_LETTERS[kind](old_token())
    assert recognise(SIGNER, raw) is None
    assert recognise(SIGNER, header_block(raw)) is None


@pytest.mark.parametrize("kind", list(ONE_RULE_BROKEN))
def test_one_broken_rule_makes_a_letter_not_ours(kind: str) -> None:
    token = old_token()
    raw = ONE_RULE_BROKEN[kind](token)
    assert raw != letters.probe_letter(token), "the variant must differ from our letter"
    assert recognise(SIGNER, raw) is None
    assert recognise(SIGNER, header_block(raw)) is None


@pytest.mark.parametrize("returned", ["message/rfc822", "text/rfc822-headers"])
def test_a_bounce_is_recognised_as_a_bounce_never_as_the_letter(returned: str) -> None:
    token = old_token()
    raw = letters.dsn(token, returned=returned)
    assert is_delivery_report(header_block(raw))
    found = recognise(SIGNER, raw)
    assert found is not None and found.token == token
    assert found.bounce == "status 5.1.1: smtp; 550 5.1.1 User doesn't exist"
    assert recognise(SIGNER, header_block(raw)) is None  # the header block alone proves nothing


def test_a_bounce_of_a_letter_that_is_not_ours_is_not_ours() -> None:
    """The returned letter must pass the whole check: a reply that bounced is no bounce of ours."""
    token = old_token()
    assert recognise(SIGNER, letters.dsn(token, original=letters.reply(token))) is None


# --- against the real servers ---------------------------------------------------------------------


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_user_letters_survive_the_sweep_byte_for_byte(rig: MailRig, mailbox: str) -> None:
    """Every letter of USER_LETTERS, its token older than the sweep age, lives through several probes
    (each sweeping); a real leftover of an earlier run and an old bounce of one are deleted."""
    user = f"safety-sweep-{mailbox}"
    rig.add_users([user])
    rig.clear_mailbox(user)
    kept = [make(old_token()) for make in letters.USER_LETTERS.values()]
    for raw in [*kept, letters.probe_letter(old_token()), letters.dsn(old_token())]:
        rig.deliver_raw(user, raw)
    task = task_dict(rig, user, mailbox=mailbox)
    box = Mailbox(task_of(task).incoming, SIGNER)
    swept = 0
    for _ in range(3):
        result = await probe_once(task, box)
        assert result.success, result.error
        swept += result.swept
    assert sorted(path.read_bytes() for path in rig.messages(user)) == sorted(kept)
    assert swept == 1  # the leftover; the bounce is deleted but is no letter


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_a_real_bounce_ends_the_probe_as_smtp_rejected(rig: MailRig, mailbox: str) -> None:
    """Postfix accepts the recipient, Dovecot's LMTP refuses it: Postfix's own DSN comes back to the
    envelope sender, the watched mailbox. The probe ends with ``smtp_rejected`` at once (long before the
    email timeout), counts nothing as delivered or late, and deletes the bounce."""
    watched = f"safety-bounce-{mailbox}"
    rig.add_users([watched])
    rig.clear_mailbox(watched)
    gone = rig.add_undeliverable(f"safety-gone-{mailbox}")
    task = task_dict(rig, watched, mailbox=mailbox, destination=gone, sender=rig.address(watched), email_timeout="60s")
    box = Mailbox(task_of(task).incoming, SIGNER)
    result = await probe_once(task, box)
    assert not result.success and result.reason is Reason.SMTP_REJECTED, result.error
    assert result.error is not None and "bounced: status 5.1.1: smtp; 550" in result.error, result.error
    assert "doesn't exist" in result.error
    assert result.failed_phase == "mailbox_search"
    assert result.delivery_seconds is None and box.late == {}
    assert rig.messages(watched) == []  # the bounce was provably of our letter: deleted
    assert result.finished - result.started < 60  # ended by the bounce, not by the email timeout

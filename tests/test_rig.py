"""Sanity tests of the mail rig, using only the standard library clients.

They use user4 and user5 only, and leave both mailboxes and the queue empty.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig import HOSTS, MailRig, port_open

TIMEOUT = 10.0
SENDER = "sender@outside.test"


@pytest.fixture(autouse=True)
def _clean_mailboxes(rig: MailRig) -> Iterator[None]:
    """Whatever a test leaves in user4/user5 (e.g. after a failure) is deleted."""
    yield
    for user in ("user4", "user5"):
        rig.clear_mailbox(user)


def _letter(token: str) -> bytes:
    return (
        f"From: {SENDER}\r\nSubject: rig test {token}\r\nMessage-ID: <{token}@outside.test>\r\n\r\nbody {token}\r\n"
    ).encode()


def _wait_delivered(rig: MailRig, user: str, token: str) -> Path:
    def find() -> Path | None:
        for path in rig.messages(user):
            if token.encode() in path.read_bytes():
                return path
        return None

    return rig.wait_for(find, TIMEOUT, f"letter {token} in the Maildir of {user}")


def _tls_context(rig: MailRig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(rig.ca_file))


def _imap_fetch_and_delete(rig: MailRig, host: str, login: str, user: str, token: str) -> bytes:
    with imaplib.IMAP4(host, rig.ports.imap, timeout=TIMEOUT) as imap:
        imap.login(login, rig.password(user))
        imap.select("INBOX")
        _, data = imap.search(None, "SUBJECT", token)
        numbers = data[0].split()
        assert len(numbers) == 1, data
        _, fetched = imap.fetch(numbers[0].decode(), "(RFC822)")
        assert isinstance(fetched[0], tuple), fetched
        body = fetched[0][1]
        imap.store(numbers[0].decode(), "+FLAGS", "\\Deleted")
        imap.expunge()
        return body


def _pop3_retrieve(rig: MailRig, host: str, login: str, user: str, token: str) -> bytes:
    pop = poplib.POP3(host, rig.ports.pop3, timeout=TIMEOUT)
    try:
        pop.user(login)
        pop.pass_(rig.password(user))
        count, _ = pop.stat()
        letters = [b"\r\n".join(pop.retr(i)[1]) for i in range(1, count + 1)]
    finally:
        pop.quit()
    matching = [letter for letter in letters if token.encode() in letter]
    assert len(matching) == 1, letters
    return matching[0]


def test_smtp_letter_visible_over_imap_pop3_and_maildir(rig: MailRig) -> None:
    token = uuid.uuid4().hex
    with smtplib.SMTP(rig.host, rig.ports.smtp, timeout=TIMEOUT) as smtp:
        smtp.sendmail(SENDER, [rig.address("user4")], _letter(token))
    path = _wait_delivered(rig, "user4", token)
    assert path.parent.parent == rig.maildir("user4")
    # POP3 with the bare local part, IMAP with the full address: both logins work.
    assert f"body {token}".encode() in _pop3_retrieve(rig, rig.host, "user4", "user4", token)
    imap_body = _imap_fetch_and_delete(rig, rig.host, rig.address("user4"), "user4", token)
    assert f"body {token}".encode() in imap_body
    assert rig.messages("user4") == []


@pytest.mark.parametrize("host", HOSTS)
def test_both_address_families_work(rig: MailRig, host: str) -> None:
    token = uuid.uuid4().hex
    with smtplib.SMTP(host, rig.ports.smtp, timeout=TIMEOUT) as smtp:
        smtp.sendmail(SENDER, [rig.address("user5")], _letter(token))
    _wait_delivered(rig, "user5", token)
    assert token.encode() in _pop3_retrieve(rig, host, rig.address("user5"), "user5", token)
    assert token.encode() in _imap_fetch_and_delete(rig, host, rig.address("user5"), "user5", token)
    with imaplib.IMAP4_SSL(host, rig.ports.imaps, ssl_context=_tls_context(rig), timeout=TIMEOUT) as imap:
        imap.login(rig.address("user5"), rig.password("user5"))


def test_submission_requires_starttls_then_auth(rig: MailRig) -> None:
    user = rig.address("user5")
    with smtplib.SMTP(rig.host, rig.ports.submission, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("auth"), "AUTH must not be offered before STARTTLS"
        code, _ = smtp.mail(SENDER)
        assert code == 530  # 5.7.0 Must issue a STARTTLS command first
    with smtplib.SMTP(rig.host, rig.ports.submission, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=_tls_context(rig))
        smtp.ehlo()
        assert smtp.has_extn("auth")
        smtp.mail(user)
        code, _ = smtp.rcpt(user)
        assert code >= 500, "unauthenticated clients must not send"
    with smtplib.SMTP(rig.host, rig.ports.submission, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=_tls_context(rig))
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login(user, "wrong-password")
        assert failed.value.smtp_code == 535
    token = uuid.uuid4().hex
    with smtplib.SMTP(rig.host, rig.ports.submission, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=_tls_context(rig))
        smtp.login(user, rig.password("user5"))
        smtp.sendmail(user, [user], _letter(token))
    _wait_delivered(rig, "user5", token)


def test_submissions_implicit_tls_verifies_with_rig_ca(rig: MailRig) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        smtplib.SMTP_SSL(rig.host, rig.ports.submissions, timeout=TIMEOUT, context=ssl.create_default_context())
    token = uuid.uuid4().hex
    user = rig.address("user4")
    with smtplib.SMTP_SSL(rig.host, rig.ports.submissions, timeout=TIMEOUT, context=_tls_context(rig)) as smtp:
        smtp.login(user, rig.password("user4"))
        smtp.sendmail(user, [user], _letter(token))
    _wait_delivered(rig, "user4", token)


def test_unknown_recipient_rejected_at_rcpt(rig: MailRig) -> None:
    with smtplib.SMTP(rig.host, rig.ports.smtp, timeout=TIMEOUT) as smtp:
        smtp.ehlo()
        smtp.mail(SENDER)
        code, message = smtp.rcpt(f"nobody@{rig.domain}")
    assert code == 550
    assert message.startswith(b"5.1.1"), message


def test_hold_keeps_mail_queued_until_release(rig: MailRig) -> None:
    token = uuid.uuid4().hex
    rig.hold()
    try:
        with smtplib.SMTP(rig.host, rig.ports.smtp, timeout=TIMEOUT) as smtp:
            smtp.sendmail(SENDER, [rig.address("user4")], _letter(token))
        # "deferred" means a delivery attempt was made and refused by hold().
        rig.wait_for(
            lambda: any(e["queue_name"] == "deferred" for e in rig.queue()), TIMEOUT, "the held letter to be deferred"
        )
        assert rig.queue_ids()
        assert rig.messages("user4") == []
    finally:
        rig.release()
    _wait_delivered(rig, "user4", token)
    rig.wait_for(lambda: not rig.queue_ids(), TIMEOUT, "the queue to drain")


def test_stop_and_start_smtp(rig: MailRig) -> None:
    try:
        rig.stop_smtp()
        assert not any(port_open(host, rig.ports.smtp) for host in HOSTS)
        with pytest.raises(ConnectionRefusedError):
            smtplib.SMTP(rig.host, rig.ports.smtp, timeout=TIMEOUT)
    finally:
        rig.start_smtp()
    token = uuid.uuid4().hex
    with smtplib.SMTP(rig.host, rig.ports.smtp, timeout=TIMEOUT) as smtp:
        smtp.sendmail(SENDER, [rig.address("user4")], _letter(token))
    _wait_delivered(rig, "user4", token)


def test_deliver_raw_is_visible_over_imap(rig: MailRig) -> None:
    token = uuid.uuid4().hex
    path = rig.deliver_raw("user5", _letter(token))
    assert path in rig.messages("user5")
    body = _imap_fetch_and_delete(rig, rig.host, rig.address("user5"), "user5", token)
    assert token.encode() in body


def test_add_users_makes_a_working_account(rig: MailRig) -> None:
    (address,) = rig.add_users(["rigtest-added"])
    assert address == f"rigtest-added@{rig.domain}"
    token = uuid.uuid4().hex
    with smtplib.SMTP(rig.host, rig.ports.smtp, timeout=TIMEOUT) as smtp:
        smtp.sendmail(SENDER, [address], _letter(token))
    _wait_delivered(rig, address, token)
    assert token.encode() in _imap_fetch_and_delete(rig, rig.host, address, address, token)


def test_use_server_cert_switches_all_tls_ports(rig: MailRig) -> None:
    try:
        rig.use_server_cert("wrong_name")
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            imaplib.IMAP4_SSL(rig.host, rig.ports.imaps, ssl_context=_tls_context(rig), timeout=TIMEOUT)
        rig.use_server_cert("expired")
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            smtplib.SMTP_SSL(rig.host, rig.ports.submissions, context=_tls_context(rig), timeout=TIMEOUT)
    finally:
        rig.use_server_cert("good")
    with smtplib.SMTP_SSL(rig.host, rig.ports.submissions, context=_tls_context(rig), timeout=TIMEOUT) as smtp:
        smtp.noop()

"""The realistic mail path of tests/mailpath.py proven with the standard library's clients alone.

Submission with STARTTLS and AUTH, letters read over IMAP with STARTTLS. These tests use user2 and
user3 (user1, ``mail_path.mailbox``, is left to end-to-end tests of the exporter); every test
leaves both users' INBOX and Junk empty and the DNS records restored. Every wait for a letter or a
queue polls until a deadline that is generous for a loaded machine; the one computed wait is
remove_dkim_key()'s, until rspamd's key cache has expired by its own rule.
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import imaplib
import re
import smtplib
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage, Message
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.mailpath import GTUBE_JUNK, GTUBE_REJECT, MailPath
from tests.rig import DOMAIN, HOSTS, RigError, _pid_alive, port_open
from tests.tasks import probe_once, task_dict

USER = "user2"
OTHER = "user3"
TIMEOUT = 30.0  # far above the second or so a letter takes, far below an exporter's email timeout
RESULT = re.compile(r"\b(spf|dkim|dmarc)=(\w+)")


@pytest.fixture
def path(mail_path: MailPath) -> Iterator[MailPath]:
    yield mail_path
    mail_path.restore()
    for user in (USER, OTHER):
        mail_path.clear_mailbox(user)


def _letter(sender: str, token: str, body: str = "A clean letter.") -> bytes:
    return (
        f"From: {sender}\r\nTo: {sender}\r\nSubject: mail path {token}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{token}@{DOMAIN}>\r\n\r\n{body}\r\n"
    ).encode()


def _tls(path: MailPath) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(path.ca_file))


def _submit(path: MailPath, user: str, recipient: str, raw: bytes, mail_options: tuple[str, ...] = ()) -> None:
    """Submit as a mail client does: port 587, STARTTLS, AUTH."""
    sender = path.address(user)
    with smtplib.SMTP(path.host, path.ports.submission, timeout=TIMEOUT) as smtp:
        smtp.starttls(context=_tls(path))
        smtp.login(sender, path.password(user))
        smtp.sendmail(sender, [recipient], raw, mail_options=list(mail_options))


def _wait_letter(
    path: MailPath, user: str, folder: str, token: str, accept: Callable[[EmailMessage], bool] = lambda _: True
) -> EmailMessage:
    """The first letter in ``folder`` that mentions ``token`` and that ``accept`` takes; polls on one session."""
    with imaplib.IMAP4(path.host, path.ports.imap, timeout=TIMEOUT) as imap:
        imap.starttls(ssl_context=_tls(path))
        imap.login(path.address(user), path.password(user))
        imap.select(folder, readonly=True)

        def find() -> EmailMessage | None:
            imap.noop()  # Dovecot reports new letters
            _, data = imap.search(None, "TEXT", token)
            for number in data[0].split():
                _, fetched = imap.fetch(number.decode(), "(BODY.PEEK[])")
                assert isinstance(fetched[0], tuple), fetched
                letter = email.message_from_bytes(fetched[0][1], policy=email.policy.default)
                assert isinstance(letter, EmailMessage)
                if accept(letter):
                    return letter
            return None

        return path.wait_for(find, TIMEOUT, f"a letter with {token} in {folder} of {user}")


def _count(path: MailPath, user: str, folder: str, token: str) -> int:
    with imaplib.IMAP4(path.host, path.ports.imap, timeout=TIMEOUT) as imap:
        imap.starttls(ssl_context=_tls(path))
        imap.login(path.address(user), path.password(user))
        imap.select(folder, readonly=True)
        _, data = imap.search(None, "TEXT", token)
        return len(data[0].split())


def _results(letter: Message) -> dict[str, str]:
    """spf/dkim/dmarc -> result from the MX's Authentication-Results (in any order)."""
    headers = letter.get_all("Authentication-Results") or []
    assert len(headers) == 1, headers
    value = str(headers[0])
    assert value.split(";")[0].strip() == MailPath.mx_hostname, value  # authserv-id: the MX
    return dict(RESULT.findall(value))


def _is_dsn(letter: Message) -> bool:
    return letter.get_content_type() == "multipart/report"


def _delivery_status(dsn: Message) -> list[Message]:
    """The per-message and per-recipient field groups of the DSN's message/delivery-status part (RFC 3464)."""
    assert dsn.get_param("report-type") == "delivery-status", dsn["Content-Type"]
    for part in dsn.walk():
        if part.get_content_type() == "message/delivery-status":
            groups = part.get_payload()
            assert isinstance(groups, list)
            return [group for group in groups if isinstance(group, Message)]
    raise AssertionError(f"no message/delivery-status part in {dsn}")


def test_a_clean_letter_reaches_the_inbox_signed_and_checked(path: MailPath) -> None:
    dmarc_queries = path.dns.server.count(f"_dmarc.{DOMAIN}", "TXT")
    token = uuid.uuid4().hex
    _submit(path, USER, path.address(USER), _letter(path.address(USER), token))
    letter = _wait_letter(path, USER, "INBOX", token)
    assert _results(letter) == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}, letter
    assert path.dns.server.count(f"_dmarc.{DOMAIN}", "TXT") > dmarc_queries  # rspamd asked the test's DNS
    signature = str(letter["DKIM-Signature"])
    assert f"d={DOMAIN};" in signature and f"s={path.selector};" in signature, signature
    assert str(letter["X-Spam-Status"]).startswith("No, score="), letter
    assert letter[path.spam_header] is None
    # Three hops, newest first: Dovecot's LMTP, the MX, the submission server; each with a date.
    received = [str(value) for value in letter.get_all("Received") or []]
    assert len(received) >= 2, received
    assert any(f"by {path.mx_hostname} (Postfix)" in hop for hop in received), received
    assert any(f"by {path.hostname} (Postfix) with ESMTPSA" in hop for hop in received), received
    stamps = [email.utils.parsedate_to_datetime(hop.rsplit(";", 1)[1].strip()) for hop in received]
    assert stamps == sorted(stamps, reverse=True), received  # one clock: later hops never earlier


def test_a_letter_with_rspamds_add_header_gtube_lands_in_junk(path: MailPath) -> None:
    token = uuid.uuid4().hex
    _submit(path, USER, path.address(USER), _letter(path.address(USER), token, f"Buy now!\r\n{GTUBE_JUNK}"))
    letter = _wait_letter(path, USER, path.junk_folder, token)
    assert letter[path.spam_header] == "Yes", letter
    assert _count(path, USER, "INBOX", token) == 0  # sieve filed it once, into Junk alone


def test_a_letter_that_scores_as_spam_lands_in_junk_with_its_checks(path: MailPath) -> None:
    token = uuid.uuid4().hex
    _submit(path, USER, path.address(USER), _letter(path.address(USER), token, f"Offer: {path.spam_mark}"))
    letter = _wait_letter(path, USER, path.junk_folder, token)
    assert letter[path.spam_header] == "Yes", letter
    assert str(letter["X-Spam-Status"]).startswith("Yes, score="), letter
    assert str(letter["X-Rspamd-Action"]) == "add header", letter
    assert "MAILPATH_SPAM_MARK" in str(letter["X-Spamd-Result"]), letter
    assert _results(letter) == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}, letter
    assert _count(path, USER, "INBOX", token) == 0


def test_the_junk_folder_has_the_junk_special_use(path: MailPath) -> None:
    with imaplib.IMAP4(path.host, path.ports.imap, timeout=TIMEOUT) as imap:
        imap.starttls(ssl_context=_tls(path))
        imap.login(path.address(OTHER), path.password(OTHER))
        # RFC 6154: LIST (SPECIAL-USE) returns the folders that have a special use.
        typ, data = imap._simple_command("LIST", "(SPECIAL-USE)", '""', "*")
        _, lines = imap._untagged_response(typ, data, "LIST")
    assert [line for line in lines if isinstance(line, bytes)] == [f'(\\Junk) "." {path.junk_folder}'.encode()], lines


# What rspamd concludes when the DNS records change (rspamd 3.4 reports a missing DKIM key as
# dkim=none ("invalid DKIM record"), not as fail). DMARC passes when either SPF or DKIM passes
# aligned (RFC 7489 4.2), so it fails only when both do; rspamd's DMARC module enforces no policy
# unless configured to, so every one of these letters is delivered to the INBOX, scored.
DNS_CASES = {
    "spf broken": (("break_spf",), {"spf": "fail", "dkim": "pass", "dmarc": "pass"}),
    "dkim key removed": (("remove_dkim_key",), {"spf": "pass", "dkim": "none", "dmarc": "pass"}),
    "both": (("break_spf", "remove_dkim_key"), {"spf": "fail", "dkim": "none", "dmarc": "fail"}),
    "both, then restored": (
        ("break_spf", "remove_dkim_key", "restore"),
        {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
    ),
}


@pytest.mark.parametrize("case", DNS_CASES)
def test_changed_dns_records_change_the_results(path: MailPath, case: str) -> None:
    changes, expected = DNS_CASES[case]
    for change in changes:
        getattr(path, change)()
    token = uuid.uuid4().hex
    _submit(path, USER, path.address(USER), _letter(path.address(USER), token))
    letter = _wait_letter(path, USER, "INBOX", token)
    assert _results(letter) == expected, letter
    assert str(letter["X-Rspamd-Action"]) == "no action", letter


def test_an_unknown_recipient_bounces_at_once(path: MailPath) -> None:
    token = uuid.uuid4().hex
    started = time.monotonic()
    _submit(path, USER, path.unknown_recipient, _letter(path.address(USER), token))
    dsn = _wait_letter(path, USER, "INBOX", token, _is_dsn)
    took = time.monotonic() - started
    message_fields, recipient_fields = _delivery_status(dsn)[:2]
    assert str(message_fields["Reporting-MTA"]) == f"dns; {path.hostname}", dsn
    assert str(recipient_fields["Final-Recipient"]) == f"rfc822; {path.unknown_recipient}", dsn
    assert str(recipient_fields["Action"]) == "failed", dsn
    assert str(recipient_fields["Status"]) == "5.1.1", dsn
    assert str(recipient_fields["Remote-MTA"]) == "dns; 127.0.0.1", dsn  # the relay is [127.0.0.1]:port
    assert "550 5.1.1" in str(recipient_fields["Diagnostic-Code"]), dsn
    assert str(dsn["From"]).startswith("Mail Delivery System <MAILER-DAEMON@"), dsn
    # A permanent refusal: nothing of it waits in the submission server's queue for a retry.
    assert not [entry for entry in path.queue() if entry.get("sender") == path.address(USER)], path.queue()
    print(f"DSN for an unknown recipient in the INBOX after {took:.2f}s")  # shown with pytest -s


def test_standard_gtube_is_refused_at_the_mx_and_bounces(path: MailPath) -> None:
    token = uuid.uuid4().hex
    raw = _letter(path.address(USER), token, f"Spam!\r\n{GTUBE_REJECT}")
    # RET=HDRS: the DSN returns the headers alone; with the body it would carry GTUBE and be refused too.
    _submit(path, USER, path.address(USER), raw, mail_options=("RET=HDRS",))
    dsn = _wait_letter(path, USER, "INBOX", token, _is_dsn)
    recipient_fields = _delivery_status(dsn)[1]
    assert str(recipient_fields["Status"]) == "5.7.1", dsn
    assert "554 5.7.1" in str(recipient_fields["Diagnostic-Code"]), dsn
    assert _count(path, USER, path.junk_folder, token) == 0


def test_the_dns_server_publishes_spf_dkim_and_dmarc(path: MailPath) -> None:
    host, port = path.dns.server.address

    def txt(name: str) -> list[str]:
        reply = dns.query.udp(dns.message.make_query(name, "TXT"), host, port=port, timeout=5)
        return [b"".join(item.strings).decode() for rrset in reply.answer for item in rrset]

    assert txt(DOMAIN) == ["v=spf1 ip4:127.0.0.1 -all"]
    (key,) = txt(f"{path.selector}._domainkey.{DOMAIN}")
    assert key.startswith("v=DKIM1; k=rsa; p=MII"), key  # a 2048-bit key is longer than one string
    assert txt(f"_dmarc.{DOMAIN}") == ["v=DMARC1; p=reject; adkim=s; aspf=s"]
    path.break_spf()
    assert txt(DOMAIN) == ["v=spf1 ip4:192.0.2.1 -all"]
    path.remove_dkim_key()
    assert txt(f"{path.selector}._domainkey.{DOMAIN}") == []
    path.restore()
    assert txt(DOMAIN) == ["v=spf1 ip4:127.0.0.1 -all"]
    assert txt(f"{path.selector}._domainkey.{DOMAIN}") == [key]


def test_stop_leaves_no_process_port_or_file() -> None:
    path = MailPath(users=1).start()
    try:
        pids = path.pids()
        ports = [path.mx_port, path.opendkim_port, path.rspamd_port, path.ports.submission, path.ports.imap]
        directory = path.dir
        assert all(_pid_alive(pid) for pid in pids.values()), pids
    finally:
        path.stop()
    assert not [name for name, pid in pids.items() if _pid_alive(pid)], pids
    assert not [port for port in ports for host in HOSTS if port_open(host, port)], ports
    assert not Path(directory).exists()
    with pytest.raises(RigError):
        _ = path.dns


def test_hold_keeps_letters_at_the_submission_server(path: MailPath) -> None:
    token = uuid.uuid4().hex
    path.hold()
    try:
        _submit(path, USER, path.address(USER), _letter(path.address(USER), token))
        path.wait_for(
            lambda: any(entry["queue_name"] == "deferred" for entry in path.queue()), TIMEOUT, "the held letter"
        )
        assert _count(path, USER, "INBOX", token) == 0
    finally:
        path.release()
    letter = _wait_letter(path, USER, "INBOX", token)
    assert _results(letter) == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}, letter


def test_a_user_added_later_gets_letters_through_the_mx(path: MailPath) -> None:
    (address,) = path.add_users([f"later-{uuid.uuid4().hex[:8]}"])
    token = uuid.uuid4().hex
    _submit(path, USER, address, _letter(path.address(USER), token))
    letter = _wait_letter(path, address, "INBOX", token)
    assert _results(letter) == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}, letter


async def test_the_exporter_probes_through_the_path(path: MailPath) -> None:
    """The exporter as it is, over the path: submission with STARTTLS and AUTH, IMAPS, letter found."""
    result = await probe_once(task_dict(path, OTHER, smtp="submission-starttls-auth", mailbox="imaps"))
    assert result.success, result.error
    assert result.delivery_seconds is not None
    print(f"exporter round trip over the mail path: delivery {result.delivery_seconds:.2f}s")

"""Letters that quote, answer, wrap or report on a probe letter: what users and mail systems make of
one. The exporter must delete none of them (but a bounce, which it may delete as provably its own)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from email.utils import formatdate

from exporter.letter.compose import build_letter
from exporter.letter.token import Signer, Token

PROBE_FROM = "probe@example.test"
PROBE_TO = "box@example.test"


def probe_letter(token: Token) -> bytes:
    return build_letter(token, PROBE_FROM, PROBE_TO, "d", "t")


def letter(headers: list[str], body: bytes) -> bytes:
    return "".join(f"{line}\r\n" for line in headers).encode() + b"\r\n" + body


def subject(token: Token) -> str:
    return f"[mail-roundtrip-exporter] test letter {token.value}"


def user_headers(token: Token, subject_line: str, content_type: str, *extra: str) -> list[str]:
    return [
        "From: user@example.test",
        f"To: {PROBE_FROM}",
        f"Subject: {subject_line}",
        f"Date: {formatdate(token.created + 60)}",
        f"Message-ID: <user-{token.value[-8:]}@example.test>",
        *extra,
        "MIME-Version: 1.0",
        f"Content-Type: {content_type}",
    ]


def quoted(raw: bytes) -> bytes:
    return b"".join(b"> " + line + b"\r\n" for line in raw.split(b"\r\n"))


def reply(token: Token) -> bytes:
    own_id = f"<{token.value}@mail-roundtrip-exporter.invalid>"
    headers = user_headers(
        token,
        f"Re: {subject(token)}",
        "text/plain; charset=us-ascii",
        f"In-Reply-To: {own_id}",
        f"References: {own_id}",
    )
    return letter(
        headers, b"What is this letter? Please stop.\r\n\r\nThe monitor wrote:\r\n" + quoted(probe_letter(token))
    )


def reply_with_new_subject(token: Token) -> bytes:
    """A reply whose subject the user changed: the token is left in References only."""
    headers = user_headers(
        token,
        "who sends these?",
        "text/plain; charset=us-ascii",
        f"References: <{token.value}@mail-roundtrip-exporter.invalid>",
    )
    return letter(headers, b"Asking the admin.\r\n")


def forward_inline(token: Token) -> bytes:
    headers = user_headers(token, f"Fwd: {subject(token)}", "text/plain; charset=us-ascii")
    return letter(headers, b"FYI\r\n\r\n---------- Forwarded message ---------\r\n" + probe_letter(token))


def forward_attached(token: Token) -> bytes:
    """A forward with the probe letter as message/rfc822 and a PDF beside it."""
    pdf = base64.encodebytes(b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n").replace(b"\n", b"\r\n")
    headers = user_headers(token, f"Fwd: {subject(token)}", 'multipart/mixed; boundary="b1"')
    body = (
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee the attached letter and the invoice\r\n"
        b"--b1\r\nContent-Type: message/rfc822\r\n\r\n" + probe_letter(token) + b"\r\n"
        b"--b1\r\nContent-Type: application/pdf; name=invoice.pdf\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=invoice.pdf\r\n\r\n" + pdf + b"--b1--\r\n"
    )
    return letter(headers, body)


def quoted_in_body(token: Token) -> bytes:
    headers = user_headers(token, "a strange letter", "text/plain; charset=us-ascii")
    return letter(
        headers,
        b"I got one with "
        + token.value.encode()
        + b" in it. X-Mail-Roundtrip-Probe: "
        + token.value.encode()
        + b"\r\n",
    )


def digest(token: Token) -> bytes:
    headers = user_headers(token, f"probes Digest, Vol 1, Issue 1: {subject(token)}", 'multipart/digest; boundary="d1"')
    body = b"--d1\r\n\r\n" + probe_letter(token) + b"\r\n--d1--\r\n"
    return letter(headers, body)


def resent(token: Token) -> bytes:
    """The letter itself, redirected by a user (RFC 5322 Resent-* fields on top of the original)."""
    return letter(
        [
            "Resent-From: user@example.test",
            f"Resent-To: {PROBE_FROM}",
            f"Resent-Date: {formatdate(token.created + 60)}",
            f"Resent-Message-ID: <resent-{token.value[-8:]}@example.test>",
        ],
        b"",
    )[:-2] + probe_letter(token)


def edited_as_new(token: Token) -> bytes:
    """ "Edit as new": every header copied but a fresh Message-ID."""
    own_id = f"<{token.value}@mail-roundtrip-exporter.invalid>".encode()
    return probe_letter(token).replace(own_id, b"<copy-" + token.value[-8:].encode() + b"@example.test>")


def dsn(token: Token, action: str = "failed", returned: str = "message/rfc822", original: bytes | None = None) -> bytes:
    """A delivery status notification in Postfix's shape (RFC 3464), returning the probe letter."""
    original = original if original is not None else probe_letter(token)
    if returned == "text/rfc822-headers":
        original = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    headers = [
        "From: Mail Delivery System <MAILER-DAEMON@mail.test>",
        "Subject: Undelivered Mail Returned to Sender",
        f"To: {PROBE_FROM}",
        f"Date: {formatdate(token.created + 1)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="r1"',
        f"Message-Id: <dsn-{token.value[-8:]}@mail.test>",
    ]
    body = (
        b"--r1\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        b"--r1\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mail.test\r\n\r\n"
        b"Final-Recipient: rfc822; "
        + PROBE_TO.encode()
        + b"\r\nAction: "
        + action.encode()
        + b"\r\nStatus: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 User doesn't exist\r\n\r\n"
        b"--r1\r\nContent-Type: " + returned.encode() + b"\r\n\r\n" + original + b"\r\n--r1--\r\n"
    )
    return letter(headers, body)


def forwarded_dsn(token: Token) -> bytes:
    headers = user_headers(token, "Fwd: Undelivered Mail Returned to Sender", 'multipart/mixed; boundary="f1"')
    body = b"--f1\r\nContent-Type: message/rfc822\r\n\r\n" + dsn(token) + b"\r\n--f1--\r\n"
    return letter(headers, body)


def delay_warning(token: Token) -> bytes:
    """A DSN that says only "delayed": no failure, so neither a bounce nor ours to delete."""
    return dsn(token, action="delayed")


def dsn_of_forged(token: Token) -> bytes:
    """A DSN returning a letter signed with another key."""
    return dsn(token, original=probe_letter(Signer(b"another-install").new_token(now=token.created)))


# Realistic letters a user or a mail system makes of a probe letter: none is the letter itself.
USER_LETTERS: dict[str, Callable[[Token], bytes]] = {
    "reply": reply,
    "reply-new-subject": reply_with_new_subject,
    "forward-inline": forward_inline,
    "forward-attached-pdf": forward_attached,
    "token-quoted-in-body": quoted_in_body,
    "digest": digest,
    "resent": resent,
    "edited-as-new": edited_as_new,
    "forwarded-bounce": forwarded_dsn,
    "delay-warning": delay_warning,
    "bounce-of-forged": dsn_of_forged,
}

"""Is a letter in the mailbox our probe letter itself, or a bounce of one? Nothing else is ever ours.

A token alone never makes a letter ours: replies, forwards, digests and bounces quote it too. Only
``recognise`` decides, from the letter's own identity (see there); the probe deletes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32

from exporter.letter.compose import HEADER, message_id, subject
from exporter.letter.fields import field_values
from exporter.letter.token import Signer, Token
from exporter.sanitise import server_text

# Headers that mark a letter as made from another one (a reply, a forward, a resend) rather than as
# the letter itself. Resent-* is added by "redirect"/"bounce" in mail programs (RFC 5322 3.6.6).
_DERIVED = (
    "In-Reply-To",
    "References",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Bcc",
    "Resent-Message-ID",
)
# The probe letter is text/plain; a gateway that appends a disclaimer may wrap it in these. Anything
# else (multipart/report, multipart/digest, message/*, ...) is a letter about or around ours.
_OWN_CONTENT_TYPES = ("text/plain", "multipart/mixed", "multipart/alternative")
# Every header field the recogniser reads: IMAP fetches exactly these (POP3 gets the whole block).
RECOGNISED_FIELDS = (HEADER, "Message-ID", "Subject", "Content-Type", *_DERIVED)
BOUNCE_BYTES = 64 * 1024  # how much of a bounce is read: its report and the returned headers come first


@dataclass(frozen=True)
class Recognised:
    """A letter that is provably ours: the probe letter of ``token``, or a bounce of it."""

    token: Token
    bounce: str | None = (
        None  # for a bounce (DSN): its status and diagnostic ("status 5.1.1: smtp; 550 ..."), printable
    )


def recognise(signer: Signer, raw: bytes) -> Recognised | None:
    """Is this (a header block, or a whole letter) our probe letter itself, or a bounce of one?

    Our letter: exactly one X-Mail-Roundtrip-Probe header that is a token signed under our key and
    nothing else, the Message-ID and the Subject we generate for that same token (exactly), none of
    In-Reply-To, References or Resent-*, and a text/plain (or mixed/alternative) body. A reply, a
    forward (inline or attached), a digest, a resent letter or one that merely quotes the token
    fails at least one of these.

    A bounce: see ``bounce_of``; it needs the whole letter (the header block alone is never one).
    """
    letter = BytesParser(policy=compat32).parsebytes(raw)
    token = _own_letter(signer, letter)
    if token is not None:
        return Recognised(token)
    return bounce_of(signer, letter)


def is_delivery_report(raw_headers: bytes) -> bool:
    """Could this header block be a bounce (RFC 3464 DSN)? Then its body is worth reading."""
    return _is_delivery_report(BytesHeaderParser(policy=compat32).parsebytes(raw_headers))


def bounce_of(signer: Signer, report: Message) -> Recognised | None:
    """A bounce of our probe letter: a delivery status notification (RFC 3464: multipart/report,
    report-type=delivery-status, not itself replied to, forwarded or resent) whose status says the
    delivery failed and whose returned headers (message/rfc822 or text/rfc822-headers) pass the
    whole probe-letter check above, signature included."""
    if not _is_delivery_report(report) or not report.is_multipart():
        return None
    parts = [part for part in report.get_payload() if isinstance(part, Message)]
    failure = next((block for part in parts for block in _failed_recipients(part)), None)
    returned = [headers for part in parts if (headers := _returned_headers(part)) is not None]
    if failure is None or len(returned) != 1:
        return None
    token = _own_letter(signer, returned[0])
    if token is None:
        return None
    status, diagnostic = failure.get("Status"), failure.get("Diagnostic-Code")
    said = f"status {status or 'unknown'}" + (f": {diagnostic}" if diagnostic else "")
    return Recognised(token, bounce=server_text(said))


def _own_letter(signer: Signer, headers: Message) -> Token | None:
    markers = field_values(headers, HEADER)
    token = signer.exact(markers[0]) if len(markers) == 1 else None
    if token is None:
        return None
    if field_values(headers, "Message-ID") != [message_id(token)] or field_values(headers, "Subject") != [
        subject(token)
    ]:
        return None
    if any(name in headers for name in _DERIVED) or headers.get_content_type() not in _OWN_CONTENT_TYPES:
        return None
    return token


def _is_delivery_report(headers: Message) -> bool:
    return (
        headers.get_content_type() == "multipart/report"
        and str(headers.get_param("report-type", "")).lower() == "delivery-status"
        and not any(name in headers for name in _DERIVED)
    )


def _failed_recipients(part: Message) -> list[Message]:
    """The per-recipient blocks of a delivery-status part that report a failure (not a delay)."""
    if part.get_content_type() != "message/delivery-status" or not part.is_multipart():
        return []
    blocks = [block for block in part.get_payload() if isinstance(block, Message)]
    return [block for block in blocks if str(block.get("Action", "")).strip().lower() == "failed"]


def _returned_headers(part: Message) -> Message | None:
    """The headers of the returned letter: a message/rfc822 part's, or a text/rfc822-headers part."""
    if part.get_content_type() == "message/rfc822" and part.is_multipart():
        inner = part.get_payload(0)
        return inner if isinstance(inner, Message) else None
    if part.get_content_type() == "text/rfc822-headers":
        payload = part.get_payload(decode=True)
        return BytesHeaderParser(policy=compat32).parsebytes(payload) if isinstance(payload, bytes) else None
    return None

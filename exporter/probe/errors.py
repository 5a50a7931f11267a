"""Probe failures: one exception class per failure reason, so a probe's outcome is a small fixed set.

Every leg (dns, smtp, imap, pop3) raises only ProbeError subclasses; the probe turns them into a
result value. Messages must never contain credentials: they are shown on the status page and logged.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from enum import StrEnum


class Reason(StrEnum):
    """Why a probe failed. Used as a metric label value, so the set is small and fixed."""

    DNS = "dns"  # the host name could not be resolved
    CONNECT = "connect"  # TCP connection refused, unreachable or timed out
    TLS = "tls"  # handshake failed, certificate untrusted/expired/wrong name, STARTTLS missing
    AUTH = "auth"  # the server rejected the credentials (SMTP AUTH, IMAP LOGIN, POP3 USER/PASS)
    SMTP_REJECTED = "smtp_rejected"  # the SMTP server refused sender, recipient or data
    MAILBOX = "mailbox"  # the mailbox server refused an operation (select, search, delete)
    TIMEOUT = "timeout"  # a connected server did not answer within the completion timeout
    PROTOCOL = "protocol"  # garbage, an unexpected reply or a dropped connection
    DELIVERY_TIMEOUT = "delivery_timeout"  # the letter was sent but not found within the email timeout
    BOUNCED = "bounced"  # a bounce (DSN) of the letter came back instead of the letter


SERVER_TEXT_LIMIT = 300  # how much of one server reply an error message quotes
MESSAGE_LIMIT = 1000  # a whole error message: our words around at most a few quoted replies
HIDDEN = "********"


def server_text(raw: str | bytes, limit: int = SERVER_TEXT_LIMIT, hide: Collection[str] = ()) -> str:
    """Text a server (or anything outside our control) sent, made safe for every output: one line,
    printable, bounded, without our secrets. The one sanitiser: errors, replies and reports use it.

    Each run of whitespace (CR, LF, tab, U+2028, U+2029 ...) becomes one space, so the text can never
    start a line of its own (a forged "== task: OK" report line); every other character that is not
    printable (ESC, NUL and the other controls, bidi overrides such as U+202E, invisible format
    characters) becomes "?", so it cannot drive a terminal or reorder what a reader sees. Longer than
    ``limit`` it is cut and ends in "...". The ``hide`` strings (a password the server may echo) are
    replaced before the text is flattened and again after (so neither can rebuild one), and before it
    is cut, so no part of one survives.
    """
    text = _hidden(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw, hide)
    flat = " ".join(text.split())
    clean = _hidden("".join(c if c.isprintable() else "?" for c in flat), hide)
    return clean if len(clean) <= limit else clean[:limit] + "..."


def _hidden(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    return text


class ProbeError(Exception):
    """A probe failure with a reason, the phase it happened in and a human-readable message."""

    reason: Reason = Reason.PROTOCOL

    def __init__(self, message: str, *, phase: str | None = None) -> None:
        # Messages quote servers and libraries: sanitised here too, whichever path built them.
        message = server_text(message, MESSAGE_LIMIT)
        super().__init__(message)
        self.message = message
        self.phase = phase

    def __str__(self) -> str:
        return f"{self.phase}: {self.message}" if self.phase else self.message


class DNSFailure(ProbeError):
    reason = Reason.DNS


class ConnectFailure(ProbeError):
    reason = Reason.CONNECT


class TLSFailure(ProbeError):
    reason = Reason.TLS


class AuthFailure(ProbeError):
    reason = Reason.AUTH


class SMTPRejected(ProbeError):
    reason = Reason.SMTP_REJECTED


class MailboxFailure(ProbeError):
    reason = Reason.MAILBOX


class ServerTimeout(ProbeError):
    reason = Reason.TIMEOUT


class ProtocolFailure(ProbeError):
    reason = Reason.PROTOCOL


class DeliveryTimeout(ProbeError):
    reason = Reason.DELIVERY_TIMEOUT


class Bounced(ProbeError):
    reason = Reason.BOUNCED

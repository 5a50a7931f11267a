"""Probe failures: one exception class per failure reason, so a probe's outcome is a small fixed set.

Every leg (dns, smtp, imap, pop3) raises only ProbeError subclasses; the probe turns them into a
result value. Messages must never contain credentials: they are shown on the status page and logged.
"""

from __future__ import annotations

from enum import StrEnum

from exporter.probe.phases import Phase
from exporter.sanitise import MESSAGE_LIMIT, server_text


class Reason(StrEnum):
    """Why a probe failed. Used as a metric label value, so the set is small and fixed."""

    DNS = "dns"  # the host name could not be resolved
    CONNECT = "connect"  # TCP connection refused, unreachable or timed out
    TLS = "tls"  # handshake failed, certificate untrusted/expired/wrong name, STARTTLS missing
    AUTH = "auth"  # the server rejected the credentials (SMTP AUTH, IMAP LOGIN, POP3 USER/PASS)
    # the SMTP server refused sender, recipient or data, or a bounce (DSN) of the letter came back
    SMTP_REJECTED = "smtp_rejected"
    MAILBOX = "mailbox"  # the mailbox server refused an operation (select, search, delete)
    TIMEOUT = "timeout"  # a connected server did not answer within the completion timeout
    PROTOCOL = "protocol"  # garbage, an unexpected reply or a dropped connection
    DELIVERY_TIMEOUT = "delivery_timeout"  # the letter was sent but not found within the email timeout
    JUNK = "junk"  # the letter arrived, in the junk folder (with junk_is_failure, the default)


class ProbeError(Exception):
    """A probe failure with a reason, the phase it happened in and a human-readable message."""

    reason: Reason = Reason.PROTOCOL

    def __init__(self, message: str, *, phase: Phase | None = None) -> None:
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


class FiledAsJunk(ProbeError):
    reason = Reason.JUNK

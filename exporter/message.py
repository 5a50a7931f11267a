"""The probe letter and its token.

A token is ``<unix time>-<random>-<signature>``; the signature is an HMAC over the rest under the
install's signing key, so the exporter can prove a letter is its own before counting or deleting it.
The token travels in a dedicated header, the Subject and the Message-ID, since servers differ in
which headers they can search.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.utils import formatdate

HEADER = "X-Mail-Roundtrip-Probe"
SUBJECT_PREFIX = "[mail-roundtrip-exporter] test letter"
TOKEN_PREFIX = "mrt-"
_TOKEN = re.compile(r"\bmrt-(\d{10})-([0-9a-f]{16})-([0-9a-f]{20})\b")


@dataclass(frozen=True)
class Token:
    value: str
    created: float  # Unix time the token was made, as written in it


class Signer:
    """Makes and checks tokens under one key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "Signer(key=********)"

    def new_token(self, now: float | None = None) -> Token:
        created = int(now if now is not None else time.time())
        base = f"mrt-{created:010d}-{secrets.token_hex(8)}"
        return Token(f"{base}-{self._sign(base)}", float(created))

    def verify(self, text: str) -> Token | None:
        """The first correctly signed token in ``text``, or None (forged, truncated or absent)."""
        for match in _TOKEN.finditer(text):
            base = match.group(0).rsplit("-", 1)[0]
            if hmac.compare_digest(self._sign(base), match.group(3)):
                return Token(match.group(0), float(match.group(1)))
        return None

    def _sign(self, base: str) -> str:
        return hmac.new(self._key, base.encode(), hashlib.sha256).hexdigest()[:20]


def build_letter(token: Token, sender: str, destination: str, device: str, task: str) -> bytes:
    """The probe letter, ready for DATA.

    Written out directly rather than with email.message: every value is ASCII without CR/LF (the
    config loader checks addresses and names), and the email package costs more CPU than the rest
    of a probe's own work put together.
    """
    headers = (
        f"From: {sender}",
        f"To: {destination}",
        f"Subject: {SUBJECT_PREFIX} {token.value}",
        f"Date: {formatdate(token.created, localtime=False)}",
        f"Message-ID: <{token.value}@mail-roundtrip-exporter.invalid>",
        f"{HEADER}: {token.value}",
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    )
    body = (
        "This is an automated test letter from mail-roundtrip-exporter, a monitor that checks",
        "that e-mail sent through the SMTP server arrives in this mailbox.",
        "",
        f"Device: {device}",
        f"Task: {task}",
        f"Token: {token.value}",
        "",
        "The monitor deletes this letter itself when it finds it. If you see it, the monitor",
        "missed it (it was late, or the monitor stopped); it is safe to delete.",
    )
    return "\r\n".join((*headers, "", *body, "")).encode("ascii", errors="replace")


def header_token(signer: Signer, raw_headers: bytes) -> Token | None:
    """The verified token of a letter, from its header block (dedicated header first, then Subject)."""
    headers = BytesHeaderParser().parsebytes(raw_headers)
    for name in (HEADER, "Subject", "Message-ID"):
        for value in headers.get_all(name) or []:
            token = signer.verify(str(value))
            if token is not None:
                return token
    return None

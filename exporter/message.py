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
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP
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


def find_candidate(text: str) -> str | None:
    """A token-shaped string in text, signed or not (for searching; never trust it without verify)."""
    match = _TOKEN.search(text)
    return match.group(0) if match else None


def build_letter(token: Token, sender: str, destination: str, device: str, task: str) -> EmailMessage:
    letter = EmailMessage(policy=SMTP)
    letter["From"] = sender
    letter["To"] = destination
    letter["Subject"] = f"{SUBJECT_PREFIX} {token.value}"
    letter["Date"] = formatdate(token.created, localtime=False)
    letter["Message-ID"] = f"<{token.value}@mail-roundtrip-exporter.invalid>"
    letter[HEADER] = token.value
    letter["Auto-Submitted"] = "auto-generated"
    letter["X-Auto-Response-Suppress"] = "All"
    letter.set_content(
        "This is an automated test letter from mail-roundtrip-exporter, a monitor that checks\n"
        "that e-mail sent through the SMTP server arrives in this mailbox.\n\n"
        f"Device: {device}\nTask: {task}\nToken: {token.value}\n\n"
        "The monitor deletes this letter itself when it finds it. If you see it, the monitor\n"
        "missed it (it was late, or the monitor stopped); it is safe to delete.\n"
    )
    return letter


def header_token(signer: Signer, raw_headers: bytes) -> Token | None:
    """The verified token of a letter, from its header block (dedicated header first, then Subject)."""
    headers = BytesHeaderParser().parsebytes(raw_headers)
    for name in (HEADER, "Subject", "Message-ID"):
        for value in headers.get_all(name) or []:
            token = signer.verify(str(value))
            if token is not None:
                return token
    return None

"""The probe letter's token: ``mrt-<unix time>-<random>-<signature>``.

The signature is an HMAC over the rest under the install's signing key (letter.keys), so the
exporter can prove a letter is its own before counting or deleting it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

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

    def exact(self, text: str) -> Token | None:
        """``text`` if it is one correctly signed token and nothing else (surrounding blanks aside);
        None if forged, truncated, absent or merely quoted among other words."""
        match = _TOKEN.fullmatch(text.strip())
        if match is None or not hmac.compare_digest(self._sign(match.group(0).rsplit("-", 1)[0]), match.group(3)):
            return None
        return Token(match.group(0), float(match.group(1)))

    def _sign(self, base: str) -> str:
        return hmac.new(self._key, base.encode(), hashlib.sha256).hexdigest()[:20]

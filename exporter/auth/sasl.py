"""The SASL mechanisms for OAuth2 bearer tokens, in one place for SMTP, IMAP and POP3.

XOAUTH2 (Google's and Microsoft's) and OAUTHBEARER (RFC 7628): the client sends one initial
response holding the user and the token. A server that refuses the token does not say so at once:
it sends a challenge, a base64 JSON object with the error (RFC 7628 3.2.2), and waits for one more
client response (an empty one for XOAUTH2, a single 0x01 for OAUTHBEARER) before it fails the
exchange. ``describe_challenge`` turns that challenge into words for the error text.
"""

from __future__ import annotations

import base64
import binascii
import json

from exporter.config.model import Mechanism
from exporter.sanitise import server_text

CHALLENGE_LIMIT = 4096  # bytes of a decoded error challenge worth reading (a few short fields)
FIELD_LIMIT = 100  # characters of each field quoted in the error text
_FIELDS = ("status", "schemes", "scope", "error", "error_description")


def initial_response(mechanism: Mechanism, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first message, before base64."""
    if mechanism is Mechanism.XOAUTH2:
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    # RFC 7628 3.1: a GS2 header naming the user (',' and '=' escaped), then key=value pairs.
    name = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={name},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()


def abort_response(mechanism: Mechanism) -> bytes:
    """What the client answers an error challenge with, so that the server ends the exchange."""
    return b"\x01" if mechanism is Mechanism.OAUTHBEARER else b""


def encoded(message: bytes) -> str:
    return base64.b64encode(message).decode("ascii")


def describe_challenge(challenge: str | bytes) -> str:
    """The server's error challenge in words: ``status 401, schemes bearer, scope mail``. The challenge
    is server text: decoded within bounds, only known short fields quoted, never trusted as JSON."""
    raw = challenge.encode("ascii", "replace") if isinstance(challenge, str) else challenge
    raw = raw.strip()
    if not raw:
        return "an empty challenge"
    try:
        decoded = base64.b64decode(raw[: CHALLENGE_LIMIT * 2], validate=True)
    except (binascii.Error, ValueError):
        return f"a challenge that is not base64: {server_text(raw, FIELD_LIMIT)}"
    try:
        fields = json.loads(decoded[:CHALLENGE_LIMIT]) if len(decoded) <= CHALLENGE_LIMIT else None
    except (ValueError, RecursionError):
        fields = None
    if not isinstance(fields, dict):
        return f"a challenge that is not a JSON object: {server_text(decoded, FIELD_LIMIT)}"
    said = [f"{key} {server_text(str(fields[key]), FIELD_LIMIT)}" for key in _FIELDS if key in fields]
    return ", ".join(said) or "a JSON challenge without a status"

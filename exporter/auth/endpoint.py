"""Asking a token endpoint for an access token (RFC 6749 4.4 client credentials, 6 refresh token).

aiohttp (already the exporter's HTTP server) makes the one POST; the answer is server text: read up
to ANSWER_LIMIT bytes, parsed as JSON defensively, each field checked. Whatever goes wrong (refused,
unreachable, a bad certificate, a timeout, garbage) is an AuthFailure whose text carries the
endpoint's ``error``/``error_description`` where it sent them, and never a secret: the client secret
and refresh token are hidden even where the endpoint echoes them.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass

import aiohttp

from exporter import __version__
from exporter.config.model import MAX_ACCESS_TOKEN, MAX_REFRESH_TOKEN, Grant, OAuth2Config, Secret
from exporter.net.tls import client_context
from exporter.probe.errors import AuthFailure
from exporter.sanitise import server_text

ANSWER_LIMIT = 64 * 1024  # a token answer is a few KB (Microsoft's JWTs included)
DEFAULT_LIFETIME = 600.0  # seconds, when the answer has no expires_in: refetched soon rather than used stale
MAX_LIFETIME = 366 * 86400.0
_VISIBLE = frozenset(chr(c) for c in range(0x21, 0x7F))  # a token goes into SASL messages: no space, no 0x01


@dataclass(frozen=True)
class Issued:
    """What the endpoint granted: the access token, for how long, and a new refresh token if it rotated it."""

    access_token: Secret
    lifetime: float  # seconds
    refresh_token: Secret | None = None


def check_access_token(value: object) -> Secret:
    """An access token as the SASL mechanisms carry it; the error never quotes it."""
    if not isinstance(value, str) or not value:
        raise ValueError("no access token")
    if len(value) > MAX_ACCESS_TOKEN or not set(value) <= _VISIBLE:
        raise ValueError(f"the access token is not 1..{MAX_ACCESS_TOKEN} printable ASCII characters")
    return Secret(value)


async def request_token(oauth: OAuth2Config, refresh_token: Secret | None, limit: float) -> Issued:
    """One token request with the configured grant; ``refresh_token`` is the one to use now (it may
    have been rotated since the config was read)."""
    assert oauth.token_url is not None and oauth.grant is not None and oauth.client_id is not None
    form = {"grant_type": oauth.grant.value, "client_id": oauth.client_id}
    hidden = [secret.reveal() for secret in (oauth.client_secret, refresh_token) if secret is not None]
    if oauth.client_secret is not None:
        form["client_secret"] = oauth.client_secret.reveal()
    if oauth.grant is Grant.REFRESH_TOKEN and refresh_token is not None:
        form["refresh_token"] = refresh_token.reveal()
    if oauth.scope is not None:
        form["scope"] = oauth.scope
    where = urllib.parse.urlsplit(oauth.token_url).netloc
    try:
        status, body = await _post(oauth, form, limit)
    except TimeoutError:
        raise AuthFailure(f"token endpoint {where}: no answer within {limit:g}s") from None
    except aiohttp.ClientError as exc:
        raise AuthFailure(f"token endpoint {where}: {_client_error(exc)}") from None
    return parse_answer(where, status, body, hidden)


async def _post(oauth: OAuth2Config, form: dict[str, str], limit: float) -> tuple[int, bytes]:
    assert oauth.token_url is not None
    # A session per request: a token is fetched once an hour or so per mailbox, and a session left
    # open between fetches would hold a connection (and its TLS settings) past a reload.
    connector = aiohttp.TCPConnector(ssl=client_context(oauth.tls), force_close=True)
    headers = {"Accept": "application/json", "User-Agent": f"mail-roundtrip-exporter/{__version__}"}
    async with (
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=limit)) as session,
        # No redirects: a redirected POST would carry the client secret somewhere not configured.
        session.post(oauth.token_url, data=form, headers=headers, allow_redirects=False) as response,
    ):
        return response.status, await _bounded(response)


async def _bounded(response: aiohttp.ClientResponse) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > ANSWER_LIMIT:
            raise aiohttp.ClientPayloadError(f"answer longer than {ANSWER_LIMIT // 1024} KiB")
    return bytes(body)


def _client_error(exc: aiohttp.ClientError) -> str:
    """Words for what failed, without aiohttp's text (it can quote the whole URL)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        error = exc.certificate_error
        return f"certificate verification failed: {server_text(getattr(error, 'verify_message', None) or str(error))}"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"unusable answer: {server_text(str(exc))}"
    return f"connection failed ({type(exc).__name__})"


def parse_answer(where: str, status: int, body: bytes, hidden: Collection[str]) -> Issued:
    """The endpoint's answer as an Issued token, or an AuthFailure saying what the endpoint said."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, RecursionError):
        data = None
    if status != 200:
        said = _oauth_error(data, hidden) or f"no OAuth2 error in the answer: {server_text(body, 100, hidden)}"
        raise AuthFailure(f"token endpoint {where} refused (HTTP {status}): {said}")
    if not isinstance(data, dict):
        raise AuthFailure(f"token endpoint {where} answered without a JSON object: {server_text(body, 100, hidden)}")
    try:
        token = check_access_token(data.get("access_token"))
        if str(data.get("token_type", "Bearer")).lower() != "bearer":
            raise ValueError(f"token_type is {server_text(str(data['token_type']), 40)!r}, not Bearer")
        rotated = data.get("refresh_token")
        return Issued(token, _lifetime(data.get("expires_in")), _refresh_token(rotated) if rotated else None)
    except ValueError as exc:
        raise AuthFailure(f"token endpoint {where} answered HTTP 200 with {exc}") from None


def _oauth_error(data: object, hidden: Collection[str]) -> str | None:
    """RFC 6749 5.2: ``error`` and ``error_description``, as the endpoint wrote them (sanitised)."""
    if not isinstance(data, dict) or not isinstance(data.get("error"), str):
        return None
    text = data["error"]
    if isinstance(data.get("error_description"), str):
        text += f": {data['error_description']}"
    return server_text(text, hide=hidden)


def _lifetime(value: object) -> float:
    """expires_in: seconds, as a number or (some endpoints) a string of one."""
    if value is None:
        return DEFAULT_LIFETIME
    try:
        seconds = float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else math.nan
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= MAX_LIFETIME:  # NaN fails every comparison
        raise ValueError(f"expires_in {server_text(str(value), 40)!r}, not a number of seconds")
    return seconds


def _refresh_token(value: object) -> Secret:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_REFRESH_TOKEN or not set(value) <= _VISIBLE:
        raise ValueError("a refresh_token that is not printable ASCII")
    return Secret(value)

"""The web config in force: basic auth and headers on every request, TLS on every new connection.

A reload reads ``--web.config.file`` again (a renewed certificate needs no restart): the new config is
checked completely first and then swapped in at once, for the next request and the next TLS
handshake; a broken file keeps the old one (and the reload metric says so). Turning TLS on or off
changes what the listening sockets speak, so that alone still needs a restart.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler

from exporter.config.model import ConfigError
from exporter.web.webconfig import WebConfig, load_web_config


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes without a bcrypt run per scrape.

    A bcrypt check costs ~50-300 ms of CPU. After one succeeds, an HMAC of that password (under a key
    that lives only in this process) is kept per user, and the next scrape compares HMACs in constant
    time. bcrypt runs in a worker thread, one at a time: a flood of wrong passwords then costs one core
    and never starves the event loop or the default thread pool the rest of the exporter uses.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = {user.encode(): hashed for user, hashed in users.items()}
        self._key = os.urandom(32)
        self._verified: dict[bytes, bytes] = {}  # user -> HMAC of the password that passed bcrypt
        self._lock = asyncio.Lock()
        self._unknown_user_hash: bytes | None = None

    async def check(self, header: str | None) -> bool:
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        digest = hmac.new(self._key, password, hashlib.sha256).digest()
        if self._cached(user, digest):
            return True
        async with self._lock:
            if self._cached(user, digest):  # verified while this request waited for the lock
                return True
            ok = await asyncio.to_thread(self._bcrypt, user, password)
        if ok:
            self._verified[user] = digest
        return ok

    def _cached(self, user: bytes, digest: bytes) -> bool:
        known = self._verified.get(user)
        return known is not None and hmac.compare_digest(known, digest)

    def _bcrypt(self, user: bytes, password: bytes) -> bool:
        hashed = self._users.get(user)
        try:
            # An unknown user still costs one bcrypt run, so that timing does not tell which names exist.
            matches = bcrypt.checkpw(password, hashed or self._dummy_hash())
        except ValueError:  # longer than bcrypt's 72 bytes: never valid
            return False
        return matches and hashed is not None

    def _dummy_hash(self) -> bytes:
        if self._unknown_user_hash is None:
            rounds = max(int(hashed[4:6]) for hashed in self._users.values())
            self._unknown_user_hash = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds))
        return self._unknown_user_hash


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


class _CurrentContext(ssl.SSLContext):
    """The listening sockets' TLS context: each new connection is wrapped by the context in force, with
    all of its settings (certificate, client CAs, versions, ciphers), so a reload reaches new
    connections without closing the listeners. asyncio creates every server-side connection with
    wrap_bio, the one method this forwards."""

    guard: WebGuard

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        context = self.guard.config.ssl_context if self.guard.config is not None else None
        if context is None:  # cannot happen: TLS cannot be turned off by a reload
            raise ssl.SSLError("TLS is off")
        return context.wrap_bio(*args, **kwargs)


class WebGuard:
    """Holds the web config in force (None: plain HTTP, no auth) and applies it to an aiohttp app."""

    def __init__(self, path: str | None, config: WebConfig | None) -> None:
        self.path = path
        self.config = config
        self._auth = _auth_of(config)
        self._listener: _CurrentContext | None = None

    @classmethod
    def load(cls, path: str | None) -> WebGuard:
        return cls(path, load_web_config(path) if path else None)

    @property
    def tls(self) -> bool:
        return self.config is not None and self.config.ssl_context is not None

    @property
    def basic_auth(self) -> bool:
        return self.config is not None and bool(self.config.users)

    def listener_context(self) -> ssl.SSLContext | None:
        """The context for the listening sockets (None without TLS)."""
        if not self.tls:
            return None
        if self._listener is None:
            self._listener = _CurrentContext(ssl.PROTOCOL_TLS_SERVER)
            self._listener.guard = self
        return self._listener

    def prepare(self) -> Callable[[], None]:
        """Read the file again and check it; what to call to put it in force. Raises if it is broken."""
        if self.path is None:
            return lambda: None
        config = load_web_config(self.path)
        if (config.ssl_context is not None) != self.tls:
            raise ConfigError(
                f"{self.path}: turning TLS on or off needs a restart (the listening sockets stay as they are)"
            )
        auth = _auth_of(config)

        def commit() -> None:
            self.config, self._auth = config, auth

        return commit

    def install(self, app: web.Application) -> None:
        """Basic auth and the configured headers, as the config in force says at each request."""

        @web.middleware
        async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
            # Every path, unknown ones and health checks included, as exporter-toolkit does.
            auth = self._auth
            if auth is not None and not await auth.check(request.headers.get("Authorization")):
                return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Basic"})
            return await handler(request)

        async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
            if self.config is not None:
                response.headers.update(self.config.headers)

        app.middlewares.append(authenticate)
        # on_response_prepare also covers 401s and aiohttp's own error pages, not just our handlers.
        app.on_response_prepare.append(add_headers)


def _auth_of(config: WebConfig | None) -> BasicAuth | None:
    return BasicAuth(config.users) if config is not None and config.users else None

"""Access tokens, cached and shared: one per (token endpoint, client id and secret, scope, user, grant).

Every task and leg that logs in with the same key uses the same token; it is fetched again ahead of
its expiry (REFRESH_AHEAD, or a quarter of a short lifetime), one fetch at a time per key (those who
ask meanwhile wait for that fetch), and dropped when a server rejects it. A failed fetch is not kept:
the next probe asks again. A refresh token the endpoint rotates replaces the configured one from then
on (in memory; in its file too when ``refresh_token_write_back`` asks for it); a different refresh
token in a reloaded config replaces both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporter.auth.endpoint import request_token
from exporter.config.model import OAuth2Config, Secret

log = logging.getLogger(__name__)

REFRESH_AHEAD = 300.0  # seconds before expiry that a token is fetched again
MAX_ENTRIES = 50_000  # keys; beyond, entries whose token expired are forgotten

# The client secret is part of the client: a task with a wrong one must not share (and spoil) the
# fetch of a task with the right one, nor the other way round.
Key = tuple[str, str, Secret | None, str, str, str]


@dataclass
class _Entry:
    configured: Secret | None  # the refresh token the config gave
    refresh_token: Secret | None  # the one to use now (rotated by the endpoint, maybe)
    token: Secret | None = None
    fresh_until: float = -math.inf  # on the cache's clock: fetch again from then on
    expires: float = -math.inf
    pending: asyncio.Task[Secret] | None = None


def key_of(oauth: OAuth2Config, user: str) -> Key:
    assert oauth.grant is not None
    client = (oauth.client_id or "", oauth.client_secret)
    return (oauth.token_url or "", *client, oauth.scope or "", user, oauth.grant.value)


class TokenCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[Key, _Entry] = {}

    async def token(self, oauth: OAuth2Config, user: str, limit: float) -> Secret:
        """A token fresh for a while yet: the cached one, or the one being fetched, or a new fetch."""
        entry = self._entry(key_of(oauth, user), oauth)
        if entry.token is not None and self._clock() < entry.fresh_until:
            return entry.token
        if entry.pending is None:
            pending = asyncio.create_task(self._fetch(entry, oauth, limit), name="oauth2 token")
            pending.add_done_callback(functools.partial(_settle, entry))
            entry.pending = pending
        # Shielded: one waiter's phase timeout must not cancel the fetch the others wait for.
        return await asyncio.shield(entry.pending)

    def reject(self, oauth: OAuth2Config, user: str, token: Secret) -> None:
        """A server refused ``token``: the next login fetches a new one (unless one came meanwhile)."""
        entry = self._entries.get(key_of(oauth, user))
        if entry is not None and entry.token == token:
            entry.token = None

    def _entry(self, key: Key, oauth: OAuth2Config) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= MAX_ENTRIES:
                self._forget_expired()
            entry = self._entries[key] = _Entry(oauth.refresh_token, oauth.refresh_token)
        elif entry.configured != oauth.refresh_token:  # the admin gave another one: it wins
            entry.configured = entry.refresh_token = oauth.refresh_token
        return entry

    def _forget_expired(self) -> None:
        now = self._clock()
        self._entries = {k: e for k, e in self._entries.items() if e.pending is not None or e.expires > now}

    async def _fetch(self, entry: _Entry, oauth: OAuth2Config, limit: float) -> Secret:
        started = self._clock()  # the lifetime counts from the request, not from its answer
        issued = await request_token(oauth, entry.refresh_token, limit)
        entry.token = issued.access_token
        entry.expires = started + issued.lifetime
        entry.fresh_until = entry.expires - min(REFRESH_AHEAD, issued.lifetime / 4)
        if issued.refresh_token is not None and issued.refresh_token != entry.refresh_token:
            entry.refresh_token = issued.refresh_token
            if oauth.refresh_token_write_back and oauth.refresh_token_file is not None:
                write_back(oauth.refresh_token_file, issued.refresh_token)
        return issued.access_token


def _settle(entry: _Entry, task: asyncio.Task[Secret]) -> None:
    if entry.pending is task:
        entry.pending = None
    if not task.cancelled():
        task.exception()  # marks a failure nobody waits for any more as seen


def write_back(path: str, refresh_token: Secret) -> None:
    """Replace the file's refresh token with the rotated one: a new file (0600, it is a secret)
    renamed over the old, so a reader never sees half of one. A failure is logged, not fatal: the
    token in memory still works until the exporter restarts."""
    directory = os.path.dirname(path) or "."
    try:
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".refresh-token-")
    except OSError as exc:
        log.warning("cannot write the rotated refresh token back", extra={"file": path, "error": exc.strerror})
        return
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(refresh_token.reveal() + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        log.warning("cannot write the rotated refresh token back", extra={"file": path, "error": exc.strerror})
    else:
        log.info("rotated refresh token written back", extra={"file": path})


TOKENS = TokenCache()  # the process's cache, shared by every task and leg

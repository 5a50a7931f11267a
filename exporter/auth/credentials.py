"""What a leg logs in with: a password, or an OAuth2 access token and its SASL mechanism.

A leg with ``oauth2`` gets its token before it connects, in a phase of its own (smtp_oauth2,
mailbox_oauth2), so no connection is opened for a login that cannot happen, and the AUTH phase
times the server alone. Anything that keeps the token from being had is reason ``auth``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exporter import files
from exporter.auth.endpoint import check_access_token
from exporter.auth.tokens import TOKENS, TokenCache
from exporter.config.model import MAX_TOKEN_FILE_BYTES, Mechanism, OAuth2Config, Secret, ServerConfig
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import AuthFailure
from exporter.probe.phases import OAUTH2_PHASE, Leg


def _keep() -> None:
    """A password is not dropped when refused: the config gave it."""


@dataclass(frozen=True)
class Credentials:
    user: str
    secret: Secret  # the password, or the access token
    mechanism: Mechanism | None = None  # None: a password, with the leg's own choice of mechanism
    # Called when the server refused the secret: a cached token is then not used again.
    rejected: Callable[[], None] = field(default=_keep, repr=False, compare=False)


def password_credentials(server: ServerConfig) -> Credentials | None:
    """The configured password, if the leg logs in with one."""
    if server.user is None or server.password is None:
        return None
    return Credentials(server.user, server.password)


def login_of(server: ServerConfig, given: Credentials | None) -> Credentials:
    """The credentials given, else the configured password (the loader requires one or the other)."""
    credentials = given or password_credentials(server)
    if credentials is None:
        raise AuthFailure("no credentials to log in with")
    return credentials


async def obtain(server: ServerConfig, clock: PhaseClock, leg: Leg, tokens: TokenCache = TOKENS) -> Credentials | None:
    """The leg's credentials; an OAuth2 token is got (cache, endpoint or token_file) in the leg's
    oauth2 phase, bounded like every phase by the completion timeout (a timeout is reason auth)."""
    oauth2, user = server.oauth2, server.user
    if oauth2 is None or user is None:
        return password_credentials(server)
    mechanism = server.mechanism or Mechanism.XOAUTH2
    async with clock.phase(OAUTH2_PHASE[leg], on_timeout=AuthFailure):
        if oauth2.token_file is not None:
            return Credentials(user, read_token_file(oauth2), mechanism)
        token = await tokens.token(oauth2, user, clock.limit)
    return Credentials(user, token, mechanism, lambda: tokens.reject(oauth2, user, token))


def read_token_file(oauth2: OAuth2Config) -> Secret:
    """The token another program keeps in token_file, read afresh each time (it may have renewed it)."""
    assert oauth2.token_file is not None
    path = Path(oauth2.token_file)
    try:
        return check_access_token(files.read_text(path, MAX_TOKEN_FILE_BYTES).strip())
    except ValueError as exc:  # files.FileError included: neither quotes the file's content
        raise AuthFailure(f"token_file {str(path)!r}: {exc}") from None

"""The ``oauth2:`` block of a leg (and its ``auth:`` mechanism): where the leg's access token comes from.

Either a grant at a token endpoint (``token_url``, ``grant``, ``client_id``, a client secret, a refresh
token for the refresh_token grant, ``scope``, ``ca_file``) or ``token_file``, a token another program
keeps fresh. Only the shape is checked here: no token is fetched at load (``--config.check`` works
offline), and a token_file may not exist yet.
"""

from __future__ import annotations

import dataclasses
import string
import urllib.parse
from collections.abc import Callable

from exporter.config.fields import Node, as_bool, as_string, as_user, certificate_file, enum_choice, shown
from exporter.config.model import (
    MAX_CLIENT_SECRET,
    MAX_REFRESH_TOKEN,
    MAX_SCOPE,
    MAX_TOKEN_FILE_BYTES,
    Grant,
    Mechanism,
    OAuth2Config,
    TLSOptions,
)
from exporter.config.secrets import Reading, SecretKind, read_secret

# RFC 6749 A.5/A.17: a scope and a refresh token are printable ASCII (a scope's words apart by spaces).
_VISIBLE = frozenset(string.printable) - frozenset(string.whitespace)
_GRANT_KEYS = ("token_url", "grant", "client_id", "scope", "ca_file", "refresh_token_write_back")


def _visible(limit: int, spaces: bool = False) -> Callable[[object], str]:
    def convert(value: object) -> str:
        text = as_string(value)
        allowed = _VISIBLE | {" "} if spaces else _VISIBLE
        if not text or len(text) > limit or not set(text) <= allowed:
            words = "printable ASCII" if spaces else "printable ASCII without spaces"
            raise ValueError(f"must be 1..{limit} characters of {words}")
        return text

    return convert


def as_client_secret(value: object) -> str:
    text = as_string(value)
    if not text or len(text) > MAX_CLIENT_SECRET:
        raise ValueError(f"must be 1..{MAX_CLIENT_SECRET} characters")
    return text


as_refresh_token = _visible(MAX_REFRESH_TOKEN)
as_scope = _visible(MAX_SCOPE, spaces=True)


CLIENT_SECRET = SecretKind("client_secret", as_client_secret, MAX_TOKEN_FILE_BYTES)
REFRESH_TOKEN = SecretKind("refresh_token", as_refresh_token, MAX_TOKEN_FILE_BYTES)


def as_token_url(value: object) -> str:
    """An https URL: the client secret and refresh token go in its request body."""
    text = as_string(value)
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port  # raises on a port that is not a number or out of range
    except ValueError:
        raise ValueError(f"{shown(text)} is not a URL") from None
    if url.scheme != "https" or not url.hostname or url.username is not None or url.fragment:
        raise ValueError(f"must be an https:// URL without user or fragment, got {shown(text)}")
    del port
    return text


def mechanism(node: Node, oauth2: bool) -> Mechanism | None:
    """``auth``: the SASL mechanism for the token; only with oauth2, and xoauth2 unless given."""
    if not oauth2:
        if node.has("auth"):
            raise node.error("auth is the SASL mechanism of an OAuth2 token: give oauth2 too", "auth")
        node.used.add("auth")
        return None
    return node.get("auth", enum_choice(Mechanism), Mechanism.XOAUTH2)


def parse_oauth2(node: Node, reading: Reading) -> OAuth2Config:
    if node.has("token_file"):
        return _token_file(node, reading)
    config = OAuth2Config(
        token_url=node.require("token_url", as_token_url),
        grant=node.require("grant", enum_choice(Grant)),
        client_id=node.require("client_id", as_user),
        client_secret=read_secret(node, reading, CLIENT_SECRET),
        refresh_token=read_secret(node, reading, REFRESH_TOKEN),
        refresh_token_file=node.get("refresh_token_file", as_string, None),
        refresh_token_write_back=node.get("refresh_token_write_back", as_bool, False),
        scope=node.get("scope", as_scope, None),
        tls=TLSOptions(ca_file=node.get("ca_file", certificate_file(reading.base_dir), None)),
    )
    _check_grant(node, config)
    node.finish()
    if config.refresh_token_file is not None:  # kept as the path the write-back replaces
        config = dataclasses.replace(config, refresh_token_file=str(reading.base_dir / config.refresh_token_file))
    return config


def _check_grant(node: Node, config: OAuth2Config) -> None:
    if config.grant is Grant.CLIENT_CREDENTIALS:
        if config.client_secret is None:
            raise node.error("grant client_credentials needs a client secret (client_secret, _env or _file)")
        if config.refresh_token is not None:
            raise node.error("a refresh token belongs to grant refresh_token, not client_credentials")
    elif config.refresh_token is None:
        raise node.error("grant refresh_token needs a refresh token (refresh_token, _env or _file)")
    if config.refresh_token_write_back and config.refresh_token_file is None:
        raise node.error("refresh_token_write_back needs refresh_token_file", "refresh_token_write_back")


def _token_file(node: Node, reading: Reading) -> OAuth2Config:
    """A token kept fresh by another program: nothing else goes with it."""
    others = [key for key in (*_GRANT_KEYS, *CLIENT_SECRET.sources, *REFRESH_TOKEN.sources) if node.has(key)]
    if others:
        raise node.error(f"token_file replaces the grant: remove {others[0]}", others[0])
    config = OAuth2Config(token_file=str(reading.base_dir / node.require("token_file", as_string)))
    node.finish()
    return config

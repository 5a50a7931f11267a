"""The token cache against the rig's token server, on a clock the test moves: refresh ahead of expiry,
one fetch at a time, rotated refresh tokens (and their write-back), counted by the server."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from exporter.auth.tokens import REFRESH_AHEAD, TokenCache
from exporter.config.model import OAuth2Config
from exporter.probe.errors import AuthFailure
from tests.oauth import grant, new_client
from tests.rig import MailRig
from tests.tasks import task_of

USER = "user3"  # these tests never log in: the mailbox only names the key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def oauth2_of(rig: MailRig, block: dict[str, object]) -> OAuth2Config:
    """The oauth2 block as the loader reads it (inside a minimal task)."""
    task = {
        "name": "t",
        "destination": rig.address(USER),
        "smtp": {"host": "localhost", "user": rig.address(USER), "oauth2": block},
        "incoming": {"protocol": "imap", "host": "localhost", "user": "u", "password": "p"},
    }
    oauth2 = task_of(task).smtp.oauth2
    assert oauth2 is not None
    return oauth2


async def test_refreshed_ahead_of_expiry_once(rig: MailRig) -> None:
    client = new_client(rig, USER, lifetime=3600)
    oauth2 = oauth2_of(rig, grant(rig, client))
    clock = Clock()
    cache = TokenCache(clock)
    user = rig.address(USER)
    first = await cache.token(oauth2, user, 10)
    clock.now += 3600 - REFRESH_AHEAD - 1  # still fresh
    assert await cache.token(oauth2, user, 10) == first
    assert rig.oauth.stats(client)["token_requests"] == 1
    clock.now += 2  # within REFRESH_AHEAD of expiry: fetched again, by one request for ten askers
    tokens = await asyncio.gather(*(cache.token(oauth2, user, 10) for _ in range(10)))
    assert len(set(tokens)) == 1 and tokens[0] != first
    assert rig.oauth.stats(client)["token_requests"] == 2


async def test_a_short_lifetime_is_refreshed_at_three_quarters(rig: MailRig) -> None:
    client = new_client(rig, USER, lifetime=60)
    oauth2 = oauth2_of(rig, grant(rig, client))
    clock = Clock()
    cache = TokenCache(clock)
    await cache.token(oauth2, rig.address(USER), 10)
    clock.now += 44
    await cache.token(oauth2, rig.address(USER), 10)
    assert rig.oauth.stats(client)["token_requests"] == 1
    clock.now += 2
    await cache.token(oauth2, rig.address(USER), 10)
    assert rig.oauth.stats(client)["token_requests"] == 2


async def test_a_failed_fetch_is_not_kept(rig: MailRig) -> None:
    client = new_client(rig, USER, mode="refuse")
    oauth2 = oauth2_of(rig, grant(rig, client))
    cache = TokenCache(Clock())
    for _ in range(2):
        with pytest.raises(AuthFailure):
            await cache.token(oauth2, rig.address(USER), 10)
    assert rig.oauth.stats(client)["token_requests"] == 2


@pytest.mark.parametrize("write_back", [False, True])
async def test_a_rotated_refresh_token_is_used_from_then_on(rig: MailRig, tmp_path: Path, write_back: bool) -> None:
    """The server answers each refresh with a new refresh token and forgets the old one: the third
    fetch works only if the second one's rotated token was used. With write-back the file holds it."""
    client = new_client(rig, USER, lifetime=60, rotate=True, secret=None)  # a public client
    refresh = tmp_path / "refresh"
    refresh.write_text(rig.oauth.refresh_token(client) + "\n")
    refresh.chmod(0o600)
    block = grant(rig, client, grant="refresh_token", refresh_token_file=str(refresh), client_secret=None)
    oauth2 = oauth2_of(rig, block | ({"refresh_token_write_back": True} if write_back else {}))
    clock = Clock()
    cache = TokenCache(clock)
    for _ in range(3):
        await cache.token(oauth2, rig.address(USER), 10)
        clock.now += 60
    stats = rig.oauth.stats(client)
    assert stats["grants"] == ["refresh_token"] * 3
    (current,) = stats["refresh_tokens"]
    if write_back:
        assert refresh.read_text() == current + "\n"
        assert stat.S_IMODE(refresh.stat().st_mode) == 0o600
        assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no temporary left
    else:
        assert refresh.read_text().strip() != current  # the file is left as the admin wrote it


async def test_a_new_refresh_token_in_the_config_wins_over_a_rotated_one(rig: MailRig) -> None:
    client = new_client(rig, USER, lifetime=60, rotate=True)
    first = oauth2_of(rig, grant(rig, client, grant="refresh_token", refresh_token=rig.oauth.refresh_token(client)))
    clock = Clock()
    cache = TokenCache(clock)
    await cache.token(first, rig.address(USER), 10)
    clock.now += 60
    # The admin logs in again and puts a new refresh token into the config (the rotated one still
    # works too; the cache must take the admin's).
    given = rig.oauth.refresh_token(client)
    second = oauth2_of(rig, grant(rig, client, grant="refresh_token", refresh_token=given))
    await cache.token(second, rig.address(USER), 10)
    assert given not in rig.oauth.stats(client)["refresh_tokens"]  # used (and rotated away) by the server

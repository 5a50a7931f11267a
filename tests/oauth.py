"""OAuth2 task configs for the tests: the rig's legs, logging in with tokens from the rig's token server."""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.oauthserver import Client
from tests.rig import MailRig
from tests.tasks import mailbox_leg, smtp_leg, task_dict

SECRET = "client-s3cret"
SCOPE = "https://outlook.office365.com/.default"
_serial = itertools.count(1)


def new_client(rig: MailRig, user: str, **options: Any) -> str:
    """A client of the token server whose tokens open ``user``'s mailbox; its id is new to the
    session, so its request counts are this test's alone."""
    client_id = f"client-{next(_serial)}-{user}"
    rig.oauth.register(client_id, Client(**{"secret": SECRET, "user": rig.address(user), **options}))
    return client_id


def grant(rig: MailRig, client_id: str, **extra: Any) -> dict[str, Any]:
    """An ``oauth2:`` block with the client credentials grant (extra keys replace or add)."""
    block: dict[str, Any] = {
        "token_url": rig.oauth.token_url,
        "grant": "client_credentials",
        "client_id": client_id,
        "client_secret": SECRET,
        "scope": SCOPE,
        "ca_file": str(rig.ca_file),
    }
    block.update(extra)
    return {key: value for key, value in block.items() if value is not None}


def with_oauth2(leg: dict[str, Any], oauth2: dict[str, Any], mechanism: str | None = None) -> dict[str, Any]:
    """The leg logging in with a token instead of its password."""
    changed = {key: value for key, value in leg.items() if key != "password"}
    changed["oauth2"] = oauth2
    if mechanism is not None:
        changed["auth"] = mechanism
    return changed


def oauth_task(
    rig: MailRig,
    user: str,
    oauth2: dict[str, Any],
    smtp: str = "submission-starttls-auth",
    mailbox: str = "imaps",
    mechanism: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A task whose SMTP and mailbox legs both log in as ``user`` with tokens from ``oauth2``."""
    task = task_dict(rig, user, smtp=smtp, mailbox=mailbox, **extra)
    task["smtp"] = with_oauth2(smtp_leg(rig, smtp, user), oauth2, mechanism)
    task["incoming"] = with_oauth2(mailbox_leg(rig, mailbox, user), oauth2, mechanism)
    return task


# --- canaries for the leak tests (tests/test_secrets.py) ------------------------------------------

CLIENT_CANARY = "Cl1ent-secret-leak-canary"
REFRESH_CANARY = "Refresh-leak-canary-7"
TOKEN_CANARY = "Token-leak-canary-0123456789"


FRAGMENT = 16  # characters: a line cut short (a transcript keeps 300) still shows a piece this long


def fragments(text: str) -> list[str]:
    """Pieces of a long secret: any of them in an output is a leak, even where the output cut it."""
    if len(text) <= 2 * FRAGMENT:
        return [text]
    return [text[i : i + FRAGMENT] for i in range(0, len(text) - FRAGMENT + 1, FRAGMENT)]


def base64_needles(secret: str) -> list[str]:
    """What any base64 text that contains ``secret`` must contain, at each of the three alignments
    (a SASL message puts the token after the user name, so it may start anywhere in a group)."""
    needles = []
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + secret.encode()).decode()
        needles += fragments(encoded[-(-offset * 8 // 6) : -4])  # without what the neighbours change
    return needles


@dataclass(frozen=True)
class OAuthCanaries:
    """OAuth2 secrets in every form, sent by tasks that fail with them and tasks that succeed."""

    good: str  # a client whose tokens work, for an IMAP task
    long: str  # one with 600-character tokens, for a POP3 task (its AUTH goes after the "+")
    token_file: Path  # holds TOKEN_CANARY, a token no server knows

    @classmethod
    def make(cls, rig: MailRig, imap_user: str, pop3_user: str, directory: Path) -> OAuthCanaries:
        token_file = directory / "token"
        token_file.write_text(TOKEN_CANARY + "\n")
        return cls(new_client(rig, imap_user), new_client(rig, pop3_user, token_length=600), token_file)

    def tasks(self, rig: MailRig, imap_user: str, pop3_user: str) -> list[dict[str, Any]]:
        wrong_secret = task_dict(rig, imap_user, name="oauth-secret-wrong")
        wrong_secret["smtp"] = with_oauth2(wrong_secret["smtp"], grant(rig, self.good, client_secret=CLIENT_CANARY))
        refresh = grant(rig, self.good, grant="refresh_token", refresh_token=REFRESH_CANARY)
        wrong_refresh = task_dict(rig, imap_user, name="oauth-refresh-wrong")
        wrong_refresh["incoming"] = with_oauth2(wrong_refresh["incoming"], refresh)
        wrong_token = task_dict(rig, imap_user, name="oauth-token-wrong")
        wrong_token["incoming"] = with_oauth2(wrong_token["incoming"], {"token_file": str(self.token_file)})
        return [
            wrong_secret,
            wrong_refresh,
            wrong_token,
            oauth_task(rig, imap_user, grant(rig, self.good), name="oauth-imap-ok"),
            oauth_task(
                rig, pop3_user, grant(rig, self.long), mailbox="pop3s", mechanism="oauthbearer", name="oauth-pop3-ok"
            ),
        ]

    def needles(self, rig: MailRig) -> dict[str, str]:
        secrets = {"client secret canary": CLIENT_CANARY, "refresh token canary": REFRESH_CANARY}
        secrets |= {"token canary": TOKEN_CANARY, "client secret": SECRET}
        for client in (self.good, self.long):
            secrets |= {f"access token of {client}": token for token in rig.oauth.stats(client)["tokens"]}
        found: dict[str, str] = {}
        for label, secret in secrets.items():
            found |= {f"{label} #{i}": needle for i, needle in enumerate(fragments(secret))}
            found |= {f"{label}, base64 #{i}": needle for i, needle in enumerate(base64_needles(secret))}
        return found


WRONG = ("oauth-secret-wrong", "oauth-refresh-wrong", "oauth-token-wrong")
RIGHT = ("oauth-imap-ok", "oauth-pop3-ok")

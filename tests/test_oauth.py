"""OAuth2 against real servers: Postfix (SASL through Dovecot), Dovecot's IMAP and POP3, all checking
tokens by introspection at the rig's token server, which counts every token request.

Each test registers a client of its own, so the counts it reads are its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import run_once
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from exporter.probe.result import ProbeResult
from tests.oauth import SECRET, grant, new_client, oauth_task
from tests.rig import MailRig, free_ports
from tests.tasks import SIGNER, FreshUsers, config_of, once_at_debug, probe_once

# (SMTP leg, mailbox leg, mechanism): every protocol with both mechanisms, over TLS as the platforms want.
LEGS = [
    ("submission-starttls-auth", "imaps", "xoauth2"),
    ("submissions-tls-auth", "imap-starttls", "oauthbearer"),
    ("submission-starttls-auth", "pop3s", "oauthbearer"),
    ("submissions-tls-auth", "pop3-stls", "xoauth2"),
]


def assert_ok(result: ProbeResult) -> None:
    assert result.success, f"{result.reason}: {result.error}"


@pytest.mark.parametrize(("smtp", "mailbox", "mechanism"), LEGS)
async def test_round_trip_with_tokens(rig: MailRig, fresh_user: str, smtp: str, mailbox: str, mechanism: str) -> None:
    client = new_client(rig, fresh_user)
    task = oauth_task(rig, fresh_user, grant(rig, client), smtp=smtp, mailbox=mailbox, mechanism=mechanism)
    first = await probe_once(task)
    assert_ok(first)
    assert {Phase.SMTP_OAUTH2, Phase.MAILBOX_OAUTH2} <= set(first.phases)
    # Both legs asked at once for the same key: one token request served both.
    assert rig.oauth.stats(client)["token_requests"] == 1
    assert_ok(await probe_once(task))
    stats = rig.oauth.stats(client)
    assert stats["token_requests"] == 1, stats  # the cached token served the second probe
    assert stats["grants"] == ["client_credentials"]
    # Dovecot checked the token for SMTP (via Postfix) and the mailbox, in both probes.
    assert stats["introspections"] >= 4, stats


async def test_long_tokens_go_after_the_pop3_continuation(rig: MailRig, fresh_user: str) -> None:
    """A 600-character token does not fit POP3's 255-octet AUTH line (RFC 5034): it goes after "+"."""
    client = new_client(rig, fresh_user, token_length=600)
    assert_ok(
        await probe_once(oauth_task(rig, fresh_user, grant(rig, client), smtp="submissions-tls-auth", mailbox="pop3s"))
    )


async def test_tasks_share_a_token(rig: MailRig, fresh_users: FreshUsers) -> None:
    """Three tasks of one mailbox with the same client and scope start at once: both legs of all three
    wait for one token request, and all log in with its token."""
    user = fresh_users.take()
    client = new_client(rig, user)
    tasks = [oauth_task(rig, user, grant(rig, client), name=f"t{i}") for i in range(3)]
    for result in await run_once(config_of(*tasks), SIGNER):
        assert_ok(result)
    assert rig.oauth.stats(client)["token_requests"] == 1


async def test_refresh_token_grant(rig: MailRig, fresh_user: str, tmp_path: Path) -> None:
    client = new_client(rig, fresh_user, secret=None)  # a public client (Gmail's installed apps have a secret too)
    refresh = tmp_path / "refresh"
    refresh.write_text(rig.oauth.refresh_token(client) + "\n")
    oauth2 = grant(rig, client, grant="refresh_token", client_secret=None, refresh_token_file=str(refresh))
    assert_ok(await probe_once(oauth_task(rig, fresh_user, oauth2, smtp="submissions-tls-auth", mailbox="pop3s")))
    stats = rig.oauth.stats(client)
    assert stats["grants"] == ["refresh_token"]


@pytest.mark.parametrize("expire", [False, True], ids=["revoked", "expired"])
async def test_a_token_the_server_refuses_is_auth_then_replaced(rig: MailRig, fresh_user: str, expire: bool) -> None:
    """The exporter's cached token is revoked (or expires early) at the provider: the next probe fails
    with reason auth and the server's decoded challenge; the probe after it fetches a new token."""
    client = new_client(rig, fresh_user)
    task = oauth_task(rig, fresh_user, grant(rig, client), mailbox="imaps")
    assert_ok(await probe_once(task))
    rig.oauth.revoke(client, expire=expire)
    failed = await probe_once(task)
    assert failed.reason is Reason.AUTH, failed.error
    # Whichever leg's login came first (they run at once) failed the probe; both are true.
    assert failed.failed_phase in (Phase.SMTP_AUTH, Phase.MAILBOX_LOGIN), failed.error
    assert "status 401, schemes bearer, scope mail" in (failed.error or ""), failed.error
    assert rig.oauth.stats(client)["token_requests"] == 1  # the refused one was the cached one
    assert_ok(await probe_once(task))
    assert rig.oauth.stats(client)["token_requests"] == 2  # the refused token was not used again


async def test_oauthbearer_refusal_decodes_the_status(rig: MailRig, fresh_user: str) -> None:
    client = new_client(rig, fresh_user)
    task = oauth_task(rig, fresh_user, grant(rig, client), mailbox="pop3s", mechanism="oauthbearer")
    assert_ok(await probe_once(task))
    rig.oauth.revoke(client)
    failed = await probe_once(task)
    assert failed.reason is Reason.AUTH and "status invalid_token" in (failed.error or ""), failed.error


async def test_token_file_is_read_before_each_use(rig: MailRig, fresh_user: str, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(rig.oauth.mint(rig.address(fresh_user)) + "\n")
    task = oauth_task(rig, fresh_user, {"token_file": str(token_file)}, mailbox="pop3-stls")
    assert_ok(await probe_once(task))
    rig.oauth.revoke_token(token_file.read_text().strip(), expire=True)
    failed = await probe_once(task)
    assert failed.reason is Reason.AUTH and "status 401" in (failed.error or ""), failed.error
    token_file.write_text(rig.oauth.mint(rig.address(fresh_user)))  # the other program renewed it
    assert_ok(await probe_once(task))


async def test_missing_token_file_is_auth_without_connecting(rig: MailRig, fresh_user: str, tmp_path: Path) -> None:
    task = oauth_task(rig, fresh_user, {"token_file": str(tmp_path / "absent")})
    failed = await probe_once(task)
    assert failed.reason is Reason.AUTH and "No such file" in (failed.error or ""), failed.error
    assert failed.failed_phase in (Phase.SMTP_OAUTH2, Phase.MAILBOX_OAUTH2)
    assert not {Phase.SMTP_DNS, Phase.MAILBOX_DNS} & set(failed.phases)  # no connection was opened


# --- the token endpoint fails ---------------------------------------------------------------------------

ENDPOINT_FAILURES = {
    "refuse": "refused (HTTP 400): unauthorized_client: The client is not authorized to request this token.",
    "garbage": "answered without a JSON object: <html>502 Bad Gateway</html>",
    "huge": "unusable answer: answer longer than 64 KiB",
    "no_token": "answered HTTP 200 with no access token",
}


@pytest.mark.parametrize("mode", sorted(ENDPOINT_FAILURES))
async def test_a_failing_endpoint_is_auth_with_its_words(rig: MailRig, fresh_user: str, mode: str) -> None:
    client = new_client(rig, fresh_user, mode=mode)
    failed = await probe_once(oauth_task(rig, fresh_user, grant(rig, client)))
    _assert_endpoint_failure(failed, ENDPOINT_FAILURES[mode])


async def test_a_wrong_client_secret_is_auth_with_the_endpoints_error(rig: MailRig, fresh_user: str) -> None:
    client = new_client(rig, fresh_user)
    failed = await probe_once(oauth_task(rig, fresh_user, grant(rig, client, client_secret="wrong-secret-XYZ")))
    _assert_endpoint_failure(failed, "refused (HTTP 401): invalid_client: AADSTS7000215: Invalid client secret")
    assert "wrong-secret-XYZ" not in str(failed) and SECRET not in str(failed)


async def test_a_silent_endpoint_is_auth_at_the_timeout(rig: MailRig, fresh_user: str) -> None:
    client = new_client(rig, fresh_user, mode="hang")
    failed = await probe_once(oauth_task(rig, fresh_user, grant(rig, client), completion_timeout="1s"))
    _assert_endpoint_failure(failed, "no answer within 1s")


async def test_an_unreachable_endpoint_is_auth(rig: MailRig, fresh_user: str) -> None:
    client = new_client(rig, fresh_user)
    url = f"https://localhost:{free_ports(1)[0]}/token"
    failed = await probe_once(oauth_task(rig, fresh_user, grant(rig, client, token_url=url)))
    _assert_endpoint_failure(failed, "cannot connect: Connect call failed")


async def test_an_untrusted_endpoint_is_auth(rig: MailRig, fresh_user: str) -> None:
    client = new_client(rig, fresh_user)
    failed = await probe_once(oauth_task(rig, fresh_user, grant(rig, client, ca_file=None)))  # system CAs only
    _assert_endpoint_failure(failed, "certificate verification failed: unable to get local issuer certificate")
    assert rig.oauth.stats(client)["token_requests"] == 0  # the secret never left


def _assert_endpoint_failure(result: ProbeResult, text: str) -> None:
    assert result.reason is Reason.AUTH, result.error
    assert result.failed_phase in (Phase.SMTP_OAUTH2, Phase.MAILBOX_OAUTH2), result.error
    assert text in (result.error or ""), result.error
    assert not {Phase.SMTP_DNS, Phase.MAILBOX_DNS} & set(result.phases)  # no mail server was asked


def test_debug_log_redacts_every_sasl_line(rig: MailRig, fresh_users: FreshUsers, tmp_path: Path) -> None:
    """The transcript names each mechanism and hides each SASL message: on the command line (SMTP
    AUTH, IMAP AUTHENTICATE with SASL-IR) and after POP3's "+" (a token too long for its AUTH line)."""
    imap_user, pop3_user = fresh_users.take(), fresh_users.take()
    short, long = new_client(rig, imap_user), new_client(rig, pop3_user, token_length=600)
    tasks = [
        oauth_task(rig, imap_user, grant(rig, short), mailbox="imaps", name="imap"),
        oauth_task(rig, pop3_user, grant(rig, long), mailbox="pop3s", mechanism="oauthbearer", name="pop3"),
    ]
    run = once_at_debug(tasks, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    said = "\n".join(line for line in run.stderr.splitlines() if "msg=protocol" in line and "dir=>" in line)
    for expected in ("AUTH XOAUTH2 <redacted>", "AUTHENTICATE XOAUTH2 <redacted>", "AUTH OAUTHBEARER <redacted>"):
        assert expected in said, said  # SMTP, IMAP (SASL-IR), SMTP of the POP3 task
    assert 'task=pop3 leg=mailbox dir=> line="AUTH OAUTHBEARER"' in said, said  # no room for the message
    assert "task=pop3 leg=mailbox dir=> line=<redacted>" in said, said  # ... which followed the "+"
    tokens = [token for client in (short, long) for token in rig.oauth.stats(client)["tokens"]]
    assert tokens and not any(token[:16] in run.stdout + run.stderr for token in tokens)

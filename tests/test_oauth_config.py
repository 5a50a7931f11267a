"""The oauth2 keys (and auth, cleanup, mx, helo_name): their shape, one-line errors, /config without
secrets, and --config.check, which checks the shape without fetching a token."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config.dump import SECRET, dump_config
from exporter.config.fields import FALLBACK_HELO_NAME, as_helo_name, default_helo_name
from exporter.config.load import load_config, parse_config
from exporter.config.model import Cleanup, ConfigError, Grant, Mechanism, Security
from tests.oauth import grant, new_client
from tests.rig import MailRig

CLIENT_CANARY = "client-secret-canary-Q7"
REFRESH_CANARY = "refresh-canary-Z9"
MICROSOFT = {
    "token_url": "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token",
    "grant": "client_credentials",
    "client_id": "00000000-0000-0000-0000-000000000000",
    "client_secret": CLIENT_CANARY,
    "scope": "https://outlook.office365.com/.default",
}
GOOGLE = {
    "token_url": "https://oauth2.googleapis.com/token",
    "grant": "refresh_token",
    "client_id": "1234-abc.apps.googleusercontent.com",
    "client_secret": CLIENT_CANARY,
    "refresh_token": REFRESH_CANARY,
}


def config(smtp: dict[str, Any] | None = None, incoming: dict[str, Any] | None = None, **task: Any) -> dict[str, Any]:
    leg = {"user": "probe@example.com", "oauth2": MICROSOFT}
    return {
        "devices": [
            {
                "name": "d",
                "tasks": [
                    {
                        "name": "t",
                        "destination": "probe@example.com",
                        "smtp": {"host": "smtp.office365.com", **leg, **(smtp or {})},
                        "incoming": {"protocol": "imap", "host": "outlook.office365.com", **leg, **(incoming or {})},
                        **task,
                    }
                ],
            }
        ]
    }


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yml")
    message = str(info.value)
    assert "\n" not in message and CLIENT_CANARY not in message and REFRESH_CANARY not in message, message
    return message


def test_microsoft_and_google_shapes() -> None:
    task = parse_config(config(incoming={"oauth2": GOOGLE, "auth": "oauthbearer"})).tasks()[0][1]
    smtp, incoming = task.smtp, task.incoming.server
    assert smtp.oauth2 is not None and smtp.oauth2.grant is Grant.CLIENT_CREDENTIALS
    assert smtp.mechanism is Mechanism.XOAUTH2 and smtp.password is None
    assert incoming.oauth2 is not None and incoming.oauth2.grant is Grant.REFRESH_TOKEN
    assert incoming.mechanism is Mechanism.OAUTHBEARER
    assert CLIENT_CANARY not in repr(task) and REFRESH_CANARY not in repr(task)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"smtp": {"password": "pw"}}, "smtp.oauth2: oauth2 logs in as user with a token: give user, and no password"),
        ({"smtp": {"user": None}}, "smtp.oauth2: oauth2 logs in as user with a token"),
        ({"smtp": {"oauth2": None, "auth": "xoauth2"}}, "smtp.auth: auth is the SASL mechanism of an OAuth2 token"),
        ({"smtp": {"auth": "plain"}}, "smtp.auth: must be one of xoauth2|oauthbearer"),
        ({"smtp": {"oauth2": {**MICROSOFT, "token_url": "http://idp/token"}}}, "token_url: must be an https:// URL"),
        ({"smtp": {"oauth2": {**MICROSOFT, "token_url": "https://u:p@idp/token"}}}, "without user or fragment"),
        ({"smtp": {"oauth2": {**MICROSOFT, "grant": "password"}}}, "grant: must be one of"),
        ({"smtp": {"oauth2": {**MICROSOFT, "client_id": None}}}, "smtp.oauth2.client_id: is required"),
        ({"smtp": {"oauth2": {**MICROSOFT, "client_secret": None}}}, "grant client_credentials needs a client secret"),
        ({"smtp": {"oauth2": {**MICROSOFT, "refresh_token": "x"}}}, "a refresh token belongs to grant refresh_token"),
        ({"smtp": {"oauth2": {**GOOGLE, "refresh_token": None}}}, "grant refresh_token needs a refresh token"),
        ({"smtp": {"oauth2": {**GOOGLE, "refresh_token": "has space"}}}, "refresh_token: must be 1..8192 characters"),
        ({"smtp": {"oauth2": {**GOOGLE, "refresh_token_write_back": True}}}, "refresh_token_write_back needs"),
        ({"smtp": {"oauth2": {**MICROSOFT, "client_secret_env": "X"}}}, "give only one of client_secret"),
        ({"smtp": {"oauth2": {**MICROSOFT, "scope": "a\tb"}}}, "scope: must be 1..1024 characters"),
        ({"smtp": {"oauth2": {**MICROSOFT, "colour": "blue"}}}, "smtp.oauth2: unknown key 'colour'"),
        (
            {"smtp": {"oauth2": {"token_file": "t", "client_id": "c"}}},
            "token_file replaces the grant: remove client_id",
        ),
        ({"smtp": {"oauth2": "yes"}}, "smtp.oauth2: must be a mapping"),
        ({"incoming": {"oauth2": None}}, "user and a password (password, password_env or password_file) or oauth2"),
        ({"incoming": {"protocol": "pop3", "cleanup": "trash"}}, "incoming.cleanup: POP3 has no folders"),
        ({"incoming": {"cleanup": "shred"}}, "incoming.cleanup: must be one of delete|trash"),
    ],
)
def test_errors_name_the_field(change: dict[str, Any], expected: str) -> None:
    data = config(**change)
    message = error_of(data)
    assert expected in message, message
    assert message.startswith("cfg.yml: devices[0].tasks[0].")


def test_secrets_come_from_env_and_files_and_are_not_read_by_a_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "refresh").write_text(REFRESH_CANARY + "\n")
    monkeypatch.setenv("CLIENT_SECRET", CLIENT_CANARY)
    google: dict[str, Any] = {**GOOGLE, "client_secret": None, "client_secret_env": "CLIENT_SECRET"}
    google |= {"refresh_token": None, "refresh_token_file": "refresh", "refresh_token_write_back": True}
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config(smtp={"oauth2": google})))
    oauth2 = load_config(path).tasks()[0][1].smtp.oauth2
    assert oauth2 is not None and oauth2.client_secret is not None and oauth2.refresh_token is not None
    assert oauth2.client_secret.reveal() == CLIENT_CANARY and oauth2.refresh_token.reveal() == REFRESH_CANARY
    assert oauth2.refresh_token_file == str(tmp_path / "refresh")  # where the rotated one goes
    monkeypatch.delenv("CLIENT_SECRET")
    (tmp_path / "refresh").unlink()
    assert load_config(path, secrets=False).tasks()  # the shape alone: neither source is read


def test_config_page_shows_no_secret_and_loads_back(tmp_path: Path) -> None:
    (tmp_path / "refresh").write_text(REFRESH_CANARY)
    google = {**GOOGLE, "refresh_token": None, "refresh_token_file": str(tmp_path / "refresh")}
    data = config(smtp={"oauth2": google, "auth": "oauthbearer"}, incoming={"oauth2": {"token_file": "/run/t"}})
    text = dump_config(parse_config(data))
    assert CLIENT_CANARY not in text and REFRESH_CANARY not in text
    shown = yaml.safe_load(text)["devices"][0]["tasks"][0]
    assert shown["smtp"]["oauth2"]["client_secret"] == SECRET and shown["smtp"]["auth"] == "oauthbearer"
    assert shown["incoming"]["oauth2"] == {"token_file": "/run/t"}
    assert dump_config(parse_config(yaml.safe_load(text))) == text


def test_config_check_fetches_no_token(rig: MailRig, tmp_path: Path) -> None:
    client = new_client(rig, "user3")
    block = grant(rig, client, client_secret=None, client_secret_file="absent-secret")
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config(smtp={"oauth2": block}, incoming={"oauth2": block})))
    run = [sys.executable, "-m", "exporter", "--config.file", str(path), "--config.check"]
    checked = subprocess.run(run, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    assert rig.oauth.stats(client)["token_requests"] == 0


# --- mx, helo_name -------------------------------------------------------------------------------


def test_mx_mode_shape() -> None:
    smtp = parse_config(config(smtp={"host": None, "user": None, "oauth2": None, "mx": True})).tasks()[0][1].smtp
    assert smtp.mx and smtp.host == "example.com" and smtp.port == 25 and smtp.security is Security.MAY
    assert smtp.user is None and smtp.helo_name == default_helo_name()


@pytest.mark.parametrize(
    ("smtp", "expected"),
    [
        ({"host": "relay.example.com"}, "smtp.host: mx: true sends to the destination domain's MX hosts"),
        ({"user": "u"}, "smtp.user: mx: true sends"),
        ({"password": "p"}, "smtp.password: mx: true sends"),
        ({"security": "tls"}, "smtp.security: MX hosts take STARTTLS on port 25, not implicit TLS"),
        ({"helo_name": "localhost"}, "smtp.helo_name: 'localhost' is not a fully qualified domain name"),
        ({"helo_name": "a b.example"}, "is not a fully qualified domain name"),
    ],
)
def test_mx_errors(smtp: dict[str, Any], expected: str) -> None:
    data = config(smtp={"host": None, "user": None, "oauth2": None, "mx": True, **smtp})
    assert expected in error_of(data)


def test_may_is_for_mx_only() -> None:
    assert "smtp.security: may (STARTTLS when offered) is for mx: true only" in error_of(
        config(smtp={"security": "may"})
    )


@pytest.mark.parametrize("name", ["probe.example.com", "[192.0.2.1]", "[IPv6:2001:db8::1]"])
def test_helo_names(name: str) -> None:
    assert as_helo_name(name) == name


def test_default_helo_name_is_a_fqdn() -> None:
    name = default_helo_name()
    assert name == FALLBACK_HELO_NAME or as_helo_name(name) == name


def test_cleanup_default_is_none_so_gmail_is_detected() -> None:
    incoming = parse_config(config()).tasks()[0][1].incoming
    assert incoming.cleanup is None
    assert parse_config(config(incoming={"cleanup": "trash"})).tasks()[0][1].incoming.cleanup is Cleanup.TRASH

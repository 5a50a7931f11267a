"""Config loading: defaults, derivations and one-line errors that name the field."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config.fields import parse_duration
from exporter.config.load import load_config, parse_config
from exporter.config.model import ConfigError, DNSMode, Protocol, Security

ROOT = Path(__file__).resolve().parent.parent


def minimal(**task_overrides: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "name": "t1",
        "destination": "probe@example.test",
        "smtp": {"host": "smtp.example.test"},
        "incoming": {"protocol": "imap", "host": "imap.example.test", "user": "u", "password": "p"},
    }
    task.update(task_overrides)
    return {"devices": [{"name": "d1", "tasks": [task]}]}


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults() -> None:
    config = parse_config(minimal())
    device, task = config.tasks()[0]
    assert device.interval == 300 and device.dns.mode is DNSMode.DEVICE_CACHED
    assert task.completion_timeout == 120 and task.email_timeout == 600
    assert task.smtp.port == 587 and task.smtp.security is Security.STARTTLS
    assert task.incoming.server.port == 993 and task.incoming.server.security is Security.TLS
    assert task.incoming.protocol is Protocol.IMAP and task.incoming.mailbox == "INBOX"
    assert task.sender == "probe@example.test"
    assert not task.smtp.tls.insecure_skip_verify


@pytest.mark.parametrize(
    ("leg", "settings", "port", "security"),
    [
        ("smtp", {"host": "h:465"}, 465, Security.TLS),
        ("smtp", {"host": "h", "port": 25}, 25, Security.STARTTLS),
        ("smtp", {"host": "h", "ssl": "on"}, 465, Security.TLS),
        ("smtp", {"host": "h:587", "ssl": True}, 587, Security.STARTTLS),
        ("smtp", {"host": "h", "ssl": "off"}, 25, Security.NONE),
        ("smtp", {"host": "h", "security": "tls"}, 465, Security.TLS),
        ("smtp", {"host": "[::1]:2525", "security": "none"}, 2525, Security.NONE),
        ("incoming", {"protocol": "pop3", "host": "h"}, 995, Security.TLS),
        ("incoming", {"protocol": "pop3", "host": "h", "ssl": False}, 110, Security.NONE),
        ("incoming", {"protocol": "imap", "host": "h:143"}, 143, Security.STARTTLS),
        ("incoming", {"protocol": "imap", "host": "h", "security": "starttls"}, 143, Security.STARTTLS),
    ],
)
def test_security_and_port_derivation(leg: str, settings: dict[str, Any], port: int, security: Security) -> None:
    if leg == "incoming":
        settings = {**settings, "user": "u", "password": "p"}
    config = parse_config(minimal(**{leg: settings}))
    task = config.tasks()[0][1]
    server = task.smtp if leg == "smtp" else task.incoming.server
    assert (server.port, server.security) == (port, security)


@pytest.mark.parametrize(
    ("text", "bare", "seconds"),
    [("90s", "s", 90), ("10m", "s", 600), ("1h30m", "s", 5400), ("500ms", "s", 0.5), (10, "m", 600), (2.5, "s", 2.5)],
)
def test_durations(text: Any, bare: str, seconds: float) -> None:
    assert parse_duration(text, bare) == seconds


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda d: d["devices"][0]["tasks"][0]["incoming"].update(port="abc"),
            "cfg.yml: devices[0].tasks[0].incoming.port: must be a port number",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0]["incoming"].update(prot=1),
            "cfg.yml: devices[0].tasks[0].incoming: unknown key 'prot'",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0].update(email_timeout=61),
            "cfg.yml: devices[0].tasks[0].email_timeout: must be at most 1h",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0].update(completion_timeout="soon"),
            "cfg.yml: devices[0].tasks[0].completion_timeout: must be a duration",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0].update(destination="nobody"),
            "cfg.yml: devices[0].tasks[0].destination: 'nobody' is not an e-mail address",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0]["incoming"].update(protocol="smtp"),
            "cfg.yml: devices[0].tasks[0].incoming.protocol: must be one of imap|pop3",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0]["smtp"].update(ssl=True, security="tls"),
            "cfg.yml: devices[0].tasks[0].smtp: give either security or ssl",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0]["smtp"].update(password="x"),
            "cfg.yml: devices[0].tasks[0].smtp.user: a password is given but no user",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0]["incoming"].update(password_env="NOPE_NOT_SET"),
            "cfg.yml: devices[0].tasks[0].incoming: give only one of password, password_env",
        ),
        (
            lambda d: d["devices"][0]["tasks"].append(dict(d["devices"][0]["tasks"][0])),
            "cfg.yml: devices[0].tasks[1].name: duplicate task name 't1'",
        ),
        (
            lambda d: d["devices"][0].update(dns={"mode": "external"}),
            "cfg.yml: devices[0].dns.servers: mode external needs at least one entry",
        ),
        (
            lambda d: d["devices"][0].update(dns={"hosts": [{"address": "1.2.3", "name": "x"}]}),
            "cfg.yml: devices[0].dns.hosts[0].address: '1.2.3' is not an IP address",
        ),
        (
            lambda d: d["devices"][0]["tasks"][0]["smtp"].update(host="bad host"),
            "cfg.yml: devices[0].tasks[0].smtp.host: 'bad host' is not a host name",
        ),
        (lambda d: d.update(devices=[]), "cfg.yml: devices: needs at least one device"),
        (
            lambda d: d["devices"][0]["tasks"][0]["incoming"].update(user="a\nb"),
            "cfg.yml: devices[0].tasks[0].incoming.user: must not contain CR, LF or NUL",
        ),
    ],
)
def test_errors_name_the_field(mutate: Any, expected: str) -> None:
    data = minimal()
    mutate(data)
    assert error_of(data).startswith(expected)


def test_password_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_PW", "from-env")
    (tmp_path / "pw.txt").write_text("from-file\n")
    data = minimal(smtp={"host": "h", "user": "u", "password_env": "PROBE_PW"})
    data["devices"][0]["tasks"][0]["incoming"] = {
        "protocol": "pop3",
        "host": "h",
        "user": "u",
        "password_file": "pw.txt",
    }
    task = parse_config(data, base_dir=tmp_path).tasks()[0][1]
    assert task.smtp.password is not None and task.smtp.password.reveal() == "from-env"
    assert task.incoming.server.password is not None and task.incoming.server.password.reveal() == "from-file"
    assert "from-env" not in repr(task) and "from-file" not in repr(task)


def test_missing_password_env_names_variable_not_value() -> None:
    data = minimal()
    data["devices"][0]["tasks"][0]["incoming"] = {
        "protocol": "imap",
        "host": "h",
        "user": "u",
        "password_env": "SURELY_NOT_SET_X",
    }
    assert "environment variable 'SURELY_NOT_SET_X' is not set" in error_of(data)


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yml"
    path.write_text("devices:\n  - name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: line \d+, column \d+"):
        load_config(path)


def test_example_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(ROOT / "config.example.yml", tmp_path / "config.yml")
    (tmp_path / "imap-password.txt").write_text("secret\n")
    (tmp_path / "gmail-refresh-token.txt").write_text("1//refresh-token\n")
    for variable in ("SMTP_PASSWORD", "POP3_PASSWORD", "M365_CLIENT_SECRET", "GMAIL_CLIENT_SECRET"):
        monkeypatch.setenv(variable, "x")
    config = load_config(tmp_path / "config.yml")
    assert [t.name for _, t in config.tasks()] == ["office365-imap", "pop3", "m365", "gmail", "mx-inbound"]
    assert yaml.safe_load((ROOT / "config.example.yml").read_text())["devices"]


def test_config_check_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(minimal()))
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(minimal(completion_timeout="never")))
    run = [sys.executable, "-m", "exporter", "--config.check", "--config.file"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    broken = subprocess.run([*run, str(bad)], capture_output=True, text=True, check=False)
    assert broken.returncode == 1
    assert broken.stderr.strip().count("\n") == 0
    assert "devices[0].tasks[0].completion_timeout" in broken.stderr


def test_config_check_needs_no_secrets_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config.check validates a config on a machine without its secrets (CI, a reviewer's laptop);
    --config.check-secrets reads them too. Neither reads a secret it does not need to."""
    monkeypatch.delenv("UNSET_PROBE_PASSWORD", raising=False)
    data = minimal(smtp={"host": "h", "user": "u", "password_env": "UNSET_PROBE_PASSWORD"})
    data["devices"][0]["tasks"][0]["incoming"].update(password=None, password_file="absent/password.txt")
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data))
    run = [sys.executable, "-m", "exporter", "--config.file", str(path)]
    shape = subprocess.run([*run, "--config.check"], capture_output=True, text=True, check=False)
    assert shape.returncode == 0, shape.stderr
    assert "secrets not read" in shape.stdout
    secrets = subprocess.run([*run, "--config.check-secrets"], capture_output=True, text=True, check=False)
    assert secrets.returncode == 1, secrets.stdout
    assert "UNSET_PROBE_PASSWORD" in secrets.stderr and "is not set" in secrets.stderr
    # The shape is still checked without secrets: two password sources are one too many.
    data["devices"][0]["tasks"][0]["smtp"]["password"] = "x"
    path.write_text(yaml.safe_dump(data))
    both = subprocess.run([*run, "--config.check"], capture_output=True, text=True, check=False)
    assert both.returncode == 1 and "give only one of password" in both.stderr, both.stderr

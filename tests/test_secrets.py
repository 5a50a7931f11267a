"""Passwords and OAuth2 secrets never leak: not in logs (debug, logfmt and JSON), /metrics, the console's
pages (overview, task pages with their transcripts, Probe now), /probe's JSON and debug text, reload
answers, --once reports, config loader errors, nor the repr()/str() of config objects and probe results
(and their transcripts).

Tasks log in to the real rig with a distinctive wrong password (the canary) on SMTP AUTH, IMAP and
POP3, next to tasks with the right password; OAuth2 tasks send a wrong client secret, a wrong refresh
token and a token no server knows, next to tasks whose tokens work (tests/oauth.py). Then everything
the exporter printed or served is searched for every secret, raw and in the encodings the protocols
use (base64, AUTH PLAIN, SASL messages), the access tokens the token server issued included.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter import cli
from exporter.config.load import load_config, parse_config
from exporter.config.model import ConfigError
from exporter.probe.result import ProbeResult
from exporter.report import render_report
from tests import oauth
from tests.oauth import OAuthCanaries
from tests.rig import MailRig, free_ports, wait_for
from tests.tasks import SIGNER, exporter_command, task_dict

CANARY = "Pa55-leak-canary-XYZ"
# With a quote and a backslash: IMAP sends it quoted and escaped, logfmt and JSON escape it again.
QUOTED_CANARY = 'Qu0te-"leak\\canary'
USERS = ("sec-a", "sec-b", "sec-c")  # sec-c: the OAuth2 POP3 task's mailbox alone
DEADLINE = 90.0  # for every task to have finished at least one probe


@pytest.fixture(scope="module")
def users(rig: MailRig, tmp_path_factory: pytest.TempPathFactory) -> OAuthCanaries:
    rig.add_users(USERS)
    return OAuthCanaries.make(rig, USERS[0], USERS[2], tmp_path_factory.mktemp("oauth"))


def _wrong(task: dict[str, Any], leg: str, password: str = CANARY) -> dict[str, Any]:
    task[leg]["password"] = password
    return task


def _mailbox_wrong(rig: MailRig, mailbox: str, name: str, password: str = CANARY) -> dict[str, Any]:
    """Logs in to sec-b's mailbox with a wrong password; the letter goes to sec-a, so that sec-b
    holds only pop3-ok's letters (a POP3 session fails when another client expunges meanwhile)."""
    task = _wrong(task_dict(rig, USERS[1], mailbox=mailbox, name=name), "incoming", password)
    task["destination"] = rig.address(USERS[0])
    return task


def leaky_tasks(rig: MailRig, canaries: OAuthCanaries) -> list[dict[str, Any]]:
    """Wrong passwords on every protocol and security, and right ones next to them; OAuth2 likewise."""
    a, b, c = USERS
    return [
        _wrong(task_dict(rig, a, name="smtp-starttls-wrong"), "smtp"),
        _wrong(task_dict(rig, a, smtp="submissions-tls-auth", name="smtps-wrong"), "smtp"),
        _wrong(task_dict(rig, a, name="smtp-quoted-wrong"), "smtp", QUOTED_CANARY),
        _mailbox_wrong(rig, "imaps", "imaps-wrong"),
        _mailbox_wrong(rig, "imap-starttls", "imap-starttls-wrong"),
        _mailbox_wrong(rig, "imaps", "imap-quoted-wrong", QUOTED_CANARY),
        _mailbox_wrong(rig, "pop3s", "pop3s-wrong"),
        _mailbox_wrong(rig, "pop3-stls", "pop3-stls-wrong"),
        _mailbox_wrong(rig, "pop3s", "pop3-quoted-wrong", QUOTED_CANARY),
        task_dict(rig, a, mailbox="imaps", name="imap-ok"),
        task_dict(rig, b, mailbox="pop3s", name="pop3-ok"),
        *canaries.tasks(rig, a, c),
    ]


WRONG = (
    "smtp-starttls-wrong",
    "smtps-wrong",
    "imaps-wrong",
    "imap-starttls-wrong",
    "pop3s-wrong",
    "pop3-stls-wrong",
    "smtp-quoted-wrong",
    "imap-quoted-wrong",
    "pop3-quoted-wrong",
    *oauth.WRONG,
)
RIGHT = ("imap-ok", "pop3-ok", *oauth.RIGHT)


def needles(rig: MailRig, canaries: OAuthCanaries) -> dict[str, str]:
    """Every form a password could take in output: raw, base64 (AUTH LOGIN), AUTH PLAIN, and fragments
    that survive quoting and escaping (IMAP quoted strings, logfmt, JSON)."""
    found: dict[str, str] = {"canary fragment": "leak-canary", "quoted canary fragment": "Qu0te-"}
    found |= canaries.needles(rig)
    for user in USERS[:2]:
        address = rig.address(user)
        passwords = (("canary", CANARY), ("quoted canary", QUOTED_CANARY), (f"{user}'s password", rig.password(user)))
        for label, password in passwords:
            found[label] = password
            found[f"{label}, base64"] = base64.b64encode(password.encode()).decode()
            plain = f"\0{address}\0{password}".encode()
            found[f"{label} for {address}, AUTH PLAIN"] = base64.b64encode(plain).decode()
    return found


def assert_clean(rig: MailRig, canaries: OAuthCanaries, where: str, text: str) -> None:
    leaks = [label for label, needle in needles(rig, canaries).items() if needle in text]
    assert not leaks, f"{where} contains {', '.join(leaks)}:\n{text}"


def write_config(path: Path, tasks: list[dict[str, Any]], interval: str = "3s") -> None:
    path.write_text(yaml.safe_dump({"devices": [{"name": "sec", "interval": interval, "tasks": tasks}]}))


def fetch(url: str, method: str = "GET", accept: str = "") -> tuple[int, str]:
    request = urllib.request.Request(
        url, method=method, data=b"" if method == "POST" else None, headers={"Accept": accept} if accept else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --- the served exporter -----------------------------------------------------------------------------


@pytest.fixture
def served(
    rig: MailRig, users: OAuthCanaries, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    config = tmp_path / "config.yml"
    write_config(config, leaky_tasks(rig, users))
    port = free_ports(1)[0]
    flags = ["--web.listen-address", f"127.0.0.1:{port}", "--log.level", "debug", "--log.format", request.param]
    # Files, not pipes: at debug every protocol line is logged, and a pipe nobody reads until the
    # end would fill up and stall the exporter.
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            exporter_command(config, tmp_path / "key", *flags), stdout=stdout, stderr=stderr, text=True
        )
    url = f"http://127.0.0.1:{port}"
    yield process, url, config
    if process.poll() is None:
        process.kill()
        process.wait()


def value(metrics: str, name: str, **labels: str) -> float | None:
    wanted = {"device": "sec", **labels}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == wanted:
                return float(sample.value)
    return None


def _probes_done(url: str) -> bool:
    try:
        _, text = fetch(url + "/metrics")
    except OSError:
        return False
    return all((value(text, "mail_roundtrip_probes_total", task=name) or 0) >= 1 for name in WRONG + RIGHT)


@pytest.mark.parametrize("served", ["logfmt", "json"], indirect=True)
def test_served_exporter_never_shows_a_password(
    rig: MailRig, users: OAuthCanaries, served: tuple[subprocess.Popen[str], str, Path]
) -> None:
    process, url, config = served
    wait_for(lambda: _probes_done(url), DEADLINE, "every task to finish a probe")
    pages = {path: fetch(url + path)[1] for path in ("/metrics", "/", "/-/healthy")}
    pages["openmetrics"] = fetch(url + "/metrics", accept="application/openmetrics-text; version=1.0.0")[1]
    _check_reasons(pages["/metrics"])
    pages |= _console_pages(url)

    # A reload the loader refuses (the canary as a list) and one it takes (via SIGHUP).
    good = config.read_text()
    config.write_text(good.replace(f"password: {CANARY}", f"password: [{CANARY}]"))
    status, pages["bad reload"] = fetch(url + "/-/reload", method="POST")
    assert status == 500 and "password: must be a string, got a list" in pages["bad reload"]
    config.write_text(good)
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config_last_reload_successful 1.0" in fetch(url + "/metrics")[1], 30, "the good reload")

    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    stdout, stderr = ((config.parent / name).read_text() for name in ("stdout", "stderr"))
    assert process.returncode == 0, stderr
    pages |= {"stdout": stdout, "stderr": stderr}
    for where, text in pages.items():
        assert_clean(rig, users, where, text)
    # The failures really were logged with their error text (where a leak would show).
    assert "probe finished" in stderr and "server rejected the credentials" in stderr, stderr
    assert "config reloaded" in stderr and "config reload failed" in stderr, stderr


def _console_pages(url: str) -> dict[str, str]:
    """Every task's console page (with the transcripts it keeps), and a Probe now of one wrong password
    per protocol through /probe: as JSON, as debug text (the transcript) and as the button's page."""
    pages = {f"/task/sec/{name}": fetch(f"{url}/task/sec/{name}")[1] for name in WRONG + RIGHT}
    assert "Transcript of the last failed probe" in pages["/task/sec/smtps-wrong"]
    for name in ("smtps-wrong", "imap-quoted-wrong", "pop3s-wrong"):
        status, pages[f"/probe {name}"] = fetch(f"{url}/probe?device=sec&task={name}", method="POST")
        assert status == 200 and '"reason": "auth"' in pages[f"/probe {name}"], pages[f"/probe {name}"]
        status, pages[f"/probe debug {name}"] = fetch(f"{url}/probe?device=sec&task={name}&debug=true")
        assert status == 200 and "<redacted>" in pages[f"/probe debug {name}"], pages[f"/probe debug {name}"]
    status, pages["Probe now"] = fetch(f"{url}/task/sec/smtp-quoted-wrong/probe", method="POST")
    assert status == 200 and "AUTH PLAIN &lt;redacted&gt;" in pages["Probe now"], pages["Probe now"]
    return pages


def _check_reasons(metrics: str) -> None:
    """The canary really was sent and refused: otherwise this test would prove nothing."""
    for name in WRONG:
        assert value(metrics, "mail_roundtrip_probe_failure_reason", task=name, reason="auth") == 1.0, name
    for name in RIGHT:
        assert value(metrics, "mail_roundtrip_probe_success", task=name) == 1.0, name


# --- --once ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_once_report_never_shows_a_password(
    rig: MailRig, users: OAuthCanaries, tmp_path: Path, log_format: str
) -> None:
    config = tmp_path / "config.yml"
    write_config(config, leaky_tasks(rig, users))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(config),
            "--once",
            "--signing.key-file",
            str(tmp_path / "key"),
            "--log.level",
            "debug",
            "--log.format",
            log_format,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == cli.EXIT_PROBE_FAILED, result.stdout + result.stderr
    for name in WRONG:
        assert f"{name}: FAILED (auth)" in result.stdout, result.stdout
    for name in RIGHT:
        assert f"{name}: OK" in result.stdout, result.stdout
    assert_clean(rig, users, "--once stdout", result.stdout)
    assert_clean(rig, users, "--once stderr", result.stderr)


# --- in-process: objects, reports and log records ------------------------------------------------


def _walk(value: Any) -> Iterator[Any]:
    """The value and every dataclass, tuple, list and dict value inside it."""
    yield value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _walk(getattr(value, f.name))
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)


async def test_objects_and_log_records_never_show_a_password(
    rig: MailRig, users: OAuthCanaries, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config_path = tmp_path / "config.yml"
    write_config(config_path, leaky_tasks(rig, users))
    config = load_config(config_path)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="exporter")
    results: list[ProbeResult] = await cli.run_once(config, SIGNER)
    outcomes = {r.task: r.error or "ok" for r in results}
    assert sorted(r.task for r in results if r.success) == sorted(RIGHT), outcomes

    texts = {"report": render_report(results)}
    for i, obj in enumerate([*_walk(config), *_walk(results)]):
        texts[f"repr/str #{i} ({type(obj).__name__})"] = repr(obj) + "\n" + str(obj)
    # Only the exporter's own records: logs.setup holds third-party loggers at WARNING (the subprocess
    # tests above check what really reaches the output).
    for record in (r for r in caplog.records if r.name.startswith("exporter")):
        fields = {k: v for k, v in vars(record).items() if k not in ("msg", "args")}
        texts[f"log record {record.name}"] = record.getMessage() + " " + json.dumps(fields, default=str)
    for where, text in texts.items():
        assert_clean(rig, users, where, text)


# --- config loader errors ------------------------------------------------------------------------

MALFORMED_PASSWORDS: list[Any] = [
    [CANARY],
    {CANARY: CANARY},
    f"{CANARY}\nsecond line",
    f"{CANARY}\r",
    f"{CANARY}\0",
    [[CANARY], {"x": CANARY}],
]


def _base_task() -> dict[str, Any]:
    return {
        "name": "t",
        "destination": "probe@example.test",
        "smtp": {"host": "smtp.example.test", "user": "u@example.test", "password": "ok"},
        "incoming": {"protocol": "imap", "host": "imap.example.test", "user": "u", "password": "ok"},
    }


def _error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config({"devices": [{"name": "d", "tasks": [data]}]}, "cfg.yml")
    return str(info.value)


@pytest.mark.parametrize("leg", ["smtp", "incoming"])
@pytest.mark.parametrize("password", MALFORMED_PASSWORDS, ids=lambda p: type(p).__name__ + str(len(str(p))))
def test_loader_errors_never_echo_a_malformed_password(leg: str, password: Any) -> None:
    task = _base_task()
    task[leg]["password"] = password
    message = _error(task)
    assert f"{leg}.password" in message or f"{leg}: " in message, message
    assert "leak-canary" not in message, message


@pytest.mark.parametrize(
    "change",
    [
        {"user": None},  # a password but no user
        {"password_env": "SOME_VAR"},  # two sources
        {"passwrod": CANARY},  # a typo next to the password
    ],
)
def test_loader_errors_around_a_password(change: dict[str, Any]) -> None:
    task = _base_task()
    task["smtp"]["password"] = CANARY
    task["smtp"].update(change)
    if change.get("user", "") is None:
        del task["smtp"]["user"]
    message = _error(task)
    assert "smtp" in message and "leak-canary" not in message, message


@pytest.mark.parametrize(
    "value", [f"'{CANARY}", f"@{CANARY}", f'"\\q{CANARY}"', f"{CANARY}: x", f"[{CANARY}", f"*{CANARY}", f"!{CANARY} x"]
)
def test_yaml_errors_never_echo_a_password(tmp_path: Path, value: str) -> None:
    """Syntax errors, and undefined aliases and unknown tags (which PyYAML quotes in its message)."""
    path = tmp_path / "config.yml"
    path.write_text(f"devices:\n- name: d\n  tasks:\n  - smtp:\n      password: {value}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "leak-canary" not in str(info.value), str(info.value)

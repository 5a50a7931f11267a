"""The console in a real browser (Debian's headless Chromium via Playwright, tests/browser.py) against a
live exporter probing the real rig, behind basic auth: failing tasks first with their reason, the
filter, the task page's waterfall, Probe now's transcript without a password, a hostile server's
<script> shown as text, a failed reload's banner, and a route prefix. Screenshots are saved among
the test's artefacts (the path is printed) and, with $CONSOLE_SCREENSHOTS, copied there."""

from __future__ import annotations

import base64
import json
import socketserver
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import chromium, screenshot
from tests.rig import MailRig, free_ports, wait_for
from tests.tasks import FreshUsers, exporter_command, task_dict, unreachable_task

USER, PASSWORD = "admin", "console-pw-1"
HOSTILE_BANNER = b'554 <script>document.title="owned"</script><img src=x onerror="document.title=\'img\'"> go away\r\n'
TIMEOUT_MS = 60_000  # a loaded machine: the rig, the exporter and Chromium share two cores


class _HostileSMTP(socketserver.BaseRequestHandler):
    """An SMTP server whose banner is markup: the error text that quotes it must stay text."""

    def handle(self) -> None:
        self.request.sendall(HOSTILE_BANNER)


@dataclass
class Live:
    process: subprocess.Popen[bytes]
    url: str
    config: Path
    good_config: str
    secrets: list[str]  # every password of the tasks, and their AUTH PLAIN / base64 forms

    def request(self, path: str, method: str = "GET") -> tuple[int, str]:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=b"" if method == "POST" else None,
            headers={"Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def _forms(rig: MailRig, user: str) -> list[str]:
    password = rig.password(user)
    plain = base64.b64encode(f"\0{rig.address(user)}\0{password}".encode()).decode()
    return [password, base64.b64encode(password.encode()).decode(), plain]


def _web_config(directory: Path) -> Path:
    path = directory / "web.yml"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    path.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
    return path


def _start(directory: Path, config: dict[str, Any], *flags: str) -> tuple[subprocess.Popen[bytes], int]:
    (directory / "config.yml").write_text(yaml.safe_dump(config))
    port = free_ports(1)[0]
    with (directory / "output").open("wb") as output:
        process = subprocess.Popen(
            exporter_command(
                directory / "config.yml",
                directory / "key",
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--web.config.file",
                str(_web_config(directory)),
                *flags,
            ),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, port


def _output(directory: Path) -> str:
    return (directory / "output").read_text(errors="replace")


def _stop(process: subprocess.Popen[bytes], directory: Path) -> None:
    process.terminate()
    process.wait(timeout=30)
    assert "Traceback" not in _output(directory), _output(directory)


@pytest.fixture(scope="module")
def hostile_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _HostileSMTP)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="hostile smtp")
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(
    rig: MailRig, fresh_users: FreshUsers, hostile_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    directory = tmp_path_factory.mktemp("console-exporter")
    ok_user, wrong_user, hostile_user = fresh_users.take(), fresh_users.take(), fresh_users.take()
    wrong = task_dict(rig, wrong_user, name="wrong-password")
    wrong["incoming"]["password"] = "not-" + rig.password(wrong_user)
    hostile = task_dict(rig, hostile_user, name="hostile")
    hostile["smtp"] = {"host": f"127.0.0.1:{hostile_port}", "security": "none"}
    config = {
        "devices": [
            {"name": "rig", "interval": "3s", "tasks": [task_dict(rig, ok_user, name="ok"), wrong]},
            {"name": "hostile", "interval": "3s", "tasks": [hostile]},
        ]
    }
    process, port = _start(directory, config)
    secrets = [form for user in (ok_user, wrong_user, hostile_user) for form in _forms(rig, user)]
    live = Live(process, f"http://127.0.0.1:{port}", directory / "config.yml", "", secrets)
    live.good_config = live.config.read_text()
    secrets.append(wrong["incoming"]["password"])

    seen = [""]

    def probed() -> bool:
        try:
            status, text = live.request("/metrics")
        except OSError:
            return False
        seen[0] = "\n".join(line for line in text.splitlines() if "_success" in line or "failure_" in line)
        values = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        wanted = (
            ("mail_roundtrip_probe_success", (("device", "rig"), ("task", "ok"))),
            (
                "mail_roundtrip_probe_failure_reason",
                (("device", "rig"), ("reason", "auth"), ("task", "wrong-password")),
            ),
            (
                "mail_roundtrip_probe_failure_phase",
                (("device", "hostile"), ("phase", "smtp_greeting"), ("task", "hostile")),
            ),
        )
        return status == 200 and all(values.get(key) == 1.0 for key in wanted)

    try:
        wait_for(probed, 120, "every task to finish a probe", logs=lambda: seen[0] + _output(directory))
        yield live
    finally:
        _stop(process, directory)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-screenshots")


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context: BrowserContext = browser.new_context(
        http_credentials={"username": USER, "password": PASSWORD}, viewport={"width": 1400, "height": 900}
    )
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    errors: list[str] = []

    def console_error(message: ConsoleMessage) -> None:
        if message.type == "error":  # a CSP violation, a failed asset, a script error
            errors.append(message.text)

    opened.on("console", console_error)
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == [], errors


def test_failing_tasks_come_first_with_their_reason(live: Live, page: Page, shots: Path) -> None:
    page.goto(live.url + "/")
    rows = page.locator("#tasks tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_class("failing")
    expect(rows.nth(1)).to_have_class("failing")
    expect(rows.nth(2)).to_contain_text("rig / ok")
    wrong = page.locator("#tasks tbody tr", has_text="wrong-password")
    expect(wrong).to_contain_text("auth")
    expect(wrong).to_contain_text("FAILED")
    expect(page.locator("#counts")).to_contain_text("failing")
    screenshot(page, shots, "overview")


def test_filter_narrows_the_list_and_survives_a_refresh(live: Live, page: Page) -> None:
    page.goto(live.url + "/?refresh=2")
    page.locator("#filter").fill("wrong")
    visible = page.locator("#tasks tbody tr:not([hidden])")
    expect(visible).to_have_count(1)
    expect(visible).to_contain_text("wrong-password")
    expect(page.locator("#shown")).to_have_text("1 of 3 shown")
    assert "q=wrong" in page.url
    stamp = page.locator("#rendered").inner_text()
    page.wait_for_function(
        "stamp => document.getElementById('rendered').textContent !== stamp", arg=stamp, timeout=TIMEOUT_MS
    )
    expect(page.locator("#filter")).to_have_value("wrong")
    expect(visible).to_have_count(1)


def test_task_page_draws_the_phases_of_the_last_probe(live: Live, page: Page, shots: Path) -> None:
    page.goto(live.url + "/")
    page.get_by_role("link", name="rig / ok").click()
    expect(page).to_have_title("rig/ok")
    last = page.locator("details.probe").first.locator("svg.waterfall")
    phases = ("smtp_dns", "smtp_connect", "smtp_tls", "smtp_greeting", "smtp_auth", "smtp_submit")
    for phase in (*phases, "mailbox_connect", "mailbox_tls", "mailbox_login", "mailbox_search", "wait for the letter"):
        expect(last.locator("text.label", has_text=phase)).to_have_count(1)
    expect(page.locator("svg.sparkline")).to_have_count(1)
    expect(page.locator("details.probe").first).to_contain_text("queued as")
    screenshot(page, shots, "task")


def test_probe_now_shows_the_transcript_without_a_password(live: Live, page: Page, shots: Path) -> None:
    page.goto(live.url + "/task/rig/ok")
    page.get_by_role("button", name="Probe now").click()
    fresh = page.locator("#probe-now-result")
    expect(fresh).to_contain_text("OK", timeout=120_000)
    transcript = fresh.locator("table.transcript")
    for said in ("EHLO", "STARTTLS", "AUTH PLAIN <redacted>", "MAIL FROM", "RCPT TO", "DATA", "LOGIN <redacted>"):
        expect(transcript).to_contain_text(said)
    expect(transcript).to_contain_text("queued as")
    expect(fresh.locator("pre.letter")).to_contain_text("X-Mail-Roundtrip-Probe: mrt-")
    fresh.scroll_into_view_if_needed()
    screenshot(page, shots, "probe-now", full_page=False)  # the transcript runs on for a few screens
    texts = {"page": page.content()}
    status, body = live.request("/probe?device=rig&task=ok", method="POST")
    assert status == 200 and json.loads(body)["success"] is True, body
    status, texts["debug"] = live.request("/probe?device=rig&task=ok&debug=true")
    assert status == 200 and "MAIL FROM" in texts["debug"] and "== rig/ok: OK" in texts["debug"], texts["debug"]
    for where, text in texts.items():
        assert not [secret for secret in live.secrets if secret in text], where


def test_a_hostile_servers_script_stays_text(live: Live, page: Page) -> None:
    page.goto(live.url + "/")
    row = page.locator("#tasks tbody tr", has_text="hostile")
    expect(row).to_contain_text('<script>document.title="owned"</script>')
    page.goto(live.url + "/task/hostile/hostile")
    expect(page.locator(".error-text").first).to_contain_text("<script>")
    assert page.title() == "hostile/hostile"
    assert page.locator("main script, main img").count() == 0


def test_a_failed_reload_shows_its_banner(live: Live, page: Page, shots: Path) -> None:
    live.config.write_text("devices:\n  - name: rig\n    tasks: []\n")
    try:
        status, body = live.request("/-/reload", method="POST")
        assert status == 500, body
        page.goto(live.url + "/")
        banner = page.locator("#reload-failed")
        expect(banner).to_contain_text("reload failed")
        expect(banner).to_contain_text("config.yml: devices[0].tasks: needs at least one task")
        assert str(live.config) not in page.content()  # only /config names the file
        screenshot(page, shots, "reload-failed")
    finally:
        live.config.write_text(live.good_config)
        assert live.request("/-/reload", method="POST")[0] == 200
    page.goto(live.url + "/")
    expect(page.locator("#reload-failed")).to_have_count(0)


def test_behind_a_path_prefix(browser: Browser, tmp_path: Path) -> None:
    config = {"devices": [{"name": "d", "interval": "1h", "tasks": [unreachable_task(free_ports(1)[0])]}]}
    process, port = _start(tmp_path, config, "--web.external-url", "http://127.0.0.1/mail/")
    try:
        context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/mail/-/healthy"), 30, "the exporter to listen")
        page.goto(f"http://127.0.0.1:{port}/mail/")
        expect(page.locator("#counts")).to_contain_text("tasks")
        # The stylesheet came from under the prefix: the header has its background.
        assert page.evaluate("getComputedStyle(document.querySelector('header')).display") == "flex"
        page.get_by_role("link", name="d / t").click()
        expect(page).to_have_title("d/t")
        assert page.url.endswith("/mail/task/d/t")
        context.close()
    finally:
        _stop(process, tmp_path)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as exc:
        return exc.code == 401  # up, and asking for the password
    except OSError:
        return False
    return True

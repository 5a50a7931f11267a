"""The Prometheus exporter conventions, on a live exporter probing the real rig: several listen
addresses, --web.telemetry-path, gzip, /-/ready, /config without secrets, build_info with a revision,
task_info, probe_duration_seconds, tls_info, --log.level warn and --version."""

from __future__ import annotations

import base64
import gzip
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.dump import SECRET, dump_config
from exporter.config.load import parse_config
from exporter.letter.token import Signer
from exporter.service import Exporter
from exporter.web.app import make_app
from tests.rig import MailRig, free_ports, wait_for
from tests.tasks import FreshUsers, exporter_command, once_at_debug, task_dict, unreachable_task

TELEMETRY_PATH = "/probe-metrics"
EXPORTER = [sys.executable, "-m", "exporter"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Live:
    process: subprocess.Popen[str]
    bases: list[str]  # one per listen address
    config: Path

    def get(self, path: str, base: int = 0, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.bases[base] + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def samples(self) -> Samples:
        text = self.get(TELEMETRY_PATH)[2].decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


def named(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


@pytest.fixture
def live(rig: MailRig, fresh_user: str, tmp_path: Path) -> Iterator[Live]:
    ports = free_ports(2)
    config = tmp_path / "config.yml"
    task = task_dict(rig, fresh_user, name="imaps")  # TLS on both legs: STARTTLS submission, IMAPS
    config.write_text(yaml.safe_dump({"devices": [{"name": "rig", "interval": "1s", "tasks": [task]}]}))
    flags = ["--web.telemetry-path", TELEMETRY_PATH, "--log.level", "warn"]
    listen = ["--web.listen-address", f"127.0.0.1:{ports[0]}", "--web.listen-address", f"[::1]:{ports[1]}"]
    process = subprocess.Popen(
        exporter_command(config, tmp_path / "key", *listen, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    live = Live(process, [f"http://127.0.0.1:{ports[0]}", f"http://[::1]:{ports[1]}"], config)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"exporter exited {process.returncode}: {process.communicate()[0]}")
        try:
            return live.get("/-/ready")[0] == 200
        except OSError:
            return False

    wait_for(ready, 30, "the exporter to answer /-/ready")
    yield live
    process.terminate()
    output = process.communicate(timeout=15)[0]
    assert "Traceback" not in output, output


def test_live_exporter_follows_the_conventions(rig: MailRig, live: Live) -> None:
    succeeded = ("mail_roundtrip_probe_success", (("device", "rig"), ("task", "imaps")))
    wait_for(lambda: live.samples().get(succeeded) == 1.0, 30, "the task to succeed")
    samples = live.samples()
    # Both listen addresses serve, under the telemetry path only.
    assert live.get(TELEMETRY_PATH, base=1)[0] == 200
    assert live.get("/metrics")[0] == 404
    # task_info names the servers as configured; tls_info the last TLS session of each leg.
    assert named(samples, "mail_roundtrip_task_info") == {
        (
            ("device", "rig"),
            ("incoming_host", "localhost"),
            ("protocol", "imap"),
            ("smtp_host", "localhost"),
            ("task", "imaps"),
        ): 1.0
    }
    tls = {dict(labels)["leg"]: dict(labels) for labels in named(samples, "mail_roundtrip_tls_info")}
    assert set(tls) == {"smtp", "mailbox"}
    assert all(leg["version"].startswith("TLSv1.") and leg["cipher"] for leg in tls.values()), tls
    duration = named(samples, "mail_roundtrip_probe_duration_seconds")
    assert all(seconds > 0 for seconds in duration.values()) and len(duration) == 1
    build = named(samples, "mail_roundtrip_exporter_build_info")
    assert [dict(labels)["revision"] for labels in build] != [""]
    # promtool is happy with all of it.
    text = live.get(TELEMETRY_PATH)[2].decode()
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_gzip_when_asked(live: Live) -> None:
    status, headers, body = live.get(TELEMETRY_PATH, headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip", headers
    text = gzip.decompress(body).decode()
    assert "# TYPE mail_roundtrip_probe_success gauge" in text
    status, headers, plain = live.get(TELEMETRY_PATH)
    assert "Content-Encoding" not in headers and plain.startswith(b"# HELP")


def test_config_page_shows_the_running_config_without_secrets(rig: MailRig, fresh_user: str, live: Live) -> None:
    status, headers, body = live.get("/config")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert rig.password(fresh_user) not in text
    assert text.count(SECRET) == 2  # the SMTP AUTH and the mailbox password
    assert str(live.config) in text  # the file's path: here, and not on the status page
    assert str(live.config) not in live.get("/")[2].decode()
    # The dump is a config in the file's own shape: loaded back it gives the same config.
    shown = yaml.safe_load(text)
    assert shown["devices"][0]["tasks"][0]["incoming"]["password"] == SECRET
    assert dump_config(parse_config(shown)) == text.split("\n", 1)[1]


async def test_ready_only_once_the_scheduler_runs(tmp_path: Path) -> None:
    task = unreachable_task(free_ports(1)[0])
    config = parse_config({"devices": [{"name": "d", "interval": "1h", "tasks": [task]}]})
    exporter = Exporter(tmp_path / "config.yml", config, Signer(b"ready"))
    async with TestClient(TestServer(make_app(exporter))) as client:
        assert (await client.get("/-/ready")).status == 503
        assert (await client.get("/-/healthy")).status == 200  # alive, just not ready
        await exporter.start()
        try:
            assert (await client.get("/-/ready")).status == 200
        finally:
            await exporter.stop()


def test_version_in_the_prometheus_style() -> None:
    run = subprocess.run([*EXPORTER, "--version"], capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert lines[0].startswith("mail-roundtrip-exporter, version ") and "(revision: " in lines[0]
    assert lines[1].split()[:2] == ["python", "version:"] and lines[2].split()[0] == "platform:"


@pytest.mark.parametrize("path", ["metrics", "/", "/config", "/with space"])
def test_a_bad_telemetry_path_is_one_line(path: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"devices": [{"name": "d", "tasks": [unreachable_task(free_ports(1)[0])]}]}))
    run = subprocess.run(
        exporter_command(config, tmp_path / "key", "--web.telemetry-path", path),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "--web.telemetry-path" in run.stderr, run.stderr


def test_debug_log_shows_the_conversation_without_secrets(
    rig: MailRig, fresh_users: FreshUsers, tmp_path: Path
) -> None:
    imap_user, pop3_user = fresh_users.take(), fresh_users.take()
    tasks = [
        task_dict(rig, imap_user, smtp="submission-starttls-auth", mailbox="imaps", name="imap"),
        task_dict(rig, pop3_user, smtp="submissions-tls-auth", mailbox="pop3s", name="pop3"),
    ]
    run = once_at_debug(tasks, tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    output = run.stdout + run.stderr
    conversation = [line for line in run.stderr.splitlines() if "msg=protocol" in line]
    said = "\n".join(conversation)
    for expected in ("leg=smtp", "leg=mailbox", "EHLO", "STARTTLS", "MAIL FROM", "RCPT TO", "bytes of letter"):
        assert expected in said, expected
    assert "AUTH PLAIN <redacted>" in said and "LOGIN <redacted>" in said and "PASS <redacted>" in said, said
    assert "dir=<" in said and "queued as" in said  # the servers' side too
    for user in (imap_user, pop3_user):
        password = rig.password(user)
        plain = base64.b64encode(f"\0{rig.address(user)}\0{password}".encode()).decode()
        assert password not in output and plain not in output
    assert "This is an automated test letter" not in output  # a letter's text is never logged

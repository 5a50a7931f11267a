"""The running exporter against the real rig: scheduling, overlapping probes, late letters, metrics,
reload and shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.net.resolve import DeviceRun
from exporter.probe.errors import Reason
from exporter.scheduler import TaskRunner
from tests.rig import MailRig, free_ports, wait_for
from tests.tasks import SIGNER, config_of, task_dict

USERS = ("ex-a", "ex-b", "ex-c")


@pytest.fixture(scope="module")
def users(rig: MailRig) -> tuple[str, ...]:
    rig.add_users(USERS)
    return USERS


@pytest.fixture
def released(rig: MailRig) -> Iterator[None]:
    yield
    rig.release()


def runner_for(task: dict[str, Any]) -> tuple[TaskRunner, DeviceRun]:
    config = config_of(task)
    device, task_config = config.tasks()[0]
    return TaskRunner(device, task_config, SIGNER), DeviceRun(device)


async def finish(runner: TaskRunner) -> None:
    await asyncio.gather(*runner.probes)


async def wait_queued(rig: MailRig, count: int = 1) -> None:
    await asyncio.to_thread(rig.wait_for, lambda: len(rig.queue_ids()) >= count, 10, f"{count} letters queued")


def probe_letters(rig: MailRig, user: str) -> list[Path]:
    return [p for p in rig.messages(user) if b"X-Mail-Roundtrip-Probe" in p.read_bytes()]


async def test_held_letter_lands_in_the_right_bucket(rig: MailRig, users: tuple[str, ...], released: None) -> None:
    runner, run = runner_for(task_dict(rig, users[0], email_timeout="30s"))
    rig.hold()
    runner.launch(run)
    await wait_queued(rig)
    await asyncio.sleep(2.0)  # the stimulus: the letter is held for at least two seconds
    rig.release()
    await finish(runner)
    assert runner.stats.last is not None and runner.stats.last.success, runner.stats.last
    buckets = dict(runner.stats.delivery.cumulative())
    assert buckets["1"] == 0 and buckets["2.5"] + buckets["5"] + buckets["10"] >= 1 and buckets["+Inf"] == 1


async def test_timeout_then_late_arrival_counted_and_cleaned(
    rig: MailRig, users: tuple[str, ...], released: None
) -> None:
    user = users[0]
    runner, run = runner_for(task_dict(rig, user, email_timeout="1s"))
    rig.hold()
    runner.launch(run)
    await finish(runner)
    assert runner.stats.failures[Reason.DELIVERY_TIMEOUT] == 1 and runner.stats.late_arrivals == 0
    rig.release()
    await asyncio.to_thread(rig.wait_for, lambda: probe_letters(rig, user), 10, "the late letter in the mailbox")
    runner.launch(run)
    await finish(runner)
    assert runner.stats.late_arrivals == 1
    assert runner.stats.last is not None and runner.stats.last.success
    assert probe_letters(rig, user) == []


async def test_new_probe_starts_while_old_letter_travels(rig: MailRig, users: tuple[str, ...], released: None) -> None:
    runner, run = runner_for(task_dict(rig, users[1], email_timeout="30s", max_in_flight=2))
    rig.hold()
    runner.launch(run)
    await wait_queued(rig, 1)
    runner.launch(run)
    await wait_queued(rig, 2)
    assert runner.stats.in_flight == 2
    runner.launch(run)  # the bound: counted, not silent
    assert runner.stats.skipped == 1 and runner.stats.in_flight == 2
    rig.release()
    await finish(runner)
    assert runner.stats.probes == 2 and runner.stats.failures.total() == 0
    assert probe_letters(rig, users[1]) == []


async def test_smtp_down_then_recovers(rig: MailRig, users: tuple[str, ...]) -> None:
    runner, run = runner_for(task_dict(rig, users[1]))
    runner.launch(run)
    await finish(runner)
    assert runner.stats.last is not None and runner.stats.last.success
    rig.stop_smtp()
    try:
        runner.launch(run)
        await finish(runner)
        last = runner.stats.last
        assert last is not None and not last.success and last.reason is Reason.CONNECT, last
        assert last.error is not None and "refused" in last.error
    finally:
        rig.start_smtp()
    runner.launch(run)
    await finish(runner)
    assert runner.stats.last is not None and runner.stats.last.success
    assert runner.stats.failures == {Reason.CONNECT: 1}


# --- the exporter as a process -------------------------------------------------------------------


@dataclass
class Running:
    process: subprocess.Popen[str]
    url: str
    config: Path

    def get(self, path: str, accept: str = "") -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def post(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, method="POST", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = self.get("/metrics")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, tuple(sorted(labels.items()))))

    def until(self, predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        return wait_for(predicate, timeout, what)

    def write_config(self, *tasks: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump({"devices": [{"name": "rig", "interval": "1s", "tasks": list(tasks)}]}))


@pytest.fixture
def exporter(rig: MailRig, users: tuple[str, ...], tmp_path: Path) -> Iterator[Running]:
    port = free_ports(1)[0]
    running = Running(None, f"http://127.0.0.1:{port}", tmp_path / "config.yml")  # type: ignore[arg-type]
    running.write_config(task_dict(rig, users[2], name="imap"))
    running.process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(running.config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--signing.key-file",
            str(tmp_path / "key"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running.until(lambda: _ready(running), "the exporter to answer /-/ready")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


def _ready(running: Running) -> bool:
    try:
        return running.get("/-/ready")[0] == 200
    except OSError:
        return False


def test_live_scrape_passes_promtool(exporter: Running) -> None:
    exporter.until(lambda: exporter.value("mail_roundtrip_probes_total", device="rig", task="imap"), "a probe")
    _, text = exporter.get("/metrics")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    status, openmetrics = exporter.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and openmetrics.rstrip().endswith("# EOF")
    assert exporter.value("mail_roundtrip_probe_success", device="rig", task="imap") == 1.0
    for reason in Reason:
        assert (
            exporter.value("mail_roundtrip_probe_failures_total", device="rig", task="imap", reason=reason.value) == 0.0
        )
    status, page = exporter.get("/")
    assert status == 200 and 'href="/task/rig/imap"' in page and 'class="badge ok"' in page


def test_series_exist_before_the_first_probe_finishes(rig: MailRig, exporter: Running) -> None:
    samples = exporter.samples()
    assert ("mail_roundtrip_probe_success", (("device", "rig"), ("task", "imap"))) in samples


def test_reload_adds_and_removes_tasks(rig: MailRig, users: tuple[str, ...], exporter: Running) -> None:
    exporter.write_config(task_dict(rig, users[2], name="pop3", mailbox="pop3s"))
    exporter.process.send_signal(signal.SIGHUP)
    exporter.until(
        lambda: exporter.value("mail_roundtrip_probe_success", device="rig", task="pop3") == 1.0,
        "the new task to succeed",
    )
    assert exporter.value("mail_roundtrip_probe_success", device="rig", task="imap") is None
    assert not any(labels and ("task", "imap") in labels for _, labels in exporter.samples())

    exporter.write_config(
        task_dict(rig, users[2], name="pop3", mailbox="pop3s"), task_dict(rig, users[2], name="imap2")
    )
    status, _ = exporter.post("/-/reload")
    assert status == 200
    assert exporter.value("mail_roundtrip_probe_success", device="rig", task="imap2") is not None


def test_bad_reload_keeps_old_config(exporter: Running) -> None:
    exporter.config.write_text("devices:\n  - name: rig\n    tasks: []\n")
    status, body = exporter.post("/-/reload")
    assert status == 500 and "devices[0].tasks: needs at least one task" in body
    assert exporter.value("mail_roundtrip_exporter_config_last_reload_successful") == 0.0
    before = exporter.value("mail_roundtrip_probes_total", device="rig", task="imap") or 0.0
    exporter.until(
        lambda: (exporter.value("mail_roundtrip_probes_total", device="rig", task="imap") or 0) > before,
        "the old task to keep probing",
    )


def test_sigterm_exits_cleanly_with_probes_in_flight(rig: MailRig, exporter: Running, released: None) -> None:
    rig.hold()  # letters stay in the queue: probes are waiting when the signal comes
    exporter.until(
        lambda: exporter.value("mail_roundtrip_probes_in_flight", device="rig", task="imap"), "a probe in flight"
    )
    started = time.monotonic()
    exporter.process.send_signal(signal.SIGTERM)
    output, _ = exporter.process.communicate(timeout=10)
    assert exporter.process.returncode == 0, output
    assert "exporter stopped" in output and "Traceback" not in output
    print(f"SIGTERM to exit: {time.monotonic() - started:.2f}s")

"""Build task configs that point at the test rig, so each test names only what it varies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.config.load import parse_config
from exporter.config.model import Config, TaskConfig
from exporter.legs.outbox import Outbox
from exporter.letter.token import Signer
from exporter.net.resolve import DeviceRun
from exporter.probe.result import ProbeResult
from exporter.probe.roundtrip import run_probe
from exporter.probe.watch import Mailbox
from tests.rig import MailRig

# SMTP legs of the rig: (port attribute, security, with AUTH)
SMTP_LEGS = {
    "smtp-plain": ("smtp", "none", False),
    "smtp-starttls": ("smtp", "starttls", False),
    "submission-starttls-auth": ("submission", "starttls", True),
    "submissions-tls-auth": ("submissions", "tls", True),
}
MAILBOX_LEGS = {
    "imap-plain": ("imap", "imap", "none"),
    "imap-starttls": ("imap", "imap", "starttls"),
    "imaps": ("imap", "imaps", "tls"),
    "pop3-plain": ("pop3", "pop3", "none"),
    "pop3-stls": ("pop3", "pop3", "starttls"),
    "pop3s": ("pop3", "pop3s", "tls"),
}


def smtp_leg(rig: MailRig, kind: str, user: str, host: str = "localhost", **extra: Any) -> dict[str, Any]:
    port_name, security, auth = SMTP_LEGS[kind]
    leg: dict[str, Any] = {
        "host": f"{host}:{getattr(rig.ports, port_name)}",
        "security": security,
        "ca_file": str(rig.ca_file),
    }
    if auth:
        leg.update(user=rig.address(user), password=rig.password(user))
    leg.update(extra)
    return leg


def mailbox_leg(rig: MailRig, kind: str, user: str, host: str = "localhost", **extra: Any) -> dict[str, Any]:
    protocol, port_name, security = MAILBOX_LEGS[kind]
    leg: dict[str, Any] = {
        "protocol": protocol,
        "host": f"{host}:{getattr(rig.ports, port_name)}",
        "security": security,
        "user": rig.address(user),
        "password": rig.password(user),
        "ca_file": str(rig.ca_file),
        "poll_interval": "100ms",
    }
    leg.update(extra)
    return leg


def task_dict(
    rig: MailRig,
    user: str,
    smtp: str = "submission-starttls-auth",
    mailbox: str = "imaps",
    name: str = "t",
    **extra: Any,
) -> dict[str, Any]:
    task: dict[str, Any] = {
        "name": name,
        "destination": rig.address(user),
        "completion_timeout": "10s",
        "email_timeout": "15s",
        "smtp": smtp_leg(rig, smtp, user),
        "incoming": mailbox_leg(rig, mailbox, user),
    }
    task.update(extra)
    return task


def unreachable_task(port: int, name: str = "t") -> dict[str, Any]:
    """A task whose servers do not exist (nothing listens on ``port``): its probes fail with reason
    connect, for tests of the exporter around the probes."""
    return {
        "name": name,
        "destination": "probe@example.test",
        "smtp": {"host": f"127.0.0.1:{port}", "security": "none"},
        "incoming": {"protocol": "pop3", "host": f"127.0.0.1:{port}", "security": "none", "user": "u", "password": "p"},
    }


def exporter_command(config: Path, key: Path, *flags: str) -> list[str]:
    """The exporter as a process, as the tests start it."""
    return [sys.executable, "-m", "exporter", "--config.file", str(config), "--signing.key-file", str(key), *flags]


def once_at_debug(tasks: list[dict[str, Any]], directory: Path) -> subprocess.CompletedProcess[str]:
    """The exporter as a process running ``tasks`` (device "rig") once, logging every protocol line."""
    config = directory / "config.yml"
    config.write_text(yaml.safe_dump({"devices": [{"name": "rig", "tasks": tasks}]}))
    return subprocess.run(
        exporter_command(config, directory / "key", "--once", "--log.level", "debug"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def config_of(*tasks: dict[str, Any], device: str = "rig", **device_extra: Any) -> Config:
    return parse_config({"devices": [{"name": device, "tasks": list(tasks), **device_extra}]})


def task_of(task: dict[str, Any]) -> TaskConfig:
    return config_of(task).tasks()[0][1]


SIGNER = Signer(b"tests-signing-key-0123456789abcdef")


async def probe_once(
    task: dict[str, Any],
    mailbox: Mailbox | None = None,
    dns: dict[str, Any] | None = None,
    outbox: Outbox | None = None,
) -> ProbeResult:
    """One round trip of a single-task config (its device's ``dns`` given), as the scheduler would run it."""
    config = config_of(task, dns=dns) if dns else config_of(task)
    device, task_config = config.tasks()[0]
    resolve = DeviceRun(device).resolver(task_config)
    return await run_probe(device.name, task_config, SIGNER, resolve, mailbox, outbox)


class FreshUsers:
    """Hands out users no test has had yet, created in batches: each batch costs one reload of both
    servers (a second or more on a loaded machine), each user only a line in their user files."""

    BATCH = 8

    def __init__(self, rig: MailRig) -> None:
        self.rig = rig
        self._created = 0
        self._unused: list[str] = []

    def take(self) -> str:
        if not self._unused:
            names = [f"fresh-{self._created + i}" for i in range(1, self.BATCH + 1)]
            self.rig.add_users(names)
            self._created += self.BATCH
            self._unused = names
        return self._unused.pop(0)

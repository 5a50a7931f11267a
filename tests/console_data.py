"""Tasks with made-up probe histories, for the console's page tests and scripts/console_benchmark.py:
real config, scheduler runners and statistics, only the probes are invented (nothing is sent)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from exporter.config.load import parse_config
from exporter.config.model import Config
from exporter.letter.token import Signer
from exporter.net.tls import TLSFacts
from exporter.probe.errors import Reason
from exporter.probe.phases import Leg, Phase
from exporter.probe.result import LegResult, ProbeResult, Span
from exporter.scheduler import TaskRunner
from exporter.service import Exporter
from exporter.transcript import Transcript

SIGNER = Signer(b"console-tests-signing-key-0123456")
TLS = TLSFacts("TLSv1.3", "TLS_AES_256_GCM_SHA384", time.time() + 40 * 86400)
# (phase, start, seconds) of a typical round trip: the mailbox leg opens while SMTP connects.
TIMELINE = (
    (Phase.SMTP_DNS, 0.000, 0.002),
    (Phase.MAILBOX_DNS, 0.000, 0.002),
    (Phase.SMTP_CONNECT, 0.002, 0.001),
    (Phase.MAILBOX_CONNECT, 0.002, 0.001),
    (Phase.SMTP_GREETING, 0.003, 0.004),
    (Phase.MAILBOX_TLS, 0.003, 0.012),
    (Phase.SMTP_TLS, 0.007, 0.011),
    (Phase.SMTP_GREETING, 0.018, 0.002),
    (Phase.MAILBOX_LOGIN, 0.015, 0.020),
    (Phase.SMTP_AUTH, 0.020, 0.015),
    (Phase.SMTP_SUBMIT, 0.035, 0.030),
    (Phase.MAILBOX_SEARCH, 0.190, 0.004),
    (Phase.MAILBOX_DELETE, 0.194, 0.003),
)


def task(name: str, port: int = 9) -> dict[str, Any]:
    return {
        "name": name,
        "destination": f"{name}@example.test",
        "smtp": {"host": f"smtp-{name}.example.test:{port}", "user": "probe@example.test", "password": "pw-smtp"},
        "incoming": {"protocol": "imap", "host": f"imap.example.test:{port}", "user": "probe", "password": "pw-imap"},
    }


def exporter_with(tasks: int, devices: int = 10, path: Path = Path("config.yml")) -> Exporter:
    """An exporter whose scheduler holds ``tasks`` runners (not started: no probe runs)."""
    per_device = max(1, tasks // devices)
    config = parse_config(
        {
            "devices": [
                {"name": f"dev{d}", "interval": "60s", "tasks": [task(f"t{d}-{i}") for i in range(per_device)]}
                for d in range(devices)
            ]
        }
    )
    return exporter_of(config, path)


def exporter_of(config: Config, path: Path = Path("config.yml")) -> Exporter:
    """An exporter with a runner per task of ``config``, its scheduler not started (probes run only
    when a test asks, as Probe now does)."""
    exporter = Exporter(path, config, SIGNER)
    for device, task_config in config.tasks():
        exporter.scheduler.runners[(device.name, task_config.name)] = TaskRunner(device, task_config, SIGNER)
    return exporter


def result(device: str, task_name: str, success: bool, finished: float, error: str = "") -> ProbeResult:
    """A finished probe with every fact a real one has: phases and their timeline, TLS, a transcript."""
    spans = [Span(phase, start, seconds) for phase, start, seconds in TIMELINE]
    if not success:
        spans = spans[:9]  # failed at the mailbox login
    made = ProbeResult(device=device, task=task_name, token="mrt-1700000000-abc-def", started=finished - 0.2)
    made.success, made.finished, made.spans = success, finished, spans
    made.phases = {span.phase: span.seconds for span in spans}
    made.smtp = LegResult("192.0.2.1", dns_cached=False, tls=TLS)
    made.mailbox = LegResult("192.0.2.2", dns_cached=True, tls=TLS)
    if success:
        made.smtp_reply, made.accepted_offset, made.delivery_seconds = "250 2.0.0 Ok: queued as 4Xy1Z2", 0.065, 0.129
    else:
        made.reason, made.failed_phase = Reason.AUTH, Phase.MAILBOX_LOGIN
        made.error = error or "mailbox_login: server rejected the credentials: NO [AUTHENTICATIONFAILED]"
    made.transcript = Transcript(device, task_name)
    for line in ("220 mail.example.test ESMTP", "EHLO probe", "250-mail.example.test", "AUTH PLAIN <redacted>"):
        made.transcript.add(Leg.SMTP, line.startswith(("EHLO", "AUTH")), line)
    return made


def fill(exporter: Exporter, probes: int, failing_every: int = 3) -> None:
    """``probes`` results per task; every ``failing_every``-th task fails its last ones (0: none fails)."""
    now = time.time()
    for index, runner in enumerate(exporter.scheduler.runners.values()):
        for n in range(probes):
            ok = not failing_every or index % failing_every != 0 or n < probes // 2
            runner.stats.record(result(runner.device, runner.task.name, ok, now - (probes - n) * 60))

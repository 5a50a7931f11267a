"""One page per outage, on a real Prometheus and Alertmanager with the shipped rules and the shipped
Alertmanager routes and inhibitions (only the receivers, the waits and the rules' `for:` shortened).

40 tasks probe the real rig from two sites: site a sends through a relay (a TCP proxy in front of the
rig's submission port), site b straight to it. Stopping site a's relay must page exactly once, for
site a, with the per-task alerts of site a inhibited; site b stays quiet.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.hostile import proxy, serve
from tests.rig import MailRig, free_ports
from tests.tasks import FreshUsers, exporter_command, task_dict
from tests.test_alerting import PROMETHEUS_DIR, Server, Stack, prometheus_config, start, tool

T = TypeVar("T")
TASKS_PER_SITE = 20
DEADLINE = 120.0
SITE_A_FAILING = {"alertname": "MailRoundTripSiteFailing", "job": "mail-roundtrip", "severity": "critical", "site": "a"}
DEBUG_QUERIES = (
    "count(ALERTS) by (alertname)",
    "site:mail_roundtrip_tasks_failing:ratio",
    "count(device_task:mail_roundtrip_probe_failing:bool)",
)


@dataclass
class Webhook:
    """An Alertmanager webhook receiver in a thread of its own: every notification, by receiver."""

    port: int
    notifications: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(0)

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            hook.notifications.setdefault(self.path.strip("/"), []).append(body)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    hook.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield hook
    server.shutdown()
    thread.join()
    server.server_close()


def two_sites(rig: MailRig, users: list[str], relay_port: int) -> dict[str, Any]:
    devices = []
    for site, smtp_host, mailbox_host in (("a", f"127.0.0.1:{relay_port}", "127.0.0.1"), ("b", None, "localhost")):
        tasks = []
        for index in range(TASKS_PER_SITE):
            user = users[index % len(users)]
            task = task_dict(rig, user, name=f"{site}{index}", completion_timeout="8s", email_timeout="8s")
            if smtp_host is not None:
                task["smtp"]["host"] = smtp_host  # through the relay; 127.0.0.1 is in the rig's certificate
            task["incoming"]["host"] = f"{mailbox_host}:{rig.ports.imaps}"
            tasks.append(task)
        devices.append({"name": f"site-{site}", "interval": "10s", "labels": {"site": site}, "tasks": tasks})
    return {"devices": devices}


def alertmanager_config(tmp: Path, hook: Webhook) -> Path:
    """The shipped routes, grouping and inhibitions; webhooks for receivers, short waits. A second page
    could only come after group_interval, so an hour makes 'exactly one page' mean one notification."""
    config = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text())
    config.pop("global")
    config["receivers"] = [
        {"name": name, "webhook_configs": [{"url": f"http://127.0.0.1:{hook.port}/{name}", "send_resolved": False}]}
        for name in ("pager", "tickets")
    ]
    config["route"].update(group_wait="5s", group_interval="1h", repeat_interval="4h")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


async def until(check: Callable[[], Awaitable[T | None]], what: str, stack: Stack) -> T:
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while (result := await check()) is None or result is False:
        if asyncio.get_running_loop().time() > deadline:
            alerts = [(a["labels"]["alertname"], a["status"]["state"]) for a in stack.am_alerts()]
            pytest.fail(f"timed out waiting for {what}; Alertmanager has {alerts}\n{stack.logs()}")
        await asyncio.sleep(0.5)  # polling with a deadline: Prometheus and Alertmanager have no events to wait on
    return result


async def start_stack(tmp: Path, exporter_config: dict[str, Any], hook: Webhook) -> Stack:
    exporter_port, prometheus_port, alertmanager_port = free_ports(3)
    config = tmp / "exporter.yml"
    config.write_text(yaml.safe_dump(exporter_config))
    listen = ["--web.listen-address", f"127.0.0.1:{exporter_port}"]
    commands = {
        "exporter": (exporter_command(config, tmp / "key", *listen), exporter_port),
        "alertmanager": (
            [
                tool("prometheus-alertmanager", "alertmanager"),
                f"--config.file={alertmanager_config(tmp, hook)}",
                f"--storage.path={tmp / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                "--cluster.listen-address=",
            ],
            alertmanager_port,
        ),
        "prometheus": (
            [
                tool("prometheus"),
                f"--config.file={prometheus_config(tmp, exporter_port, alertmanager_port)}",
                f"--storage.tsdb.path={tmp / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--rules.alert.resend-delay=1s",
            ],
            prometheus_port,
        ),
    }
    servers: list[Server] = []
    try:
        for name, (command, port) in commands.items():
            # In a thread: the relay this test serves runs on this event loop and must keep answering.
            servers.append(await asyncio.to_thread(start, name, command, f"http://127.0.0.1:{port}", tmp))
    except BaseException:
        for server in reversed(servers):
            await asyncio.to_thread(server.stop)
        raise
    return Stack(exporter=servers[0], alertmanager=servers[1], prometheus=servers[2], servers=servers)


def about_site_a(alert: dict[str, str]) -> bool:
    return alert.get("site") == "a" or "127.0.0.1" in (alert.get("smtp_host"), alert.get("incoming_host"))


def labels(alerts: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [alert["labels"] for alert in alerts]


@pytest.mark.slow
async def test_a_relay_outage_pages_once_for_its_site(
    rig: MailRig, fresh_users: FreshUsers, webhook: Webhook, tmp_path: Path
) -> None:
    users = [fresh_users.take() for _ in range(8)]
    stack: Stack | None = None
    try:
        async with serve(proxy("127.0.0.1", rig.ports.submission)) as relay:
            stack = await start_stack(tmp_path, two_sites(rig, users, relay.port), webhook)
            query = stack.query
            working = "count(mail_roundtrip_probe_success == 1)"

            async def all_working() -> bool:
                result = await asyncio.to_thread(query, working)
                return bool(result) and float(result[0]["value"][1]) == 2 * TASKS_PER_SITE

            await until(all_working, "all 40 tasks to succeed", stack)
            assert "pager" not in webhook.notifications, webhook.notifications
        # The relay is gone: site a's probes fail with connect.

        async def paged() -> list[dict[str, Any]] | None:
            return webhook.notifications.get("pager")

        pages = await until(paged, "a page", stack)

        async def inhibited() -> list[dict[str, Any]] | None:
            alerts = await asyncio.to_thread(stack.am_alerts)
            failing = [a for a in alerts if a["labels"]["alertname"] == "MailRoundTripFailing"]
            site_a = [a for a in failing if a["labels"].get("site") == "a"]
            if len(site_a) < TASKS_PER_SITE or any(a["status"]["state"] != "suppressed" for a in site_a):
                return None
            return alerts if SITE_A_FAILING in labels(alerts) else None

        alerts = await until(inhibited, "site a's alert, and its task alerts all inhibited", stack)
        assert len(pages) == 1, json.dumps(pages, indent=1)
        # The page is about site a: its site, its relay or its mailbox address. Which of the site's
        # alerts made it into the first notification is a race (they fire within a second or two of
        # each other); the rest join the same group, whose next notification waits group_interval.
        first_page = labels(pages[0]["alerts"])
        assert first_page and all(about_site_a(alert) for alert in first_page), first_page
        assert any(alert.get("site") == "a" for alert in first_page), first_page
        site_failing = {
            "alertname": "MailRoundTripSiteFailing",
            "job": "mail-roundtrip",
            "severity": "critical",
            "site": "a",
        }
        assert site_failing in labels(alerts)
        # Site b: quiet. Nothing about it in Alertmanager. (Site a's first task alerts may reach the
        # ticket receiver before its group fires: tickets, not pages; from then on they are inhibited.)
        assert not [a for a in labels(alerts) if a.get("site") == "b" or a.get("smtp_host") == "localhost"]
    finally:
        if stack is not None:
            for server in reversed(stack.servers):
                await asyncio.to_thread(server.stop)

"""Probe now: one probe of a task at once, from the task page's button or ``/probe`` for scripts.

A probe sends a real letter, so it is bounded: one run at a time per task and at most PER_MINUTE
started per task in any minute; the page's basic auth (web.guard) applies as to every path, and a
request another site's page made the browser send (a cross-site form or image) is refused, so a
logged-in admin's browser cannot be made to send letters. The probe runs as the task's own probes
do (TaskRunner.probe_now: counted, recorded, its late letter recognised by later probes), and a
client that goes away does not cut it short: the letter would be left in the mailbox.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from exporter.net.resolve import DeviceRun
from exporter.probe.result import LegResult, ProbeResult
from exporter.report import render_report
from exporter.sanitise import MESSAGE_LIMIT, server_text
from exporter.service import Exporter

PER_MINUTE = 5
TaskKey = tuple[str, str]


class Refused(Exception):
    """The run was not started: ``status`` and a one-line reason for the client."""

    def __init__(self, status: int, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.retry_after = status, reason, retry_after

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        return web.Response(status=self.status, text=f"{self.reason}\n", headers=headers)


class ProbeNowGate:
    """One Probe now per task at a time, at most PER_MINUTE started per task in any 60 s."""

    def __init__(self, per_minute: int = PER_MINUTE, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._running: set[TaskKey] = set()
        self._started: dict[TaskKey, deque[float]] = {}

    def claim(self, key: TaskKey) -> None:
        """Raise Refused, or count the run as started (release it when it ends)."""
        if key in self._running:
            raise Refused(429, "a Probe now of this task is already running", retry_after=5)
        now = self._clock()
        started = self._started.setdefault(key, deque())
        while started and started[0] <= now - 60:
            started.popleft()
        if len(started) >= self.per_minute:
            raise Refused(429, f"at most {self.per_minute} Probe now runs per task and minute", retry_after=60)
        started.append(now)
        self._running.add(key)

    def release(self, key: TaskKey) -> None:
        self._running.discard(key)
        started = self._started.get(key)
        if started is not None and not started:
            del self._started[key]


def check_same_site(request: web.Request) -> None:
    """Refuse what a page of another site made the browser send (it would carry the admin's basic auth).
    Browsers say so in Sec-Fetch-Site (older ones only in Origin, which a reverse proxy's Host may not
    match, so it is asked only without the former); scripts (curl) send neither and are let through."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site is not None:
        foreign = site not in ("same-origin", "none")
    else:
        foreign = origin is not None and origin.split("://", 1)[-1] != request.host
    if foreign:
        raise Refused(403, "refused: the request came from another site's page")


async def run_now(exporter: Exporter, gate: ProbeNowGate, key: TaskKey) -> ProbeResult:
    """Run the task once now and wait for its result (Refused if it cannot or may not run)."""
    runner = exporter.scheduler.runners.get(key)
    device = next((device for device in exporter.config.devices if device.name == key[0]), None)
    if runner is None or device is None:
        raise Refused(404, "no such task")
    gate.claim(key)
    try:
        probe = runner.probe_now(DeviceRun(device))
    except BaseException:
        gate.release(key)
        raise
    probe.add_done_callback(lambda _: gate.release(key))  # when the probe ends, not when the client leaves
    try:
        return await asyncio.shield(probe)
    except asyncio.CancelledError:
        if probe.cancelled():  # a reload removed the task, or the exporter is stopping
            raise Refused(503, "the probe was stopped (the task was reloaded or the exporter stops)") from None
        raise


def result_json(result: ProbeResult) -> dict[str, Any]:
    """A probe's result for scripts; server text sanitised as everywhere, no secret in any of it."""
    return {
        "device": result.device,
        "task": result.task,
        "success": result.success,
        "reason": result.reason.value if result.reason else None,
        "failed_phase": result.failed_phase.value if result.failed_phase else None,
        "error": server_text(result.error, MESSAGE_LIMIT) if result.error else None,
        "started": result.started,
        "finished": result.finished,
        "duration_seconds": result.finished - result.started,
        "delivery_seconds": result.delivery_seconds,
        "server_delivery_seconds": result.server_delivery_seconds,
        "smtp_reply": server_text(result.smtp_reply) if result.smtp_reply else None,
        "phases": {phase.value: seconds for phase, seconds in result.phases.items()},
        "timeline": [{"phase": s.phase.value, "start": s.start, "seconds": s.seconds} for s in result.spans],
        "legs": {leg.value: _leg_json(facts) for leg, facts in result.legs().items()},
        "letters_swept": result.swept,
    }


def _leg_json(leg: LegResult) -> dict[str, Any]:
    tls = leg.tls
    return {
        "address": leg.address,
        "mx_host": leg.mx_host,
        "dns_cached": leg.dns_cached,
        "tls": None if tls is None else {"version": tls.version, "cipher": tls.cipher, "not_after": tls.not_after},
    }


def debug_text(result: ProbeResult) -> str:
    """``debug=true``: the transcript, then the result as --once reports it (as blackbox's debug output
    gives the probe's log, then its metrics)."""
    transcript = result.transcript.text() if result.transcript is not None else "(no transcript)\n"
    return f"Transcript of the probe:\n{transcript}\nResult:\n{render_report([result])}\n"

"""Runs every task on its device's interval, with probes of one task allowed to overlap.

The product this follows launches nothing new until the last letter arrived (up to an hour), so one
slow delivery blinds it. Here a probe starts on schedule even while earlier letters still travel, up
to ``max_in_flight`` per task; past that, the skipped run is counted, not silent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from exporter.config.model import Config, DeviceConfig, TaskConfig
from exporter.exposition.stats import TaskInfo, TaskStats
from exporter.legs.mailbox import FoundLetter
from exporter.legs.outbox import Outbox
from exporter.letter.token import Signer
from exporter.net.resolve import DeviceRun, ResolverCache
from exporter.probe.history import DEFAULT_LIMIT, ProbeHistory
from exporter.probe.result import ProbeResult
from exporter.probe.roundtrip import run_probe
from exporter.probe.watch import Mailbox

log = logging.getLogger(__name__)

# A letter that has not arrived a day after acceptance is not waited for any more (the sweep of old
# signed letters still removes it); the bound keeps memory and the IMAP search small.
LATE_MAX_AGE = 86400.0
LATE_MAX_COUNT = 100

TaskKey = tuple[str, str]


@dataclass
class Slot:
    """Where a task's probes fall: ``position`` seconds after the scheduler's epoch, then every
    ``interval``; ``cycle`` is the device run of its next probe. Kept by the task across reloads."""

    position: float
    interval: float
    cycle: int

    def due(self, epoch: float) -> float:
        return epoch + self.position + self.cycle * self.interval


class TaskRunner:
    """One task: its statistics, its mailbox memory and its in-flight probes."""

    def __init__(
        self, device: DeviceConfig, task: TaskConfig, signer: Signer, history_limit: int = DEFAULT_LIMIT
    ) -> None:
        self.device = device.name
        self.task = task
        self.signer = signer
        info = TaskInfo(task.incoming.protocol.value, task.smtp.host, task.incoming.server.host)
        history = ProbeHistory(history_limit)
        self.stats = TaskStats(device.name, task.name, device.interval, task.email_timeout, info, history=history)
        self.mailbox = Mailbox(task.incoming, signer, on_late=self._late_arrival)
        self.outbox = Outbox(task.smtp)
        self.probes: set[asyncio.Task[ProbeResult]] = set()
        self.slot: Slot | None = None  # set by the scheduler

    def launch(self, run: DeviceRun) -> None:
        if len(self.probes) >= self.task.max_in_flight:
            self.stats.skipped += 1
            log.warning(
                "probe skipped: max_in_flight letters still travelling",
                extra={"device": self.device, "task": self.task.name, "in_flight": len(self.probes)},
            )
            return
        self._start(run)

    def probe_now(self, run: DeviceRun) -> asyncio.Task[ProbeResult]:
        """One probe outside the schedule (the console's Probe now), counted like every other."""
        return self._start(run)

    def _start(self, run: DeviceRun) -> asyncio.Task[ProbeResult]:
        probe = asyncio.create_task(self._probe(run), name=f"probe {self.device}/{self.task.name}")
        self.probes.add(probe)
        probe.add_done_callback(self.probes.discard)
        return probe

    async def _probe(self, run: DeviceRun) -> ProbeResult:
        self.stats.in_flight += 1
        try:
            result = await run_probe(
                self.device, self.task, self.signer, run.resolver(self.task), self.mailbox, self.outbox
            )
        finally:
            self.stats.in_flight -= 1
        self.stats.record(result)
        self._forget_old_late_letters()
        _log_result(result)
        return result

    def _late_arrival(self, letter: FoundLetter, accepted: float) -> None:
        self.stats.late_arrivals += 1
        log.info(
            "late letter arrived",
            extra={"device": self.device, "task": self.task.name, "delivery_seconds": round(time.time() - accepted, 3)},
        )

    def _forget_old_late_letters(self) -> None:
        late = self.mailbox.late
        cutoff = time.time() - LATE_MAX_AGE
        for token, accepted in sorted(late.items(), key=lambda item: item[1]):
            if accepted < cutoff or len(late) > LATE_MAX_COUNT:
                del late[token]

    async def stop(self) -> None:
        for probe in list(self.probes):
            probe.cancel()
        await asyncio.gather(*self.probes, return_exceptions=True)
        await self.mailbox.close()
        await self.outbox.close()


def _log_result(result: ProbeResult) -> None:
    fields = {
        "device": result.device,
        "task": result.task,
        "result": "success" if result.success else "failure",
        "reason": result.reason.value if result.reason else "",
        "delivery_seconds": round(result.delivery_seconds, 3) if result.delivery_seconds is not None else "",
        "duration_seconds": round(result.finished - result.started, 3),
    }
    if result.error:
        fields["error"] = result.error
    log.info("probe finished", extra=fields)


def spread(name: str) -> float:
    """A stable fraction in [0, 1) per device, so devices do not all start at once after a restart."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") / 2**32


class Scheduler:
    """Each task launches at its own slot in its device's interval; a reload keeps every unchanged
    task's slot (and so the rest of a device run that is under way), and only new or re-timed tasks
    get new slots. ``clock`` and ``sleep`` are the monotonic clock and its sleep."""

    def __init__(
        self,
        signer: Signer,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        history_limit: int = DEFAULT_LIMIT,
    ) -> None:
        self.signer = signer
        self.history_limit = history_limit  # probes each task keeps for the console
        self.runners: dict[TaskKey, TaskRunner] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._clock = clock
        self._sleep = sleep
        self._epoch = clock()

    def stats(self) -> Iterator[TaskStats]:
        return (runner.stats for runner in self.runners.values())

    async def apply(self, config: Config) -> None:
        """Start the config's tasks; unchanged tasks keep their in-flight probes, counters and slots."""
        await self._stop_loops()
        wanted = {(device.name, task.name): (device, task) for device, task in config.tasks()}
        for key in [k for k, runner in self.runners.items() if k not in wanted or runner.task != wanted[k][1]]:
            await self.runners.pop(key).stop()
        for key, (device, task) in wanted.items():
            if key not in self.runners:
                self.runners[key] = TaskRunner(device, task, self.signer, self.history_limit)
            stats = self.runners[key].stats
            stats.interval = device.interval  # a device's interval and labels may change on reload
            stats.labels = device.labels_of(task)
        for device in config.devices:
            runners = [self.runners[(device.name, task.name)] for task in device.tasks]
            for index, runner in enumerate(runners):
                if runner.slot is None or runner.slot.interval != device.interval:
                    runner.slot = self._first_slot(device, index, len(runners))
            self._loops.append(asyncio.create_task(self._device_loop(device, runners), name=f"device {device.name}"))

    def _first_slot(self, device: DeviceConfig, index: int, count: int) -> Slot:
        """A device's tasks start spread over its interval, after a per-device offset; counted from the
        exporter's start, so a new slot is the next one due, never one in the past."""
        position = (spread(device.name) + index / count) * device.interval
        elapsed = self._clock() - self._epoch - position
        return Slot(position, device.interval, max(0, math.ceil(elapsed / device.interval)))

    async def _device_loop(self, device: DeviceConfig, runners: list[TaskRunner]) -> None:
        """Launch each task at its slot; the tasks of one cycle share one device run (device_cached DNS)."""
        ttl_cache = ResolverCache()  # ttl_cached answers outlive a run (not a reload: servers may change)
        run: DeviceRun | None = None
        run_cycle = -1
        slots = [(runner, runner.slot) for runner in runners if runner.slot is not None]
        while slots:
            runner, slot = min(slots, key=lambda item: item[1].due(self._epoch))
            await self._sleep(max(0.0, slot.due(self._epoch) - self._clock()))
            if run is None or slot.cycle != run_cycle:
                run, run_cycle = DeviceRun(device, ttl_cache), slot.cycle
            runner.launch(run)
            slot.cycle += 1

    async def _stop_loops(self) -> None:
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()

    async def stop(self) -> None:
        await self._stop_loops()
        for runner in self.runners.values():
            await runner.stop()

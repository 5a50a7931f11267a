"""What the console costs: the overview and task page at 1,000 tasks, how long a console request
holds the event loop the probes run on, what recording every probe's transcript costs, and the
memory of the kept history. No mail server: the tasks' probe histories are made up
(tests/console_data.py), rendered through the real code; nothing is sent.

    .venv/bin/python scripts/console_benchmark.py            # about half a minute
    .venv/bin/python scripts/console_benchmark.py --tasks 5000 --history 50

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from exporter.probe.phases import Leg  # noqa: E402
from exporter.service import Exporter  # noqa: E402
from exporter.transcript import note, recording  # noqa: E402
from exporter.web.app import make_app  # noqa: E402
from exporter.web.console.overview import Overview  # noqa: E402
from exporter.web.console.task import TaskPage  # noqa: E402
from exporter.web.paths import Prefix  # noqa: E402
from tests.console_data import exporter_with, fill, result  # noqa: E402

# What one IMAP probe's clients note (tests/test_console_browser.py's transcript): about 60 lines.
PROBE_LINES = [
    (Leg.SMTP, False, "220 mail.example.test ESMTP Postfix"),
    (Leg.SMTP, True, "EHLO mail-roundtrip-exporter.localhost"),
    (Leg.SMTP, False, "250-mail.example.test 250-PIPELINING 250-SIZE 52428800 250-STARTTLS 250 SMTPUTF8"),
    (Leg.MAILBOX, False, "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE] Dovecot ready."),
    (Leg.SMTP, True, "AUTH PLAIN <redacted>"),
    (Leg.MAILBOX, True, "IKCE1 LOGIN <redacted>"),
    (Leg.SMTP, True, "MAIL FROM:<probe@example.test>"),
    (Leg.SMTP, False, "250 2.1.0 Ok"),
    (Leg.MAILBOX, True, 'IKCE4 UID SEARCH OR (SUBJECT "mrt-1796547739-caa3da1d9c5c336e-96d0311af6c1c7460ae1")'),
    (Leg.MAILBOX, False, "* SEARCH 4"),
] * 6


def timed(function: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return times


def ms(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(values) * 1000:6.2f} ms, p95 {p95 * 1000:6.2f} ms"


def change(exporter: Exporter, share: float) -> None:
    """What happens between two refreshes: ``share`` of the tasks finish a probe."""
    runners = list(exporter.scheduler.runners.values())
    for runner in runners[: int(len(runners) * share)]:
        runner.stats.record(result(runner.device, runner.task.name, True, time.time()))


def pages(exporter: Exporter, tasks: int, history: int) -> None:
    overview = Overview(Prefix(), "/metrics")
    cold = timed(lambda: Overview(Prefix(), "/metrics").render(exporter), 10)
    overview.render(exporter)
    warm = timed(lambda: overview.render(exporter), 50)
    # At 1,000 tasks every 60 s, a 10 s refresh finds ~1/6 of the rows changed.
    refreshed = []
    for _ in range(30):
        change(exporter, 1 / 6)
        refreshed += timed(lambda: overview.render(exporter), 1)
    size = len(overview.render(exporter).encode())
    task_page = TaskPage(Prefix(), "/metrics")
    runner = next(iter(exporter.scheduler.runners.values()))
    task = timed(lambda: task_page.render(exporter, runner.device, runner.task.name), 50)
    print(f"overview, {tasks} tasks, every row made anew: {ms(cold)}  ({size / 1e6:.2f} MB of HTML)")
    print(f"overview, {tasks} tasks, rows unchanged:       {ms(warm)}")
    print(f"overview, {tasks} tasks, 1/6 of rows changed:  {ms(refreshed)}   <- a refresh every 10 s")
    print(f"task page, {history} probes with waterfalls:  {ms(task)}")


async def loop_hold(exporter: Exporter, clients: int, seconds: float) -> None:
    """The event loop's lateness (what a probe's timer would feel) while ``clients`` browsers each
    ask for the overview again and again."""
    lateness: list[float] = []
    stop = time.monotonic() + seconds
    collections = GCPauses()

    async def ticker() -> None:
        while time.monotonic() < stop:
            before = time.monotonic()
            await asyncio.sleep(0.001)
            lateness.append(time.monotonic() - before - 0.001)

    async with TestClient(TestServer(make_app(exporter))) as client:

        async def browser() -> int:
            count = 0
            while time.monotonic() < stop:
                async with client.get("/") as response:
                    await response.read()
                change(exporter, 0.01)
                count += 1
            return count

        with collections:
            tick = asyncio.create_task(ticker())
            counts = await asyncio.gather(*(browser() for _ in range(clients)))
            await tick
    what = f"{clients} browsers reloading the overview back to back ({sum(counts)} pages in {seconds:g} s)"
    print(f"event loop lateness, {what if clients else 'no browser (the machine itself)'}: {ms(lateness)}, "
          f"max {max(lateness) * 1000:.1f} ms; {collections}")  # fmt: skip


class GCPauses:
    """The garbage collector's pauses while in the block: a full collection of a few million objects
    (the history of 1,000 tasks) can hold the loop longer than any page does."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def __enter__(self) -> GCPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        if not self.pauses:
            return "no garbage collection"
        generation, longest = max(self.pauses, key=lambda pause: pause[1])
        full = sum(1 for g, _ in self.pauses if g == 2)
        return f"longest GC pause {longest * 1000:.1f} ms (generation {generation}; {full} full collections)"


def transcript_cost(probes: int) -> None:
    """CPU per probe of recording its transcript (every probe now does), against noting into nothing."""

    def with_transcript() -> None:
        with recording("dev", "task"):
            for leg, sent, text in PROBE_LINES:
                note(leg, sent, text)

    def without() -> None:
        for leg, sent, text in PROBE_LINES:
            note(leg, sent, text)  # no transcript in the context: what note costs when nobody records

    for function in (with_transcript, without):
        function()
    on = min(sum(timed(with_transcript, probes)) for _ in range(3)) / probes
    off = min(sum(timed(without, probes)) for _ in range(3)) / probes
    tracemalloc.start()
    kept = []
    for _ in range(100):
        with recording("dev", "task") as transcript:
            for leg, sent, text in PROBE_LINES:
                note(leg, sent, text)
        kept.append(transcript)
    size = tracemalloc.get_traced_memory()[0] / len(kept)
    tracemalloc.stop()
    print(
        f"transcript recording: {size / 1e3:.1f} KB kept per transcript, "
        f"{(on - off) * 1e6:.0f} us CPU per probe of {len(PROBE_LINES)} lines "
        f"({(on - off) / len(PROBE_LINES) * 1e6:.2f} us per line; ~{(on - off) / 0.009 * 100:.1f} % of the "
        f"~9 ms CPU a probe costs, docs/benchmarks.md)"
    )


def history_memory(tasks: int, history: int) -> None:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    exporter = exporter_with(tasks)
    setup = tracemalloc.take_snapshot()
    fill(exporter, history)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    total = sum(stat.size_diff for stat in after.compare_to(setup, "filename"))
    base = sum(stat.size_diff for stat in setup.compare_to(before, "filename"))
    per_probe = total / (tasks * history)
    for _ in range(4):  # the kept probes' tuples are untracked level by level, as a running exporter's are
        gc.collect()
    started = time.perf_counter()
    gc.collect()
    full = time.perf_counter() - started
    print(
        f"memory of the history: {total / 1e6:.1f} MB for {tasks} tasks x {history} probes "
        f"({per_probe / 1e3:.1f} KB per kept probe, incl. each task's last and last failed transcript; "
        f"tasks themselves {base / 1e6:.1f} MB); a full garbage collection then takes {full * 1000:.1f} ms"
    )
    del exporter


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--history", type=int, default=20, help="probes kept per task (--history.limit)")
    parser.add_argument("--clients", type=int, default=20, help="browsers reloading the overview at once")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long they do")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, {sys.platform}; {args.tasks} tasks, {args.history} probes kept per task")
    history_memory(args.tasks, args.history)
    exporter = exporter_with(args.tasks)
    fill(exporter, args.history)
    pages(exporter, args.tasks, args.history)
    asyncio.run(loop_hold(exporter, 0, args.seconds))
    asyncio.run(loop_hold(exporter, args.clients, args.seconds))
    transcript_cost(2000)
    return 0


if __name__ == "__main__":
    sys.exit(main())

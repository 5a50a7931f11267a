"""Benchmark: what a probe costs when a third of the tasks fail (issue 10, section 2; docs/benchmarks.md).

Run as root from the repository root:
``.venv/bin/python scripts/cost_benchmark.py --minutes 20 --before-tree /path/to/older/tree``

One real Postfix + Dovecot (tests/rig.py) on loopback; each exporter under test runs as a subprocess
with TASKS tasks at a 10 s interval on mailboxes shared by three tasks: two healthy ones and one whose
mailbox password is wrong (so its probes fail in mailbox_login). With --before-tree, a second
exporter from that tree runs at the same time on mailboxes of its own, so both see the same machine.
Every minute it prints each exporter's CPU seconds in that minute, its probes, and how many letters
its mailboxes hold; at the end a table for docs/benchmarks.md. It is not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml
from benchmark import (
    REPO,
    cpu_seconds,
    free_port,
    get,
    machine,
    parse_counts,
    peak_rss_kb,
    stop,
    wait_ready,
)

from tests.rig import MailRig
from tests.tasks import task_dict

INTERVAL = 10.0
SHARED = 3  # tasks per mailbox, one of them failing


@dataclass
class Run:
    label: str
    tree: Path
    users: list[str]
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    cpu_per_minute: list[float] = field(default_factory=list)
    probes_per_minute: list[float] = field(default_factory=list)
    letters_per_minute: list[int] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    rss_peak_mb: float = 0.0


def tasks_for(rig: MailRig, users: list[str]) -> list[dict[str, Any]]:
    tasks = []
    for i, user in enumerate(users):
        for j in range(SHARED):
            task = task_dict(rig, user, name=f"t{i:03d}-{j}")
            if j == SHARED - 1:
                task["incoming"]["password"] = "wrong-password"
            tasks.append(task)
    return tasks


def start(rig: MailRig, run: Run, workdir: Path) -> None:
    config = workdir / f"{run.label}.yml"
    devices = [{"name": "cost", "interval": f"{INTERVAL:g}s", "tasks": tasks_for(rig, run.users)}]
    config.write_text(yaml.safe_dump({"devices": devices}))
    config.chmod(0o600)
    run.port = free_port()
    command = [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{run.port}",
        "--signing.key-file",
        str(workdir / "signing.key"),
    ]
    with (workdir / f"{run.label}.log").open("ab") as log:
        run.proc = subprocess.Popen(
            command,
            cwd=run.tree,
            env={**os.environ, "PYTHONPATH": str(run.tree)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    wait_ready(run.proc, run.port).close()


def sample(rig: MailRig, runs: list[Run], minutes: int) -> None:
    assert all(run.proc is not None for run in runs)
    last = {run.label: (sum(cpu_seconds(run.proc.pid)), probes(run)) for run in runs if run.proc}
    for minute in range(1, minutes + 1):
        time.sleep(60)
        for run in runs:
            assert run.proc is not None
            cpu, done = sum(cpu_seconds(run.proc.pid)), probes(run)
            run.cpu_per_minute.append(cpu - last[run.label][0])
            run.probes_per_minute.append(done - last[run.label][1])
            run.letters_per_minute.append(sum(len(rig.messages(user)) for user in run.users))
            last[run.label] = (cpu, done)
            print(
                f"minute {minute:2d} {run.label}: CPU {run.cpu_per_minute[-1]:.1f} s, "
                f"{run.probes_per_minute[-1]:.0f} probes, {run.letters_per_minute[-1]} letters in its mailboxes",
                file=sys.stderr,
                flush=True,
            )


def probes(run: Run) -> float:
    return parse_counts(get_metrics(run)).probes


def get_metrics(run: Run) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", run.port, timeout=60)
    try:
        return get(conn, "/metrics").decode()
    finally:
        conn.close()


def table(runs: list[Run]) -> list[str]:
    rows = [
        "| exporter | probes per minute | CPU s per minute: minute 1 / last / mean | letters in its mailboxes "
        "at the end | failures by reason | peak RSS (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        cpu = run.cpu_per_minute
        mean_probes = sum(run.probes_per_minute) / max(1, len(run.probes_per_minute))
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(run.failures.items())) or "none"
        rows.append(
            f"| {run.label} | {mean_probes:.0f} | {cpu[0]:.1f} / {cpu[-1]:.1f} / {sum(cpu) / len(cpu):.1f} "
            f"| {run.letters_per_minute[-1]} | {reasons} | {run.rss_peak_mb:.0f} |"
        )
    return rows


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=int, default=20, help="measured minutes (default 20)")
    p.add_argument(
        "--mailboxes", type=int, default=20, help=f"mailboxes per exporter, {SHARED} tasks each (default 20)"
    )
    p.add_argument("--before-tree", help="also run the exporter from this source tree, at the same time")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: the mail rig starts Postfix and Dovecot", file=sys.stderr)
        return 2
    trees = [("this tree", REPO)] + ([("before", Path(args.before_tree).resolve())] if args.before_tree else [])
    workdir = Path(tempfile.mkdtemp(prefix="mrt-cost-"))
    with MailRig(users=0) as rig:
        runs = [
            Run(label, tree, rig.add_users(f"cost{n}-{i:03d}" for i in range(args.mailboxes)))
            for n, (label, tree) in enumerate(trees)
        ]
        try:
            for run in runs:
                start(rig, run, workdir)
            sample(rig, runs, args.minutes)
            for run in runs:
                assert run.proc is not None
                run.failures = dict(parse_counts(get_metrics(run)).failures)
                run.rss_peak_mb = peak_rss_kb(run.proc.pid) / 1024
        finally:
            for run in runs:
                if run.proc is not None:
                    stop(run.proc)
    tasks = args.mailboxes * SHARED
    print(
        f"\n## Cost with a third of the tasks failing ({tasks} tasks per exporter at {INTERVAL:g}s, "
        f"{args.mailboxes} mailboxes of {SHARED} tasks, one with a wrong mailbox password; {args.minutes} min)\n"
    )
    print("\n".join(f"- {fact}" for fact in machine()))
    print()
    print("\n".join(table(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

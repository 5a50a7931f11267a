"""Benchmark: how truthful the delivery time is, and what many tasks cost (docs/benchmarks.md).

Run as root from the repository root: ``.venv/bin/python scripts/benchmark.py`` (``--quick`` for a short run).
It starts its own Postfix + Dovecot (tests/rig.py) on loopback and prints figures; it is not a test.

1. Detection lag: for each letter, the time the exporter saw it minus the time Dovecot stored it in
   the Maildir (inotify on ``new/``), for IMAP IDLE, for the exporter's own polling path (1 s) and
   for a naive baseline (stdlib smtplib/imaplib: a fresh login and a search every second).
2. Scale: the exporter as a subprocess with N tasks (one mailbox user each): CPU per probe, CPU share
   of one core, peak RSS, mailbox logins per probe and /metrics render time; beside it, in the same
   window, cherti/mailexporter (Debian's prometheus-mailexporter) with as many servers: its CPU per
   probe, peak RSS and delivery-time error against the Maildir, and the ratios (skipped with a message
   when /usr/bin/mailexporter is absent, or with --no-peer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import http.client
import imaplib
import json
import math
import os
import random
import re
import secrets
import select
import shutil
import signal
import smtplib
import socket
import socketserver
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aioimaplib  # noqa: E402
import yaml  # noqa: E402

from exporter.config.load import parse_config  # noqa: E402
from exporter.legs import imap  # noqa: E402
from exporter.legs.mailbox import MailboxSession  # noqa: E402
from exporter.legs.outbox import Outbox  # noqa: E402
from exporter.letter.compose import build_letter  # noqa: E402
from exporter.letter.token import Signer  # noqa: E402
from exporter.net.resolve import DeviceRun, Resolve  # noqa: E402
from exporter.probe.clock import PhaseClock  # noqa: E402
from exporter.probe.result import ProbeResult  # noqa: E402
from exporter.probe.roundtrip import run_probe  # noqa: E402
from exporter.probe.watch import Mailbox  # noqa: E402
from exporter.scheduler import spread  # noqa: E402
from tests.rig import MailRig  # noqa: E402

IN_MOVED_TO, IN_CREATE = 0x80, 0x100
_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_PROBE_HEADER = re.compile(rb"^X-Mail-Roundtrip-Probe:[ \t]*(\S+)", re.MULTILINE | re.IGNORECASE)
# cherti/mailexporter's letter: its body is "<40 letters/digits>-<UnixNano when made>-<server name>".
_PEER_PAYLOAD = re.compile(rb"\r?\n\r?\n\s*([A-Za-z0-9]{40}-\d+-[\w.-]+)\s*$")
_LOGIN = re.compile(r"(imap|pop3)-login: Info: Login: user=<([^>]*)>")
DEVICE = "bench"
LAG_USERS = {"ours: IDLE": "lag-idle", "ours: poll 1s": "lag-poll", "naive: login+poll 1s": "lag-naive"}
MAX_WAIT = 30.0  # email timeout of every benchmark letter (s)


# ---------------------------------------------------------------- when Dovecot stored a letter


class MaildirWatcher:
    """Timestamps letters as they appear in Maildir ``new/`` (Linux inotify via ctypes), by probe token.

    The letter is opened at once, in the watcher thread, to read its X-Mail-Roundtrip-Probe header
    before the prober deletes it; a letter already moved to ``cur/`` is looked up there.
    """

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._dirs: dict[int, Path] = {}
        self._stored: dict[str, float] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self.unmatched = 0
        self.ctime_lag: list[float] = []  # our timestamp minus the file's ctime (the kernel's rename time)
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)

    def watch(self, directory: Path) -> None:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory} failed")
        self._dirs[wd] = directory

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self._fd)

    def stored(self) -> dict[str, float]:
        """Every letter seen so far: token (or the peer's payload) -> Unix time it was stored."""
        with self._changed:
            return dict(self._stored)

    def wait(self, token: str, timeout: float) -> float | None:
        """Unix time the letter with ``token`` was stored, or None if it was not seen within ``timeout``."""
        with self._changed:
            self._changed.wait_for(lambda: token in self._stored, timeout)
            return self._stored.get(token)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            now = time.time()
            for wd, name in _events(os.read(self._fd, 65536)):
                if wd in self._dirs and name:
                    self._record(self._dirs[wd], name, now)

    def _record(self, directory: Path, name: str, now: float) -> None:
        found = _read_letter(directory, name)
        if found is None:
            self.unmatched += 1
            return
        token, ctime = found
        self.ctime_lag.append(now - ctime)
        with self._changed:
            self._stored.setdefault(token, now)
            self._changed.notify_all()


def _events(data: bytes) -> Iterator[tuple[int, str]]:
    offset = 0
    while offset < len(data):
        wd, _mask, _cookie, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        yield wd, os.fsdecode(data[start : start + length].rstrip(b"\0"))
        offset = start + length


def _read_letter(directory: Path, name: str) -> tuple[str, float] | None:
    """(probe token, ctime) of a new letter; in ``cur/`` if Dovecot already moved it there."""
    base = name.split(":", 1)[0]
    candidates = [directory / name, *sorted(directory.parent.joinpath("cur").glob(f"{base}:*"))]
    for path in candidates:
        try:
            with path.open("rb") as fh:
                head, ctime = fh.read(16384), os.fstat(fh.fileno()).st_ctime
        except FileNotFoundError:
            continue
        match = _PROBE_HEADER.search(head) or _PEER_PAYLOAD.search(head)
        return (match.group(1).decode(), ctime) if match else None
    return None


# ---------------------------------------------------------------- when the IDLE push arrived

_PUSHES: dict[int, list[float]] = {}  # thread id -> Unix times an IDLE push announced new mail


def install_push_clock() -> None:
    """Note when aioimaplib hands the exporter an IDLE push announcing new mail (``* n EXISTS``)."""
    original = aioimaplib.IMAP4.wait_server_push

    async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        response = await original(self, *args, **kwargs)
        if isinstance(response, list) and any(isinstance(x, bytes) and x.endswith(b"EXISTS") for x in response):
            _PUSHES.setdefault(threading.get_ident(), []).append(time.time())
        return response

    aioimaplib.IMAP4.wait_server_push = timed


class NoIdleMailbox(Mailbox):
    """The exporter's own polling path: the session is told the server does not offer IDLE.

    ImapSession.wait_for_change then sleeps for the poll interval, exactly as against a server without
    IDLE; nothing else of the probe changes (early login, NOOP + UID SEARCH, FETCH, delete).
    """

    async def open(self, clock: PhaseClock, resolve: Resolve, result: ProbeResult) -> MailboxSession:
        session = await super().open(clock, resolve, result)
        if isinstance(session, imap.ImapSession):
            session._client.protocol.capabilities.discard("IDLE")
        return session


# ---------------------------------------------------------------- detection lag streams


@dataclass
class Sample:
    ok: bool
    reason: str = ""
    lag: float | None = None  # seen - stored
    push: float | None = None  # IDLE push arrived - stored: Dovecot's own notify delay
    delivery: float | None = None  # SMTP accepted - stored: the servers' delivery time


@dataclass
class Stream:
    name: str
    user: str
    samples: list[Sample] = field(default_factory=list)
    cpu: float = 0.0  # CPU seconds of the thread that ran the probes (client side)
    logins: int = 0

    def lags(self) -> list[float]:
        return [s.lag for s in self.samples if s.lag is not None]

    def overheads(self) -> list[float]:
        return [s.lag - s.push for s in self.samples if s.lag is not None and s.push is not None]


# Incoming options of this run's IDLE tasks (--persistent: {"persistent": True}); the polling mode keeps none.
IDLE_OPTIONS: dict[str, Any] = {}
# SMTP options of the same tasks (--persistent-smtp: {"persistent": True}).
SMTP_OPTIONS: dict[str, Any] = {}


def task_dict(rig: MailRig, user: str, name: str, poll_interval: str | None = None) -> dict[str, Any]:
    """Submission with STARTTLS + AUTH, IMAPS: the usual production shape."""
    addr, password, ca = rig.address(user), rig.password(user), str(rig.ca_file)
    incoming = {
        "protocol": "imap",
        "host": f"localhost:{rig.ports.imaps}",
        "security": "tls",
        "user": addr,
        "password": password,
        "ca_file": ca,
    }
    if poll_interval is not None:
        incoming["poll_interval"] = poll_interval
    else:
        incoming.update(IDLE_OPTIONS)
    smtp = {
        "host": f"localhost:{rig.ports.submission}",
        "security": "starttls",
        "user": addr,
        "password": password,
        "ca_file": ca,
    }
    if poll_interval is None:
        smtp.update(SMTP_OPTIONS)
    return {
        "name": name,
        "destination": addr,
        "completion_timeout": "30s",
        "email_timeout": f"{MAX_WAIT:g}s",
        "smtp": smtp,
        "incoming": incoming,
    }


def ours_stream(rig: MailRig, name: str, idle: bool, letters: int, watcher: MaildirWatcher) -> Stream:
    """IDLE with the default poll interval (5 s: the IDLE round), or the polling path at 1 s."""
    stream = Stream(name, LAG_USERS[name])
    start = time.thread_time()
    asyncio.run(_ours(rig, stream, idle, letters, watcher))
    stream.cpu = time.thread_time() - start
    return stream


async def _ours(rig: MailRig, stream: Stream, idle: bool, letters: int, watcher: MaildirWatcher) -> None:
    task_config = task_dict(rig, stream.user, "lag", None if idle else "1s")
    config = parse_config({"devices": [{"name": DEVICE, "tasks": [task_config]}]})
    device, task = config.tasks()[0]
    signer = Signer(secrets.token_bytes(32))
    mailbox = Mailbox(task.incoming, signer) if idle else NoIdleMailbox(task.incoming, signer)
    outbox = Outbox(task.smtp)
    pushes = _PUSHES.setdefault(threading.get_ident(), [])
    for index in range(letters):
        pushes.clear()
        result = await run_probe(device.name, task, signer, DeviceRun(device).resolver(task), mailbox, outbox)
        stream.samples.append(await _our_sample(result, watcher, pushes))
        _progress(stream, index)
    await mailbox.close()
    await outbox.close()


async def _our_sample(result: ProbeResult, watcher: MaildirWatcher, pushes: list[float]) -> Sample:
    if not result.success or result.accepted_wall is None or result.delivery_seconds is None:
        return Sample(False, result.reason.value if result.reason else "unknown")
    seen = result.accepted_wall + result.delivery_seconds  # accepted_wall is read right after accepted_monotonic
    stored = await asyncio.to_thread(watcher.wait, result.token, 2.0)
    if stored is None:
        return Sample(True, "store time unknown")
    push = next((p - stored for p in pushes if p >= stored), None)
    return Sample(True, lag=seen - stored, push=push, delivery=stored - result.accepted_wall)


def naive_stream(rig: MailRig, name: str, letters: int, watcher: MaildirWatcher, poll: float) -> Stream:
    stream = Stream(name, LAG_USERS[name])
    signer = Signer(secrets.token_bytes(32))
    context = ssl.create_default_context(cafile=str(rig.ca_file))
    start = time.thread_time()
    for index in range(letters):
        stream.samples.append(_naive_sample(rig, stream.user, signer, context, watcher, poll))
        _progress(stream, index)
    stream.cpu = time.thread_time() - start
    return stream


def _naive_sample(
    rig: MailRig, user: str, signer: Signer, context: ssl.SSLContext, watcher: MaildirWatcher, poll: float
) -> Sample:
    addr, password = rig.address(user), rig.password(user)
    token = signer.new_token()
    try:
        with smtplib.SMTP("localhost", rig.ports.submission, timeout=MAX_WAIT) as smtp:
            smtp.starttls(context=context)
            smtp.login(addr, password)
            smtp.sendmail(addr, [addr], build_letter(token, addr, addr, DEVICE, "naive"))
            accepted = time.time()
        seen = _naive_poll(rig.ports.imaps, context, addr, password, token.value, poll, accepted + MAX_WAIT)
    except (OSError, smtplib.SMTPException, imaplib.IMAP4.error) as exc:
        return Sample(False, type(exc).__name__)
    if seen is None:
        return Sample(False, "delivery_timeout")
    stored = watcher.wait(token.value, 2.0)
    if stored is None:
        return Sample(True, "store time unknown")
    return Sample(True, lag=seen - stored, delivery=stored - accepted)


def _naive_poll(
    port: int, context: ssl.SSLContext, addr: str, password: str, token: str, poll: float, deadline: float
) -> float | None:
    """What simple probes do: log in, search, log out; again every ``poll`` seconds."""
    while time.time() < deadline:
        with imaplib.IMAP4_SSL("localhost", port, ssl_context=context, timeout=MAX_WAIT) as client:
            client.login(addr, password)
            client.select("INBOX")
            _, data = client.uid("SEARCH", "SUBJECT", token)
            uids = data[0].split() if data and data[0] else []
            if uids:
                seen = time.time()
                client.uid("STORE", b",".join(uids).decode(), "+FLAGS.SILENT", r"(\Deleted)")
                client.expunge()
                return seen
        time.sleep(poll)
    return None


def _progress(stream: Stream, index: int) -> None:
    if (index + 1) % 50 == 0:
        print(f"  {stream.name}: {index + 1} letters", file=sys.stderr, flush=True)


class Releaser:
    """Lets held mail go (postqueue -f) at random moments, so letters arrive at a random point of the wait.

    On loopback Postfix hands a letter to Dovecot within milliseconds of accepting it, before the
    exporter's first search: every mode would find every letter at once and IDLE or polling would not
    be measured at all. Real delivery takes longer than a round trip, so the letter arrives while
    the prober waits; holding the mail (defer_transports = lmtp) and releasing it every 0.1-0.9 s
    (uniform) reproduces that. How a letter reaches the Maildir does not change seen - stored.
    """

    def __init__(self, rig: MailRig, low: float = 0.1, high: float = 0.9) -> None:
        self._rig, self._low, self._high = rig, low, high
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="releaser", daemon=True)

    def __enter__(self) -> Releaser:
        self._rig.hold()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._rig.release()

    def _run(self) -> None:
        while not self._stop.wait(random.uniform(self._low, self._high)):
            self._rig.flush()


def run_lag(rig: MailRig, letters: int, sequential: bool) -> tuple[list[Stream], MaildirWatcher]:
    rig.add_users(LAG_USERS.values())
    watcher = MaildirWatcher()
    for user in LAG_USERS.values():
        watcher.watch(rig.maildir(user) / "new")
    watcher.start()
    install_push_clock()
    jobs: list[Callable[[], Stream]] = [
        lambda: ours_stream(rig, "ours: IDLE", True, letters, watcher),
        lambda: ours_stream(rig, "ours: poll 1s", False, letters, watcher),
        lambda: naive_stream(rig, "naive: login+poll 1s", letters, watcher, 1.0),
    ]
    log_start = dovecot_log(rig).stat().st_size
    if sequential:
        streams = [job() for job in jobs]
    else:
        with ThreadPoolExecutor(len(jobs)) as pool:
            streams = [future.result() for future in [pool.submit(job) for job in jobs]]
    time.sleep(0.5)  # Dovecot's log process writes asynchronously
    logins = count_logins(dovecot_log(rig), log_start)
    for stream in streams:
        stream.logins = logins[rig.address(stream.user)]
    watcher.stop()
    return streams, watcher


# ---------------------------------------------------------------- Dovecot's log


def dovecot_log(rig: MailRig) -> Path:
    return rig.dir / "log" / "dovecot.log"


def count_logins(path: Path, start: int, end: int | None = None) -> Counter[str]:
    """Successful IMAP/POP3 logins per user between two byte offsets of Dovecot's log."""
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read(None if end is None else end - start).decode(errors="replace")
    return Counter(match.group(2) for match in _LOGIN.finditer(text))


# ---------------------------------------------------------------- scale: the exporter as a subprocess


@dataclass
class Counts:
    """Sums over all tasks of the counters in one /metrics scrape."""

    probes: float = 0.0
    failures: Counter[str] = field(default_factory=Counter)
    skipped: float = 0.0
    late: float = 0.0
    delivery_sum: float = 0.0  # of mail_roundtrip_delivery_seconds
    delivery_count: float = 0.0

    def minus(self, other: Counts) -> Counts:
        return Counts(
            self.probes - other.probes,
            self.failures - other.failures,
            self.skipped - other.skipped,
            self.late - other.late,
            self.delivery_sum - other.delivery_sum,
            self.delivery_count - other.delivery_count,
        )


@dataclass
class Scale:
    tasks: int
    interval: float
    window: float = 0.0
    counts: Counts = field(default_factory=Counts)  # in the measured window
    total: Counts = field(default_factory=Counts)  # whole run, warm-up included
    cpu: float = 0.0
    cpu_sys: float = 0.0  # of which in the kernel (on loopback it includes the servers' side of each send)
    rss_peak_kb: int = 0
    rss_before_scrapes_kb: int = 0  # peak before the timed scrapes: probes only
    logins: int = 0
    scrape_ms: list[float] = field(default_factory=list)
    body_bytes: int = 0
    profile: list[str] = field(default_factory=list)
    peer: Peer | None = None  # cherti/mailexporter side by side, same window


def parse_counts(body: str) -> Counts:
    counts = Counts()
    for line in body.splitlines():
        if not line.startswith("mail_roundtrip_"):
            continue
        name, _, value = line.rpartition(" ")
        if name.startswith("mail_roundtrip_probes_total{"):
            counts.probes += float(value)
        elif name.startswith("mail_roundtrip_probe_failures_total{") and float(value):
            reason = re.search(r'reason="([^"]*)"', name)
            counts.failures[reason.group(1) if reason else "?"] += int(float(value))
        elif name.startswith("mail_roundtrip_probes_skipped_total{"):
            counts.skipped += float(value)
        elif name.startswith("mail_roundtrip_late_arrivals_total{"):
            counts.late += float(value)
        elif name.startswith("mail_roundtrip_delivery_seconds_sum{"):
            counts.delivery_sum += float(value)
        elif name.startswith("mail_roundtrip_delivery_seconds_count{"):
            counts.delivery_count += float(value)
    return counts


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process: utime and stime of /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None) -> bytes:
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
        # The exporter closes keep-alive connections idle for 75 s: connect again, as Prometheus does.
        conn.close()
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}")
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_exporter(
    rig: MailRig, users: Sequence[str], interval: float, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    tasks = [task_dict(rig, user, f"t{i:04d}") for i, user in enumerate(users)]
    config = workdir / f"scale-{len(users)}.yml"
    config.write_text(yaml.safe_dump({"devices": [{"name": DEVICE, "interval": f"{interval:g}s", "tasks": tasks}]}))
    config.chmod(0o600)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--signing.key-file",
        str(workdir / "signing.key"),
    ]
    with (workdir / f"exporter-{len(users)}.log").open("ab") as log:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    return proc, port


def wait_ready(proc: subprocess.Popen[bytes], port: int) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exporter exited with {proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            get(conn, "/-/ready")
            return conn
        except OSError:
            conn.close()
            time.sleep(0.05)
    raise RuntimeError("exporter did not become ready within 30 s")


@dataclass
class SideBySide:
    """The peer's users (one per task), the watcher of their Maildirs and the end-of-DATA clock."""

    users: list[str]
    watcher: MaildirWatcher
    clock: AcceptClock


# The peer starts each server's probes after a random 0-20 s.
PEER_START = 21.0


def run_scale(
    rig: MailRig,
    users: Sequence[str],
    interval: float,
    intervals: int,
    scrapes: int,
    workdir: Path,
    profile: float,
    side: SideBySide | None = None,
) -> Scale:
    for user in users:
        rig.clear_mailbox(user)
    result = Scale(len(users), interval)
    peer_users = side.users[: len(users)] if side is not None else []
    for user in peer_users:
        rig.clear_mailbox(user)
    peer = start_peer(rig, peer_users, interval, workdir) if side is not None else None
    started = time.monotonic()
    proc, port = start_exporter(rig, users, interval, workdir)
    try:
        conn = wait_ready(proc, port)
        # The first device run starts its tasks spread over the first interval, after the device offset.
        time.sleep(spread(DEVICE) * interval + interval + 2.0)
        if peer is not None:
            time.sleep(max(0.0, started + PEER_START + interval - time.monotonic()))
        wall_start = time.time()
        _measure(rig, proc.pid, conn, intervals * interval, result, peer[0].pid if peer else None)
        if side is not None and result.peer is not None:
            peer_letters(side.watcher, side.clock, rig, wall_start, time.time(), result.peer)
        result.rss_before_scrapes_kb = peak_rss_kb(proc.pid)
        result.scrape_ms, result.body_bytes = _time_scrapes(conn, scrapes)
        result.rss_peak_kb = peak_rss_kb(proc.pid)
        result.total = parse_counts(get(conn, "/metrics").decode())
        if side is not None and peer is not None and result.peer is not None:
            result.peer.rss_peak_kb = peak_rss_kb(peer[0].pid)
            if peer[0].poll() is None:
                body = get(http.client.HTTPConnection("127.0.0.1", peer[1], timeout=60), "/metrics").decode()
                peer_check(body, side.watcher, result.peer)
            else:
                log = (workdir / f"peer-{len(users)}.log").read_text(errors="replace").strip().splitlines()
                said = next((line for line in log if line.startswith(("fatal error", "panic"))), log[-1] if log else "")
                result.peer.exited = f"exited with {peer[0].returncode}: {said}"
        if profile > 0:
            result.profile = py_spy(proc.pid, profile, workdir)
    finally:
        stop(proc)
        if peer is not None:
            stop(peer[0])
    for user in [*users, *peer_users]:
        rig.clear_mailbox(user)
    return result


def _measure(
    rig: MailRig, pid: int, conn: http.client.HTTPConnection, seconds: float, result: Scale, peer: int | None
) -> None:
    """Counters, CPU and Dovecot logins over whole intervals; the two scrapes stay outside the CPU window.
    The peer's CPU (if it runs) over the same window."""
    before = parse_counts(get(conn, "/metrics").decode())
    log_start, (user0, sys0), wall_start = dovecot_log(rig).stat().st_size, cpu_seconds(pid), time.monotonic()
    peer0 = cpu_seconds(peer) if peer is not None else (0.0, 0.0)
    time.sleep(seconds)
    (user1, sys1), result.window = cpu_seconds(pid), time.monotonic() - wall_start
    if peer is not None:
        peer1 = cpu_seconds(peer)
        result.peer = Peer(cpu=sum(peer1) - sum(peer0), cpu_sys=peer1[1] - peer0[1])
    result.cpu, result.cpu_sys = user1 - user0 + sys1 - sys0, sys1 - sys0
    log_end = dovecot_log(rig).stat().st_size
    result.counts = parse_counts(get(conn, "/metrics").decode()).minus(before)
    wanted = {rig.address(user) for user in rig.users if user.startswith("bench")}
    result.logins = sum(n for user, n in count_logins(dovecot_log(rig), log_start, log_end).items() if user in wanted)


def _time_scrapes(conn: http.client.HTTPConnection, count: int) -> tuple[list[float], int]:
    """Timed GETs of /metrics asking for gzip, as Prometheus does; the compressed body's size. One a
    SCRAPE_SPACING: back to back they would time the scrape gate's pace (50 answers a second) and its
    shared body (one render a second), not a Prometheus scrape, which comes every 15-60 s."""
    times, size, start = [], 0, time.perf_counter() - SCRAPE_SPACING
    for _ in range(count):
        time.sleep(max(0.0, SCRAPE_SPACING - (time.perf_counter() - start)))
        start = time.perf_counter()
        size = len(get(conn, "/metrics", {"Accept-Encoding": "gzip"}))
        times.append((time.perf_counter() - start) * 1000)
    return times, size


SCRAPE_SPACING = 1.05  # s between the starts of timed scrapes: each one gets a render of its own


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def py_spy(pid: int, seconds: float, workdir: Path) -> list[str]:
    """Sample the exporter with py-spy (if installed); the functions with the most samples, inclusive."""
    if shutil.which("py-spy") is None:
        return ["py-spy not installed (pip install py-spy)"]
    out = workdir / "profile.txt"
    command = [
        "py-spy",
        "record",
        "--nonblocking",
        "--rate",
        "500",
        "--format",
        "raw",
        "--duration",
        f"{seconds:g}",
        "--pid",
        str(pid),
        "--output",
        str(out),
    ]
    subprocess.run(command, capture_output=True, check=False)
    if not out.exists():
        return ["py-spy produced no profile"]
    return summarize_profile(out.read_text().splitlines())


def summarize_profile(lines: Iterable[str], top: int = 15) -> list[str]:
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        leaf[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    # Frames on (nearly) every busy stack are the event loop itself: leave them out.
    busy = [(frame, n) for frame, n in inclusive.most_common() if n < 0.9 * total][:top]
    out = [f"{100 * n / total:5.1f}% incl  {frame}" for frame, n in busy]
    out += [f"{100 * n / total:5.1f}% self  {frame}" for frame, n in leaf.most_common(top)]
    return out


# ---------------------------------------------------------------- the peer: cherti/mailexporter
# Debian's prometheus-mailexporter (Go): SMTP (STARTTLS + AUTH PLAIN, Go's net/smtp) every interval,
# then inotify on a local Maildir new/. It runs side by side with the exporter in the scale runs, with
# as many servers as the exporter has tasks, each on a user of its own, at the same interval.

PEER_BINARY = "/usr/bin/mailexporter"
PEER_MISSING = f"peer skipped: {PEER_BINARY} not found (apt-get install prometheus-mailexporter)"


class AcceptClock:
    """When Postfix had each letter whole: a policy service asked at the end of DATA
    (smtpd_end_of_data_restrictions), just before the 250 that accepts it, by SASL login. It answers
    DUNNO, which changes nothing. The truth a delivery time is measured against is stored - this."""

    def __init__(self) -> None:
        self._times: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        clock = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                attributes: dict[str, str] = {}
                for raw in self.rfile:
                    line = raw.decode(errors="replace").rstrip("\n")
                    if line:
                        name, _, value = line.partition("=")
                        attributes[name] = value
                        continue
                    clock.note(attributes.get("sasl_username", ""), time.time())
                    self.wfile.write(b"action=DUNNO\n\n")
                    attributes = {}

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="accept-clock", daemon=True)

    def note(self, login: str, when: float) -> None:
        with self._lock:
            self._times.setdefault(login, []).append(when)

    def start(self, rig: MailRig) -> None:
        self._thread.start()
        port = self._server.server_address[1]
        rig.set_postfix({"smtpd_end_of_data_restrictions": f"check_policy_service inet:127.0.0.1:{port}"})

    def stop(self, rig: MailRig) -> None:
        rig.set_postfix({"smtpd_end_of_data_restrictions": ""})
        self._server.shutdown()
        self._server.server_close()

    def accepted(self, login: str, before: float) -> float | None:
        """The last end of DATA of ``login`` at or before ``before`` (Unix time)."""
        with self._lock:
            return max((t for t in self._times.get(login, ()) if t <= before), default=None)


@dataclass
class Peer:
    """The peer's figures in the same window as the exporter's."""

    cpu: float = 0.0
    cpu_sys: float = 0.0
    letters: int = 0  # its letters stored in the window
    rss_peak_kb: int = 0
    errors: list[float] = field(default_factory=list)  # its delivery time - (stored - accepted), s
    own_check: list[float] = field(default_factory=list)  # its own last figure - (stored - its start), s
    send_fails: float = 0.0
    exited: str = ""  # it stopped during the run (what its log says of why)


def start_peer(
    rig: MailRig, users: Sequence[str], interval: float, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    servers = [
        {
            "name": rig.address(user).partition("@")[0],  # in its letter's body: no @ there
            "server": "localhost",
            "port": str(rig.ports.submission),
            "login": rig.address(user),
            "passphrase": rig.password(user),
            "from": rig.address(user),
            "to": rig.address(user),
            "detectiondir": str(rig.maildir(user) / "new"),
        }
        for user in users
    ]
    config = workdir / f"peer-{len(users)}.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "monitoringinterval": f"{interval:g}s",
                "mailchecktimeout": f"{MAX_WAIT:g}s",
                "disablefiledeletion": True,  # the watcher reads each letter; run_scale empties the Maildirs
                "servers": servers,
            }
        )
    )
    config.chmod(0o600)
    port = free_port()
    command = [PEER_BINARY, "-config.file", str(config), "-web.listen-address", f"127.0.0.1:{port}"]
    with (workdir / f"peer-{len(users)}.log").open("ab") as log:
        proc = subprocess.Popen(
            command,
            env={**os.environ, "SSL_CERT_FILE": str(rig.ca_file)},  # Go's crypto/x509 trusts the rig's CA then
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    return proc, port


def peer_letters(
    watcher: MaildirWatcher, clock: AcceptClock, rig: MailRig, start: float, end: float, peer: Peer
) -> None:
    """Its letters stored between ``start`` and ``end`` (Unix time), and each one's error against the
    truth. Its delivery time is (its inotify moment - the moment it made the letter, before it
    connected); its inotify moment is taken as ours (both watch the same new/; ours is 0 ms from the
    file's ctime at the median), so its error is accepted - made (peer_check compares with its own figure)."""
    for name, made, stored in _peer_letters(watcher):
        if start <= stored < end:
            peer.letters += 1
            accepted = clock.accepted(rig.address(name), stored)
            if accepted is not None and accepted >= made:
                peer.errors.append(accepted - made)


def peer_check(body: str, watcher: MaildirWatcher, peer: Peer) -> None:
    """Its own mail_last_deliver_duration_seconds against (stored - made) of its last letter per server."""
    last = {name: stored - made for name, made, stored in sorted(_peer_letters(watcher), key=lambda x: x[2])}
    for line in body.splitlines():
        match = re.match(r'mail_last_deliver_duration_seconds\{configname="([^"]+)"\} (\S+)', line)
        if match and match.group(1) in last:
            peer.own_check.append(float(match.group(2)) - last[match.group(1)])
        elif line.startswith("mail_send_fails{"):
            peer.send_fails += float(line.rpartition(" ")[2])


def _peer_letters(watcher: MaildirWatcher) -> Iterator[tuple[str, float, float]]:
    """(server name, made, stored) of each of the peer's letters seen, Unix times."""
    for payload, stored in watcher.stored().items():
        match = re.fullmatch(r"[A-Za-z0-9]{40}-(\d+)-([\w.-]+)", payload)
        if match is not None:
            yield match.group(2), int(match.group(1)) / 1e9, stored


# ---------------------------------------------------------------- scrape load (issue 10, 5b)
# Does heavy scraping change what the exporter measures? The exporter as a subprocess with N tasks,
# first a quiet window, then the same window with SCRAPERS concurrent clients fetching /metrics in a
# loop. Delivery and probe duration come from each probe's "probe finished" log line (JSON logs).
# --scrape-tree runs the exporter from another source tree (e.g. `git archive` of an older commit),
# for a before/after comparison on the same rig.

SCRAPERS = 200


@dataclass
class LoadWindow:
    label: str
    delivery: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    failed: int = 0
    scrapes: int = 0
    scrape_errors: int = 0
    rss_mb: float = 0.0


def probe_lines(path: Path, start: int, end: int) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        fh.seek(start)
        for raw in fh.read(end - start).splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict) and record.get("msg") == "probe finished":
                    yield record


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _scrape_loop(port: int, stop_at: float, window: LoadWindow) -> None:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        while time.monotonic() < stop_at:
            try:
                async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                    await response.read()
                    window.scrapes += response.status == 200
                    window.scrape_errors += response.status != 200
            except (aiohttp.ClientError, TimeoutError):
                window.scrape_errors += 1


def _scrapers(port: int, seconds: float, window: LoadWindow) -> None:
    async def run() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(_scrape_loop(port, stop_at, window) for _ in range(SCRAPERS)))

    asyncio.run(run())


def _load_window(proc: subprocess.Popen[bytes], log: Path, label: str, seconds: float, port: int | None) -> LoadWindow:
    window = LoadWindow(label)
    start = log.stat().st_size
    if port is None:
        time.sleep(seconds)
    else:
        _scrapers(port, seconds, window)
    window.rss_mb = current_rss_mb(proc.pid)
    for record in probe_lines(log, start, log.stat().st_size):
        if record.get("result") == "success" and record.get("delivery_seconds") != "":
            window.delivery.append(float(record["delivery_seconds"]))
            window.duration.append(float(record["duration_seconds"]))
        else:
            window.failed += 1
    return window


def run_scrape_load(
    rig: MailRig, users: Sequence[str], interval: float, seconds: float, workdir: Path, tree: Path, label: str
) -> list[LoadWindow]:
    for user in users:
        rig.clear_mailbox(user)
    tasks = [task_dict(rig, user, f"t{i:04d}") for i, user in enumerate(users)]
    config = workdir / f"load-{label}.yml"
    config.write_text(yaml.safe_dump({"devices": [{"name": DEVICE, "interval": f"{interval:g}s", "tasks": tasks}]}))
    config.chmod(0o600)
    port, log = free_port(), workdir / f"load-{label}.log"
    command = [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(config),
        "--web.listen-address",
        f"127.0.0.1:{port}",
        "--signing.key-file",
        str(workdir / "signing.key"),
        "--log.format",
        "json",
    ]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        wait_ready(proc, port).close()
        time.sleep(spread(DEVICE) * interval + interval)  # warm-up: every task has started once
        quiet = _load_window(proc, log, f"{label}, no scraping", seconds, None)
        loaded = _load_window(proc, log, f"{label}, {SCRAPERS} scrapers", seconds, port)
        after = _load_window(proc, log, f"{label}, after scraping", min(seconds, interval), None)
    finally:
        stop(proc)
    return [quiet, loaded, after]


def load_table(windows: Sequence[LoadWindow]) -> list[str]:
    rows = [
        "| run | probes ok (failed) | delivery p50 / p95 (ms) | probe duration p50 / p95 (ms) "
        "| scrapes ok (errors) | RSS at the end (MB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for w in windows:
        delivery = f"{ms(pct(w.delivery, 50))} / {ms(pct(w.delivery, 95))}"
        duration = f"{ms(pct(w.duration, 50))} / {ms(pct(w.duration, 95))}"
        rows.append(
            f"| {w.label} | {len(w.delivery)} ({w.failed}) | {delivery} | {duration} "
            f"| {w.scrapes} ({w.scrape_errors}) | {w.rss_mb:.0f} |"
        )
    return rows


def scrape_load_main(args: argparse.Namespace) -> int:
    trees = [(REPO, "this tree")] + ([(Path(args.scrape_tree).resolve(), "other tree")] if args.scrape_tree else [])
    workdir = Path(tempfile.mkdtemp(prefix="mrt-load-"))
    windows: list[LoadWindow] = []
    with MailRig(users=0) as rig, contextlib.nullcontext() if args.direct else Releaser(rig):
        users = rig.add_users(f"load{i:03d}" for i in range(args.load_tasks))
        for tree, label in trees:
            print(f"scrape load: {label} ({tree}), {args.load_tasks} tasks ...", file=sys.stderr, flush=True)
            windows += run_scrape_load(rig, users, args.load_interval, args.load_seconds, workdir, tree, label)
    shutil.rmtree(workdir, ignore_errors=True)
    held = "delivered at once" if args.direct else "held and released at random moments"
    print(
        f"\n## Scrape load ({args.load_tasks} tasks at {args.load_interval:g}s, windows of "
        f"{args.load_seconds:g}s, {SCRAPERS} concurrent /metrics clients; mail {held})\n"
    )
    print("\n".join(machine()))
    print("\n".join(load_table(windows)))
    return 0


# ---------------------------------------------------------------- report


def pct(values: Sequence[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(value: float) -> str:
    return "n/a" if value != value else f"{value * 1000:.0f}"


def lag_table(streams: Sequence[Stream]) -> list[str]:
    rows = [
        "| mode | letters ok/failed | accepted -> stored p50 (ms) | lag p50 / p95 / p99 / max (ms) "
        "| IDLE push - stored p50 / p99 (ms) | lag - push p50 / p99 (ms) | client CPU ms/probe | logins/probe |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in streams:
        lags, pushes, over = s.lags(), [x.push for x in s.samples if x.push is not None], s.overheads()
        ok = sum(x.ok for x in s.samples)
        push = f"{ms(pct(pushes, 50))} / {ms(pct(pushes, 99))} (n={len(pushes)})" if pushes else "-"
        overhead = f"{ms(pct(over, 50))} / {ms(pct(over, 99))}" if over else "-"
        delivery = ms(pct([x.delivery for x in s.samples if x.delivery is not None], 50))
        lag = " / ".join(ms(v) for v in (pct(lags, 50), pct(lags, 95), pct(lags, 99), max(lags, default=math.nan)))
        rows.append(
            f"| {s.name} | {ok}/{len(s.samples) - ok} | {delivery} | {lag} | {push} | {overhead} | "
            f"{1000 * s.cpu / max(1, len(s.samples)):.1f} | {s.logins / max(1, len(s.samples)):.2f} |"
        )
    return rows


def scale_table(results: Sequence[Scale]) -> list[str]:
    rows = [
        "| tasks | interval | window | probes (failed, skipped, late) | exporter CPU (% of a core) "
        "| CPU ms/probe (of it sys) | peak RSS MB before / after timed scrapes | logins/probe | mean delivery s "
        "| /metrics p50 / p95 ms (gzip) | /metrics body KB (gzip) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        c = r.counts
        probes = max(1.0, c.probes)
        cells = [
            str(r.tasks),
            f"{r.interval:g}s",
            f"{r.window:.0f}s",
            f"{c.probes:.0f} ({sum(c.failures.values())}, {c.skipped:.0f}, {c.late:.0f})",
            f"{100 * r.cpu / r.window:.1f}",
            f"{1000 * r.cpu / probes:.1f} ({1000 * r.cpu_sys / probes:.1f})",
            f"{r.rss_before_scrapes_kb / 1024:.0f} / {r.rss_peak_kb / 1024:.0f}",
            f"{r.logins / probes:.2f}",
            f"{c.delivery_sum / c.delivery_count:.2f}" if c.delivery_count else "-",
            f"{pct(r.scrape_ms, 50):.0f} / {pct(r.scrape_ms, 95):.0f}",
            f"{r.body_bytes / 1024:.0f}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def failures_text(streams: Sequence[Stream], results: Sequence[Scale]) -> list[str]:
    lines = []
    for s in streams:
        reasons = Counter(x.reason for x in s.samples if x.reason)
        if reasons:
            lines.append(f"{s.name}: {dict(reasons)}")
    for r in results:
        if r.total.failures:
            lines.append(f"{r.tasks} tasks, whole run incl. warm-up: {dict(r.total.failures)}")
        if r.peer is not None and r.peer.exited:
            lines.append(f"{r.tasks} tasks: cherti/mailexporter {r.peer.exited}")
    return lines


def goals(streams: Sequence[Stream], results: Sequence[Scale], poll: float) -> list[str]:
    """Issue 17's goals (and the polling one of issue 4)."""
    out = []
    for s in streams:
        if s.name == "ours: IDLE" and s.overheads():
            p99 = pct(s.overheads(), 99)
            verdict = _verdict(p99 < 0.01)
            out.append(f"IDLE: detection lag after the server's push p99 < 10 ms: {p99 * 1000:.1f} ms -> {verdict}")
        if s.name == "ours: poll 1s" and s.lags():
            p99 = pct(s.lags(), 99)
            out.append(f"polling lag p99 < poll interval ({poll:g} s): {p99 * 1000:.1f} ms -> {_verdict(p99 < poll)}")
    for r in results:
        per_probe, rss = 1000 * r.cpu / max(1.0, r.counts.probes), r.rss_peak_kb / 1024
        if r.tasks == 100:
            out.append(f"100 tasks: CPU per probe <= 3 ms: {per_probe:.1f} ms -> {_verdict(per_probe <= 3)}")
            out.append(f"100 tasks: peak RSS < 45 MB: {rss:.0f} MB -> {_verdict(rss < 45)}")
        if r.tasks == 1000:
            p95 = pct(r.scrape_ms, 95)
            out.append(f"1000 tasks: peak RSS < 100 MB: {rss:.0f} MB -> {_verdict(rss < 100)}")
            out.append(f"1000 tasks: /metrics with gzip < 20 ms: p95 {p95:.0f} ms -> {_verdict(p95 < 20)}")
    return out


def kept_sessions(imap: bool, smtp: bool) -> str:
    """How the run's tables name --persistent / --persistent-smtp."""
    kept = [name for name, on in (("IMAP", imap), ("SMTP", smtp)) if on]
    return f", persistent {' and '.join(kept)} sessions" if kept else ""


def peer_table(streams: Sequence[Stream], results: Sequence[Scale], kept: str) -> list[str]:
    """The exporter and cherti/mailexporter in the same windows; delivery-time error against the Maildir."""
    idle = next((s for s in streams if s.name == "ours: IDLE" and s.lags()), None)
    ours_error = (
        f"{ms(pct(idle.lags(), 50))} / {ms(pct(idle.lags(), 95))} (after the IDLE push: "
        f"{ms(pct(idle.overheads(), 50))} / {ms(pct(idle.overheads(), 95))})"
        if idle is not None
        else "- (no lag run)"
    )
    rows = [
        "| tool | tasks | probes in the window | CPU ms/probe (of it sys) | peak RSS MB "
        "| delivery-time error p50 / p95 ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ratios, checks = [], []
    for r in results:
        if r.peer is None:
            continue
        p, probes = r.peer, max(1.0, r.counts.probes)
        ours, theirs = 1000 * r.cpu / probes, 1000 * p.cpu / max(1, p.letters)
        rows.append(
            f"| this exporter (submission STARTTLS+AUTH, IMAPS, IDLE{kept}) | {r.tasks} | {r.counts.probes:.0f} "
            f"| {ours:.1f} ({1000 * r.cpu_sys / probes:.1f}) | {r.rss_peak_kb / 1024:.0f} | {ours_error} |"
        )
        rows.append(
            f"| cherti/mailexporter (SMTP STARTTLS+AUTH, inotify) | {r.tasks} | {p.letters} "
            f"| {theirs:.1f} ({1000 * p.cpu_sys / max(1, p.letters):.1f}) | {p.rss_peak_kb / 1024:.0f} "
            f"| {ms(pct(p.errors, 50))} / {ms(pct(p.errors, 95))} (n={len(p.errors)}) |"
        )
        if p.letters and p.rss_peak_kb:
            ratios.append(
                f"{r.tasks} tasks: CPU per probe {ours / theirs:.1f}x the peer's, peak RSS "
                f"{r.rss_peak_kb / p.rss_peak_kb:.1f}x; the peer's send failures: {p.send_fails:.0f}"
            )
        else:
            ratios.append(f"{r.tasks} tasks: no ratio, the peer delivered nothing in the window {p.exited}".rstrip())
        if p.own_check:
            checks.append(
                f"{r.tasks} tasks: the peer's own last delivery time minus (stored - its start): p50 "
                f"{ms(pct(p.own_check, 50))} ms, max {ms(max(p.own_check))} ms (n={len(p.own_check)})"
            )
    return [*rows, "", *(f"- {line}" for line in ratios + checks)]


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def machine() -> list[str]:
    postfix = _command(["postconf", "-d", "-h", "mail_version"])
    dovecot = _command(["dovecot", "--version"])
    others = sum("pytest" in _cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())
    return [
        f"nproc {os.cpu_count()}, Python {sys.version.split()[0]}, Postfix {postfix}, Dovecot {dovecot}",
        f"load average {Path('/proc/loadavg').read_text().split()[:3]}, other pytest processes running: {others}",
    ]


def _command(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False).stdout.strip() or "?"
    except OSError:
        return "?"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--letters", type=int, help="letters per detection-lag mode (default 200; --quick 20)")
    p.add_argument("--scale", help="task counts, comma-separated (default 10,100,1000; --quick 10,100)")
    p.add_argument(
        "--interval",
        type=float,
        default=60.0,
        help="probe interval at 1000 tasks in seconds; scaled with the task count (default 60)",
    )
    p.add_argument("--min-interval", type=float, default=10.0, help="shortest interval used (default 10)")
    p.add_argument("--intervals", type=int, help="measured intervals after one warm-up interval (default 2; --quick 1)")
    p.add_argument("--scrapes", type=int, default=20, help="timed GETs of /metrics per task count (default 20)")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="run the three lag modes one after another instead of side by side (3x longer)",
    )
    p.add_argument(
        "--direct",
        action="store_true",
        help="let Postfix deliver at once instead of releasing held mail at random moments",
    )
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy the exporter this long at the largest task count, after measuring (default off)",
    )
    p.add_argument(
        "--persistent",
        action="store_true",
        help="IDLE tasks (ours: IDLE, scale) keep their IMAP session: persistent: true, a fresh login every 10th probe",
    )
    p.add_argument(
        "--persistent-smtp",
        action="store_true",
        help="the same tasks keep their SMTP session too (smtp: persistent: true, a fresh login every 10th probe)",
    )
    p.add_argument(
        "--no-peer",
        dest="peer",
        action="store_false",
        help="do not run cherti/mailexporter (prometheus-mailexporter) side by side in the scale runs",
    )
    p.add_argument("--quick", action="store_true", help="a short run for trying the script out")
    p.add_argument(
        "--scrape-load",
        action="store_true",
        help=f"only the scrape-load comparison: probes with and without {SCRAPERS} concurrent scrapers",
    )
    p.add_argument("--scrape-tree", help="with --scrape-load: also run the exporter from this source tree (before)")
    p.add_argument("--load-tasks", type=int, default=50, help="tasks for --scrape-load (default 50)")
    p.add_argument("--load-interval", type=float, default=10.0, help="their interval in seconds (default 10)")
    p.add_argument("--load-seconds", type=float, default=30.0, help="each measured window (default 30)")
    args = p.parse_args(argv)
    if args.letters is None:
        args.letters = 20 if args.quick else 200
    args.scale = [int(n) for n in (args.scale or ("10,100" if args.quick else "10,100,1000")).split(",") if n]
    args.intervals = args.intervals or (1 if args.quick else 2)
    return args


def side_by_side(rig: MailRig, tasks: int) -> SideBySide | None:
    if not os.access(PEER_BINARY, os.X_OK):
        print(PEER_MISSING, file=sys.stderr, flush=True)
        return None
    users = rig.add_users(f"peer{i:04d}" for i in range(tasks))
    watcher = MaildirWatcher()
    for user in users:
        watcher.watch(rig.maildir(user) / "new")
    watcher.start()
    clock = AcceptClock()
    clock.start(rig)
    return SideBySide(users, watcher, clock)


def interval_for(tasks: int, args: argparse.Namespace) -> float:
    return max(float(args.min_interval), float(args.interval) * tasks / 1000)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root: the mail rig starts Postfix and Dovecot", file=sys.stderr)
        return 2
    if args.scrape_load:
        return scrape_load_main(args)
    if args.persistent:
        IDLE_OPTIONS["persistent"] = True
    if args.persistent_smtp:
        SMTP_OPTIONS["persistent"] = True
    started = time.monotonic()
    facts = machine()
    workdir = Path(tempfile.mkdtemp(prefix="mrt-bench-"))
    with MailRig(users=0) as rig, contextlib.nullcontext() if args.direct else Releaser(rig):
        print(f"detection lag: {args.letters} letters per mode ...", file=sys.stderr, flush=True)
        streams, watcher = run_lag(rig, args.letters, args.sequential) if args.letters > 0 else ([], None)
        users = rig.add_users(f"bench{i:04d}" for i in range(max(args.scale, default=0)))
        if args.persistent_smtp:
            # Each kept SMTP session holds a Postfix smtpd process between probes: with the default
            # limit of 100 a service, 100 kept sessions would leave none for the peer's letters.
            rig.set_postfix({"default_process_limit": str(2 * max(args.scale, default=0) + 100)})
        side = side_by_side(rig, max(args.scale, default=0)) if args.peer and args.scale else None
        results = []
        for n in args.scale:
            interval = interval_for(n, args)
            print(f"scale: {n} tasks at {interval:g}s ...", file=sys.stderr, flush=True)
            profile = args.profile if n == max(args.scale) else 0.0
            results.append(run_scale(rig, users[:n], interval, args.intervals, args.scrapes, workdir, profile, side))
        if side is not None:
            side.watcher.stop()
            side.clock.stop(rig)
    shutil.rmtree(workdir, ignore_errors=True)
    facts.append(machine()[1].replace("load average", "at the end: load average"))
    report(args, facts, streams, watcher, results, time.monotonic() - started)
    failed = any(not x.ok for s in streams for x in s.samples) or any(r.counts.failures for r in results)
    return 1 if failed else 0


def report(
    args: argparse.Namespace,
    facts: list[str],
    streams: Sequence[Stream],
    watcher: MaildirWatcher | None,
    results: Sequence[Scale],
    elapsed: float,
) -> None:
    print(f"\n# mail-roundtrip-exporter benchmark ({elapsed / 60:.1f} min): {' '.join(sys.argv)}")
    print("\n".join(f"- {fact}" for fact in facts))
    if streams and watcher is not None:
        side = "one after another" if args.sequential else "side by side (one letter at a time per mode)"
        print(f"\n## Detection lag ({args.letters} letters per mode, {side})\n")
        print("\n".join(lag_table(streams)))
        print(
            f"\nwatcher: inotify timestamp - file ctime p50 {ms(pct(watcher.ctime_lag, 50))} ms, "
            f"max {ms(max(watcher.ctime_lag, default=float('nan')))} ms; unmatched files {watcher.unmatched}"
        )
    if results:
        held = "delivered at once" if args.direct else "held and released at random moments"
        kept = kept_sessions(args.persistent, args.persistent_smtp)
        print(f"\n## Scale (exporter subprocess, submission STARTTLS+AUTH, IMAPS, IDLE{kept}; mail {held})\n")
        print("\n".join(scale_table(results)))
    if any(r.peer is not None for r in results):
        print("\n## Side by side with cherti/mailexporter (same rig, same windows)\n")
        print("\n".join(peer_table(streams, results, kept_sessions(args.persistent, args.persistent_smtp))))
    problems = failures_text(streams, results)
    print("\n## Failures\n\n" + ("\n".join(f"- {line}" for line in problems) if problems else "- none"))
    verdicts = goals(streams, results, 1.0) or ["(none measured in this run)"]
    print("\n## Goals\n\n" + "\n".join(f"- {line}" for line in verdicts))
    for r in results:
        if r.profile:
            print(f"\n## py-spy, {r.tasks} tasks ({args.profile:g} s)\n\n```\n" + "\n".join(r.profile) + "\n```")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

"""The exporter does not distort what it measures, and its fragile couplings are pinned (issue 10, 5 and 8):
Nagle off on every connection, the SMTP TLS/greeting split, the same phase for a silent greeting on
both mailbox legs, a schedule that survives a reload, and scrapes that cannot swamp the probes."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import socket
import ssl
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from aiohttp.test_utils import TestClient, TestServer
from packaging.requirements import Requirement

from exporter.clients import smtp as smtp_client
from exporter.config.model import Config, IncomingConfig, Protocol, Secret, Security, ServerConfig, TLSOptions
from exporter.legs import imap, pop3
from exporter.legs.memo import LetterMemo
from exporter.letter.token import Signer
from exporter.net import connect as net
from exporter.net.resolve import DeviceRun
from exporter.net.tls import GREETING_HINT
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import ServerTimeout
from exporter.probe.phases import Phase
from exporter.scheduler import Scheduler, TaskRunner, spread
from exporter.service import Exporter
from exporter.web import app as web
from exporter.web import scrape as scrape_gate
from tests.hostile import HostileServer, Peer, proxy, serve, tarpit
from tests.rig import MailRig
from tests.tasks import SIGNER, config_of, probe_once, task_dict
from tests.test_faults import until

USER = "measure-a"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def user(rig: MailRig) -> str:
    rig.add_users([USER])
    return USER


def server_context(rig: MailRig) -> ssl.SSLContext:
    """A TLS server context with the rig's certificate (it names 127.0.0.1), for hostile TLS servers."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(rig.cert_files["good"], rig._tls.key_file)
    return context


# --- 5a: TCP_NODELAY on every connection ---------------------------------------------------------

LEG_PAIRS = [
    ("smtp-plain", "pop3-stls"),
    ("smtp-starttls", "imaps"),
    ("submission-starttls-auth", "imap-starttls"),
    ("submissions-tls-auth", "pop3s"),
]


@pytest.mark.parametrize(("smtp_kind", "mailbox_kind"), LEG_PAIRS)
async def test_every_probe_connection_disables_nagle(
    rig: MailRig, user: str, monkeypatch: pytest.MonkeyPatch, smtp_kind: str, mailbox_kind: str
) -> None:
    """Without TCP_NODELAY each small write waits for the ACK of the one before (40 ms against Exim)."""
    connected: list[tuple[int, int]] = []  # (port, TCP_NODELAY) of every socket a probe connects
    original = net._connect_one

    async def watched(address: str, port: int) -> socket.socket:
        sock = await original(address, port)
        connected.append((port, sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        return sock

    monkeypatch.setattr(net, "_connect_one", watched)
    task = task_dict(rig, user, smtp=smtp_kind, mailbox=mailbox_kind)
    result = await probe_once(task)
    assert result.success, result.error
    ports = {int(task[leg]["host"].rpartition(":")[2]) for leg in ("smtp", "incoming")}
    assert {port for port, _ in connected} == ports  # both legs connect through net.connect_any
    assert all(nodelay for _, nodelay in connected), connected


# --- 8a: the SMTP TLS/greeting split (a private aiosmtplib hook) ---------------------------------

BANNER_DELAY = 1.5  # the hostile server's deliberate wait between the TLS handshake and its banner


async def test_a_late_banner_after_implicit_tls_counts_as_greeting(rig: MailRig, user: str) -> None:
    """The wait for the banner is smtp_greeting, not smtp_tls. The delay is a lower bound; when the
    override of aiosmtplib's _create_connection stops being called, the wait moves into smtp_tls."""

    async def late_banner(peer: Peer) -> None:
        await asyncio.sleep(BANNER_DELAY)  # the fault itself: TLS is up, the banner is late
        await proxy(rig.host, rig.ports.smtp)(peer)  # then the real Postfix speaks, over our TLS

    async with serve(late_banner, ssl_context=server_context(rig)) as server:
        task = task_dict(rig, user, smtp="smtp-plain", mailbox="imaps")
        task["smtp"].update(host=f"127.0.0.1:{server.port}", security="tls")
        result = await probe_once(task)
    assert result.success, result.error
    assert result.phases[Phase.SMTP_GREETING] >= BANNER_DELAY, result.phases


def test_aiosmtplib_is_in_the_pinned_range() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [Requirement(dep) for dep in pyproject["project"]["dependencies"]]
    pin = next(req for req in pins if req.name == "aiosmtplib")
    assert pin.specifier.contains(version("aiosmtplib")), f"installed {version('aiosmtplib')}, pinned {pin}"
    assert pin.specifier.contains(aiosmtplib.__version__)


def test_a_missing_hook_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    smtp_client.check_aiosmtplib()  # the installed aiosmtplib has it
    monkeypatch.delattr(aiosmtplib.SMTP, "_create_connection")
    with pytest.raises(ImportError, match="_create_connection"):
        smtp_client.check_aiosmtplib()


# --- 8b: a server that never greets, on both mailbox legs ----------------------------------------

GREETING_LIMIT = 1.5


def incoming(rig: MailRig, protocol: Protocol, security: Security, port: int) -> IncomingConfig:
    return IncomingConfig(
        server=ServerConfig(
            host="127.0.0.1",
            port=port,
            security=security,
            tls=TLSOptions(ca_file=str(rig.ca_file)),
            user="nobody",
            password=Secret("never-sent"),
        ),
        protocol=protocol,
    )


async def open_mailbox(config: IncomingConfig, server: HostileServer) -> None:
    clock = PhaseClock(limit=GREETING_LIMIT)
    connected = await server.connect(clock)
    signer = Signer(b"measure")
    if config.protocol is Protocol.POP3:
        await pop3.open_session(config, connected, clock, signer, LetterMemo())
    else:
        await imap.open_session(config, connected, clock, signer, LetterMemo())


SILENT = [  # (security, the server speaks TLS first, phase, with the hint about implicit-TLS ports)
    (Security.NONE, False, "mailbox_login", True),
    (Security.STARTTLS, False, "mailbox_login", True),
    (Security.TLS, False, "mailbox_tls", False),  # not even the handshake is answered
    (Security.TLS, True, "mailbox_login", False),  # TLS is up, the greeting never comes
]


@pytest.mark.parametrize("protocol", [Protocol.IMAP, Protocol.POP3])
@pytest.mark.parametrize(("security", "tls_server", "phase", "hint"), SILENT)
async def test_a_silent_greeting_is_reported_alike_on_both_legs(
    rig: MailRig, protocol: Protocol, security: Security, tls_server: bool, phase: str, hint: bool
) -> None:
    async with serve(tarpit, ssl_context=server_context(rig) if tls_server else None) as server:
        with pytest.raises(ServerTimeout) as caught:
            await open_mailbox(incoming(rig, protocol, security, server.port), server)
    assert caught.value.phase == phase
    assert (GREETING_HINT in caught.value.message) is hint, caught.value.message


# --- 5c: a reload keeps every task's schedule ----------------------------------------------------


class FakeTime:
    """A monotonic clock and its sleep that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        woken = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), woken))
        await woken

    async def run_until(self, moment: float) -> None:
        """Wake every sleeper due up to ``moment``, in order, letting the woken tasks run each time."""
        while True:
            for _ in range(20):  # let woken tasks run until they sleep again (no time passes)
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():  # cancelled by a reload
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > moment:
                self.now = moment
                return
            deadline, _, woken = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            woken.set_result(None)


INTERVAL = 2.0


def four_tasks(rig: MailRig, user: str, names: tuple[str, ...] = ("t0", "t1", "t2", "t3")) -> Config:
    return config_of(*(task_dict(rig, user, name=name) for name in names), interval=f"{INTERVAL:g}s")


def launched(monkeypatch: pytest.MonkeyPatch, clock: FakeTime) -> dict[str, list[float]]:
    """Launch times per task, instead of running probes."""
    times: dict[str, list[float]] = {}

    def record(runner: TaskRunner, run: DeviceRun) -> None:
        times.setdefault(runner.task.name, []).append(round(clock.now - start, 6))

    start = clock.now
    monkeypatch.setattr(TaskRunner, "launch", record)
    return times


def slots(index: int, count: int, cycles: range) -> list[float]:
    """When the scheduler's formula puts task ``index`` of ``count`` in each cycle (from the start)."""
    return [round((spread("rig") + index / count) * INTERVAL + cycle * INTERVAL, 6) for cycle in cycles]


async def test_a_reload_mid_run_keeps_the_rest_of_the_run(
    rig: MailRig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 tasks at 2 s, reload at 2.7 s into the schedule: the tasks due at 3.0 and 3.5 s still run
    then (they used to wait for 5.0 and 5.5 s), and every task runs exactly once per cycle."""
    clock = FakeTime()
    times = launched(monkeypatch, clock)
    scheduler = Scheduler(SIGNER, clock.monotonic, clock.sleep)
    offset = clock.now + spread("rig") * INTERVAL
    await scheduler.apply(four_tasks(rig, user))
    await clock.run_until(offset + 2.7)
    await scheduler.apply(four_tasks(rig, user))  # the same config, reloaded mid-run
    await clock.run_until(offset + 4 * INTERVAL - 0.1)
    await scheduler.stop()
    assert times == {f"t{i}": slots(i, 4, range(4)) for i in range(4)}


async def test_a_reload_that_changes_tasks_keeps_the_others_schedule(
    rig: MailRig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """t3 removed and t4 added at 2.7 s: t0-t2 keep their slots; t4 starts at its first slot after
    the reload; t3 launches nothing more."""
    clock = FakeTime()
    times = launched(monkeypatch, clock)
    scheduler = Scheduler(SIGNER, clock.monotonic, clock.sleep)
    reload_at = spread("rig") * INTERVAL + 2.7
    await scheduler.apply(four_tasks(rig, user))
    await clock.run_until(clock.now + reload_at)
    await scheduler.apply(four_tasks(rig, user, ("t0", "t1", "t2", "t4")))
    await clock.run_until(clock.now - reload_at + spread("rig") * INTERVAL + 4 * INTERVAL - 0.1)
    await scheduler.stop()
    assert {name: times[name] for name in ("t0", "t1", "t2")} == {f"t{i}": slots(i, 4, range(4)) for i in range(3)}
    assert times["t3"] == slots(3, 4, range(1))
    assert times["t4"] == [t for t in slots(3, 4, range(4)) if t > reload_at]


# --- 5b: scrapes cannot swamp the probes ---------------------------------------------------------


async def test_a_render_is_let_go_once_it_can_no_longer_be_shared(
    rig: MailRig, user: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Between scrapes the gate holds no body: at 1,000 tasks it would hold 6.5 MB and old texts."""
    monkeypatch.setattr(scrape_gate, "SHARE_SECONDS", 0.05)
    exporter = Exporter(tmp_path / "config.yml", four_tasks(rig, user), SIGNER)  # not started: no probes
    client = TestClient(TestServer(web.make_app(exporter)))
    await client.start_server()
    try:
        async with client.get("/metrics") as response:
            assert response.status == 200 and b"mail_roundtrip_task_info" in await response.read()
        gate = client.app[web.GATE_KEY]
        await until(lambda: not gate.holds_render, "the shared render to be let go", within_seconds=30)
    finally:
        await client.close()


async def test_concurrent_scrapes_share_one_render(
    rig: MailRig, user: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """200 scrapes at once cost one render per format (not 200), and every one gets the whole body."""
    monkeypatch.setattr(scrape_gate, "SHARE_SECONDS", math.inf)  # the count must not depend on the machine's speed
    monkeypatch.setattr(scrape_gate, "PER_SECOND", math.inf)  # no pacing: all 200 at once
    exporter = Exporter(tmp_path / "config.yml", four_tasks(rig, user), SIGNER)  # not started: no probes
    client = TestClient(TestServer(web.make_app(exporter)), connector=aiohttp.TCPConnector(limit=0))
    await client.start_server()
    try:

        async def scrape(accept: str) -> tuple[int, bytes]:
            async with client.get("/metrics", headers={"Accept": accept}) as response:
                return response.status, await response.read()

        openmetrics = "application/openmetrics-text; version=1.0.0"
        answers = await asyncio.gather(*(scrape(openmetrics if i % 2 else "text/plain") for i in range(200)))
    finally:
        await client.close()
    assert client.app[web.GATE_KEY].renders == 2
    assert {status for status, _ in answers} == {200}
    assert all(b"mail_roundtrip_exporter_build_info" in body for _, body in answers)


async def test_scrapes_past_the_queue_are_refused_at_once(
    rig: MailRig, user: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One answer at a time, the next not for an hour, 3 may wait: of 10 scrapes one is answered, one
    holds the slot, 3 wait, and the other 5 get 503 at once (no time assertion: the pace is an hour)."""
    monkeypatch.setattr(scrape_gate, "SENDING", 1)
    monkeypatch.setattr(scrape_gate, "PER_SECOND", 1 / 3600)
    monkeypatch.setattr(scrape_gate, "WAITING", 3)
    exporter = Exporter(tmp_path / "config.yml", four_tasks(rig, user), SIGNER)  # not started: no probes
    client = TestClient(TestServer(web.make_app(exporter)), connector=aiohttp.TCPConnector(limit=0))
    await client.start_server()

    async def scrape() -> int:
        async with client.get("/metrics") as response:
            await response.read()
            return response.status

    scrapes = [asyncio.ensure_future(scrape()) for _ in range(10)]
    try:
        answered = [await next_done for next_done in itertools.islice(asyncio.as_completed(scrapes), 6)]
    finally:
        for pending in scrapes:
            pending.cancel()
        await asyncio.gather(*scrapes, return_exceptions=True)
        await client.close()
    assert sorted(answered) == [200, 503, 503, 503, 503, 503]
    assert client.app[web.GATE_KEY].renders == 1
    assert sum(not s.done() or s.cancelled() for s in scrapes) == 4  # the slot holder and 3 waiting

"""The exporter does not distort what it measures, and its fragile couplings are pinned (issue 10, 5 and 8):
Nagle off on every connection, the SMTP TLS/greeting split, the same phase for a silent greeting on
both mailbox legs, a schedule that survives a reload, and scrapes that cannot swamp the probes."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tomllib
from importlib.metadata import version
from pathlib import Path

import aiosmtplib
import pytest
from packaging.requirements import Requirement

from exporter import imap, net, pop3, smtp
from exporter.config import IncomingConfig, Protocol, Secret, Security, TLSOptions
from exporter.errors import ServerTimeout
from exporter.message import Signer
from tests.hostile import HostileServer, Peer, proxy, serve, tarpit
from tests.rig import MailRig
from tests.tasks import probe_once, task_dict

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
    assert result.phases["smtp_greeting"] >= BANNER_DELAY, result.phases


def test_aiosmtplib_is_in_the_pinned_range() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = [Requirement(dep) for dep in pyproject["project"]["dependencies"]]
    pin = next(req for req in pins if req.name == "aiosmtplib")
    assert pin.specifier.contains(version("aiosmtplib")), f"installed {version('aiosmtplib')}, pinned {pin}"
    assert pin.specifier.contains(aiosmtplib.__version__)


def test_a_missing_hook_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    smtp.check_aiosmtplib()  # the installed aiosmtplib has it
    monkeypatch.delattr(aiosmtplib.SMTP, "_create_connection")
    with pytest.raises(ImportError, match="_create_connection"):
        smtp.check_aiosmtplib()


# --- 8b: a server that never greets, on both mailbox legs ----------------------------------------

GREETING_LIMIT = 1.5


def incoming(rig: MailRig, protocol: Protocol, security: Security, port: int) -> IncomingConfig:
    return IncomingConfig(host="127.0.0.1", port=port, security=security, tls=TLSOptions(ca_file=str(rig.ca_file)),
                          user="nobody", password=Secret("never-sent"), protocol=protocol)


async def open_mailbox(config: IncomingConfig, server: HostileServer) -> None:
    clock = net.PhaseClock(limit=GREETING_LIMIT)
    connected = await server.connect(clock)
    signer = Signer(b"measure")
    if config.protocol is Protocol.POP3:
        await pop3.open_session(config, connected, clock, signer, set())
    else:
        await imap.open_session(config, connected, clock, signer)


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
    assert (net.GREETING_HINT in caught.value.message) is hint, caught.value.message

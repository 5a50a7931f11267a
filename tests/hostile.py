"""Small misbehaving servers on loopback, for fault tests of every leg (SMTP, IMAP, POP3).

``serve(handler)`` listens on 127.0.0.1, port 0, and runs ``handler(peer)`` for each connection. The
handler scripts the server's side of the conversation with ``Peer``, which records every byte the
client sent, so a test can check what did (or did not) reach the server. Tests synchronise on
protocol events (a line arriving, the client hanging up), never on sleeps.

On leaving ``serve`` every handler still running is cancelled, and the first exception a handler
raised (other than the client hanging up) is raised in the test, so a broken script cannot pass.

Ready-made behaviours that fit any protocol: ``tarpit`` (accepts, never speaks), ``drip(data)`` (one
byte at a time, slowly), ``proxy(host, port)`` (passes everything through to a real server) and
``Switch`` (a handler that can be swapped while the server runs: a fault that starts and ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from exporter.net import connect as net
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import ConnectFailure
from exporter.probe.phases import Phase

Handler = Callable[["Peer"], Awaitable[None]]

# The client going away is what many fault tests provoke: not a failure of the script.
_HANGUPS = (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError)


class Peer:
    """The server's end of one accepted connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.received = bytearray()  # everything the client sent, in order
        self.lines: list[bytes] = []  # what line() returned, without line endings

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def line(self) -> bytes:
        """The client's next line without its line ending; b"" once the client has hung up."""
        raw = await self.reader.readline()
        self.received += raw
        line = raw.rstrip(b"\r\n")
        if raw:
            self.lines.append(line)
        return line

    async def until_eof(self) -> bytes:
        """Read until the client closes the connection (or aborts it); what it sent meanwhile."""
        data = bytearray()
        with contextlib.suppress(*_HANGUPS):
            while chunk := await self.reader.read(65536):
                data += chunk
        self.received += data
        return bytes(data)

    async def start_tls(self, context: ssl.SSLContext) -> None:
        await self.writer.start_tls(context)


@dataclass
class HostileServer:
    port: int
    host: str = "127.0.0.1"
    peers: list[Peer] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def connect(self, clock: PhaseClock) -> net.Connected:
        """A client connection as the probe makes one: inside the clock's mailbox_connect phase."""
        async with clock.phase(Phase.MAILBOX_CONNECT, on_timeout=ConnectFailure):
            return await net.connect_any([self.host], self.port)

    @property
    def busy(self) -> int:
        """How many connections a handler is serving right now."""
        return len(self._tasks)

    async def finished(self) -> None:
        """Wait until every handler started so far has returned (the client's session is over)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))


@contextlib.asynccontextmanager
async def serve(handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[HostileServer]:
    """Run a server on 127.0.0.1 (an ephemeral port) whose every connection is handled by ``handler``."""
    state: HostileServer | None = None

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert state is not None
        task = asyncio.current_task()
        assert task is not None
        state._tasks.add(task)
        peer = Peer(reader, writer)
        state.peers.append(peer)
        try:
            await handler(peer)
        except _HANGUPS:
            pass
        except Exception as exc:
            state.errors.append(exc)
        finally:
            writer.transport.abort()
            state._tasks.discard(task)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=ssl_context)
    state = HostileServer(port=server.sockets[0].getsockname()[1])
    try:
        yield state
    finally:
        server.close()
        tasks = list(state._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
    if state.errors:
        raise state.errors[0]


# --- behaviours for any protocol -----------------------------------------------------------------


async def tarpit(peer: Peer) -> None:
    """Accept the connection and never say a word, until the client gives up."""
    await peer.until_eof()


def drip(data: bytes, every: float = 1.0) -> Handler:
    """Send ``data`` one byte at a time, ``every`` seconds apart (the sleeping is the fault itself)."""

    async def handler(peer: Peer) -> None:
        for byte in data:
            await peer.send(bytes([byte]))
            await asyncio.sleep(every)
        await peer.until_eof()

    return handler


@dataclass
class Traffic:
    """Bytes a proxy passed from the server to the client, over all its connections."""

    to_client: int = 0


def proxy(host: str, port: int, traffic: Traffic | None = None, trickle: bool = False) -> Handler:
    """Pass the connection through to ``host:port`` byte for byte, both ways, until either side hangs up;
    ``trickle``: what the server says goes to the client one byte per write."""

    async def handler(peer: Peer) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        pumps = {
            asyncio.ensure_future(_pump(peer.reader, writer)),
            asyncio.ensure_future(_pump(reader, peer.writer, traffic, 1 if trickle else 65536)),
        }
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            writer.transport.abort()

    return handler


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, traffic: Traffic | None = None, size: int = 65536
) -> None:
    with contextlib.suppress(*_HANGUPS):
        while data := await reader.read(65536):
            if traffic is not None:
                traffic.to_client += len(data)
            for start in range(0, len(data), size):
                writer.write(data[start : start + size])
                await writer.drain()


class Switch:
    """A handler that can be replaced while the server runs; new connections get the current one."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    async def __call__(self, peer: Peer) -> None:
        await self.handler(peer)

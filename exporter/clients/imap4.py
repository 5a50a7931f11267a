"""The one adapter to aioimaplib: an IMAP4 client over a socket we connected, with STARTTLS.

aioimaplib resolves and connects by itself and has no STARTTLS; we give it the socket we connected
(DNS and connect are the probe's own phases) and upgrade the transport with the event loop's
start_tls. That reaches into aioimaplib internals (create_client, _client_task, _handle_line,
_untagged_response, a hand-built Command): they are touched here and nowhere else, so an upgrade
breaks one file, and replacing the library (it is GPL-3.0-only) means rewriting only this one.
pyproject.toml pins the version tested.

Everything the session logic (legs.imap) needs is a method here that answers a ``Reply`` or raises
a ProbeError; no aioimaplib type or exception leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib

from exporter.net.connect import GOODBYE_SECONDS
from exporter.net.tls import tls_failure
from exporter.probe.errors import MailboxFailure, ProbeError, ProtocolFailure, ServerTimeout, TLSFailure
from exporter.probe.phases import Leg
from exporter.sanitise import server_text
from exporter.transcript import REDACTED, note

T = TypeVar("T")
_EXISTS = re.compile(rb"^\* \d+ EXISTS")
_CAPABILITY = re.compile(rb"(?:^|\[)CAPABILITY ([^\]]*)", re.IGNORECASE)
SASL_CONTINUATIONS = 3  # server challenges one AUTHENTICATE answers before it gives up on the server


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 3501 4.3)."""
    result: str = aioimaplib.quoted(text)
    return result


@dataclass(frozen=True)
class Reply:
    """A command's outcome: ``ok`` for a tagged OK; ``lines`` are the response lines without the
    literals, the tagged status text last (``* SEARCH 1 2`` comes as ``1 2``); ``pairs`` are each
    response line with what follows it, for a FETCH its literal. (A literal can never pass for a
    response line: a letter's headers could be written to look like one.)"""

    ok: bool
    lines: list[bytes]
    pairs: list[tuple[bytes, bytes]]

    def text(self) -> str:
        """The server's status text, sanitised."""
        return server_text(self.lines[-1] if self.lines else b"") or "no reason given"

    def require(self, command: str) -> Reply:
        """This reply if OK; else the mailbox failure naming the command, in the server's words."""
        if not self.ok:
            raise MailboxFailure(f"{command} failed: {self.text()}")
        return self


def reply_of(ok: bool, items: Sequence[bytes | bytearray]) -> Reply:
    """aioimaplib's response lines (bytes) and literals (bytearray) as a Reply."""
    lines = [line for line in items if isinstance(line, bytes)]
    pairs = [(line, bytes(after)) for line, after in itertools.pairwise(items) if isinstance(line, bytes)]
    return Reply(ok, lines, pairs)


def _redacted(line: str) -> str:
    """A command line fit for a transcript: LOGIN's arguments and AUTHENTICATE's response are secret."""
    words = line.split(" ", 2)
    if len(words) == 3 and words[1].upper() == "LOGIN":
        return f"{words[0]} {words[1]} {REDACTED}"
    if len(words) == 3 and words[1].upper() == "AUTHENTICATE":
        mechanism, _, response = words[2].partition(" ")
        return f"{words[0]} {words[1]} {mechanism}" + (f" {REDACTED}" if response else "")
    return line


class _SaslExchange:
    """The client's side of one AUTHENTICATE after its command line: the initial response if it did
    not fit there (no SASL-IR), then, to an error challenge, the abort response (RFC 7628 3.2.3), and
    "*" (cancel, RFC 3501 6.2.2) to anything more. Every answer is base64 already."""

    def __init__(self, waiting: list[bytes], abort: bytes) -> None:
        self.waiting = waiting
        self.abort = abort
        self.challenge: bytes | None = None  # the server's error challenge, for the error text
        self.answers = 0

    def answer(self, line: bytes) -> bytes:
        self.answers += 1
        if self.waiting:
            return self.waiting.pop(0)
        if self.challenge is None:
            self.challenge = line[1:].strip()
            return self.abort
        return b"*"


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """Notes every untagged EXISTS: aioimaplib drops those that arrive during SEARCH, FETCH or STORE,
    and a letter announced there would otherwise wait for the next poll (IDLE does not repeat it).
    Answers AUTHENTICATE's continuation requests, which aioimaplib does not know."""

    new_mail = False
    sasl: _SaslExchange | None = None

    def send(self, line: str, scrub: str | None = None) -> None:
        note(Leg.MAILBOX, True, _redacted(line))
        super().send(line, scrub)

    def _continuation(self, line: bytes) -> None:
        command, sasl = self.pending_sync_command, self.sasl
        if sasl is None or command is None or command.name != "AUTHENTICATE":
            super()._continuation(line)
        elif sasl.answers < SASL_CONTINUATIONS:
            note(Leg.MAILBOX, True, REDACTED)  # a SASL response carries the token
            self.transport.write(sasl.answer(line) + b"\r\n")
        else:  # a server that challenges on and on: end the session rather than answer for ever
            self.transport.abort()

    async def authenticated(self, command: aioimaplib.Command) -> aioimaplib.Response:
        """AUTHENTICATE, moving to the authenticated state on OK (as aioimaplib's login does)."""
        async with self.state_condition:
            response = await self.execute(command)
            if response.result == "OK":
                self.state = aioimaplib.AUTH
            self.state_condition.notify_all()
        return response

    def _untagged_response(self, line: bytes) -> Any:
        if _EXISTS.match(line):
            self.new_mail = True
        return super()._untagged_response(line)


class Imap4Client(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client over a socket we connected, with STARTTLS and fail-fast on connection loss."""

    def __init__(self, sock: socket.socket, ssl_context: ssl.SSLContext | None, host: str, timeout: float) -> None:
        self._sock = sock
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        super().__init__(host=host, port=0, timeout=timeout, ssl_context=ssl_context, conn_lost_cb=self._lost)

    def create_client(self, host: str, port: int, loop: Any, conn_lost_cb: Any = None, ssl_context: Any = None) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = _Protocol(loop, conn_lost_cb)
        self._client_task = loop.create_task(
            loop.create_connection(
                lambda: self.protocol,
                sock=self._sock,
                ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None,
            )
        )

    interrupted = False  # a command was cut off: no LOGOUT on this connection

    def _lost(self, exc: Exception | None) -> None:
        if not self._closed.done():
            self._closed.set_result(None)

    # What the server said that aioimaplib does not tell: the greeting (on anything but OK/PREAUTH it
    # fails in a task of its own and leaves the caller waiting for ever) and a BYE before a hang-up.
    _greeting: asyncio.Future[bytes] | None = None
    _bye: bytes | None = None

    @property
    def capabilities(self) -> set[str]:
        return set(self.protocol.capabilities)

    @property
    def new_mail(self) -> bool:
        """An EXISTS arrived since ``new_mail`` was last set to False."""
        return bool(self.protocol.new_mail)

    @new_mail.setter
    def new_mail(self, value: bool) -> None:
        self.protocol.new_mail = value

    # --- connection ------------------------------------------------------------------------------

    def _watch_lines(self) -> None:
        """Note the greeting and any BYE as lines arrive; keep a greeting that is not OK/PREAUTH from
        aioimaplib. Runs before the first await on the connection, so no line can come earlier."""
        if self._greeting is not None:
            return
        greeting = self._greeting = asyncio.get_running_loop().create_future()
        handle = self.protocol._handle_line

        def watched(line: bytes, current: Any) -> Any:
            if line:
                note(Leg.MAILBOX, False, line)  # a line only: literals (letters' headers) never come here
            if line[:5].upper() == b"* BYE":
                self._bye = line
            if line and not greeting.done():
                greeting.set_result(line)
                if not line[:10].upper().startswith((b"* OK", b"* PREAUTH")):
                    return None
            return handle(line, current)

        self.protocol._handle_line = watched

    async def handshake(self) -> None:
        self._watch_lines()
        try:
            await self._client_task
        except (ssl.SSLError, ssl.CertificateError, ConnectionError) as exc:
            raise tls_failure(exc) from None

    async def greeting(self) -> None:
        await self.handshake()
        assert self._greeting is not None
        line = await self.run("the greeting", self._greeting)
        if line[:5].upper() == b"* BYE":
            raise MailboxFailure(f"server refused the session: {server_text(line)}")
        if not line[:10].upper().startswith((b"* OK", b"* PREAUTH")):
            raise ProtocolFailure(f"not an IMAP greeting: {server_text(line)}")
        await self.run("the greeting", self.protocol.wait("AUTH|NONAUTH"))

    async def starttls(self, context: ssl.SSLContext, host: str) -> None:
        protocol = self.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise TLSFailure("server does not offer STARTTLS")
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        reply = await self._reply("STARTTLS", protocol.execute(command))
        if not reply.ok:
            raise TLSFailure(f"STARTTLS refused: {reply.text()}")
        loop = asyncio.get_running_loop()
        try:
            protocol.transport = await loop.start_tls(protocol.transport, protocol, context, server_hostname=host)
        except (ssl.SSLError, ssl.CertificateError, ConnectionError) as exc:
            raise tls_failure(exc) from None
        # RFC 3501 6.2.1: capabilities learnt before TLS must be forgotten and asked again.
        await self.run("CAPABILITY", protocol.capability())

    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.protocol.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    # --- commands --------------------------------------------------------------------------------

    async def login(self, user: str, password: str) -> Reply:
        # A rejected LOGIN does not raise in aioimaplib: the reply says so.
        reply = await self._reply("LOGIN", self.protocol.login(quoted(user), password))
        await self._learn_capabilities(reply)
        return reply

    async def authenticate(self, mechanism: str, response: bytes, abort: bytes) -> tuple[Reply, bytes | None]:
        """AUTHENTICATE with one SASL message (``response``, base64), inline where the server offers
        SASL-IR (RFC 4959); the reply, and the server's error challenge if it sent one."""
        protocol = self.protocol
        inline = "SASL-IR" in protocol.capabilities
        exchange = protocol.sasl = _SaslExchange([] if inline else [response], abort)
        arguments = (mechanism, response.decode("ascii")) if inline else (mechanism,)
        command = aioimaplib.Command("AUTHENTICATE", protocol.new_tag(), *arguments, loop=protocol.loop)
        try:
            reply = await self._reply("AUTHENTICATE", protocol.authenticated(command))
        finally:
            protocol.sasl = None
        await self._learn_capabilities(reply)
        return reply, exchange.challenge

    async def _learn_capabilities(self, reply: Reply) -> None:
        """The capabilities once logged in (they may change, RFC 3501 6.2.2: UIDPLUS, MOVE and X-GM-EXT-1
        are often offered only then), from the login's CAPABILITY line or response code, else asked."""
        if not reply.ok:
            return
        announced = [match.group(1) for line in reply.lines if (match := _CAPABILITY.search(line))]
        if not announced:
            await self.run("CAPABILITY", self.protocol.capability())
        for words in announced:
            self.protocol.capabilities = set(self.protocol.capabilities) | set(words.decode("ascii", "replace").split())

    async def select(self, mailbox: str) -> Reply:
        return await self._reply("SELECT", self.protocol.select(quoted(mailbox)))

    async def examine(self, mailbox: str) -> Reply:
        """SELECT read-only (the session stays in the selected state for aioimaplib)."""
        return await self._reply("EXAMINE", self.protocol.simple_command("EXAMINE", quoted(mailbox)))

    async def status(self, mailbox: str, items: str) -> Reply:
        return await self._reply("STATUS", self.protocol.simple_command("STATUS", quoted(mailbox), items))

    async def noop(self) -> Reply:
        return await self._reply("NOOP", self.protocol.simple_command("NOOP"))

    async def uid_search(self, criteria: list[str]) -> Reply:
        """No CHARSET (Exchange and Yahoo reject "CHARSET utf-8")."""
        return await self._reply("UID SEARCH", self.protocol.search(*criteria, charset=None, by_uid=True))

    async def uid_fetch(self, uid_set: str, items: str) -> Reply:
        return await self._reply("UID FETCH", self.protocol.fetch(uid_set, items, by_uid=True))

    async def uid_store(self, uid_set: str, flags: str) -> Reply:
        return await self._reply("UID STORE", self.protocol.store(uid_set, "+FLAGS.SILENT", flags, by_uid=True))

    async def uid_expunge(self, uid_set: str) -> Reply:
        return await self._reply("UID EXPUNGE", self.protocol.expunge(uid_set, by_uid=True))

    async def uid_move(self, uid_set: str, mailbox: str) -> Reply:
        """RFC 6851 MOVE (the caller checks the capability)."""
        return await self._reply("UID MOVE", self.protocol.move(uid_set, quoted(mailbox), by_uid=True))

    async def uid_copy(self, uid_set: str, mailbox: str) -> Reply:
        return await self._reply("UID COPY", self.protocol.copy(uid_set, quoted(mailbox), by_uid=True))

    async def list_special_use(self) -> Reply:
        """The mailboxes with their attributes, RFC 6154's special uses among them: only those with a
        special use where the server has LIST-EXTENDED (RFC 5258), else every mailbox (a server may
        name special uses in a plain LIST too)."""
        selection = ["(SPECIAL-USE)"] if self.lists_special_use_only else []
        return await self._reply("LIST", self.protocol.simple_command("LIST", *selection, quoted(""), quoted("*")))

    @property
    def lists_special_use_only(self) -> bool:
        """Does list_special_use() list only the mailboxes with a special use?"""
        return {"SPECIAL-USE", "LIST-EXTENDED"} <= self.capabilities

    async def list_all(self) -> Reply:
        return await self._reply("LIST", self.protocol.simple_command("LIST", quoted(""), quoted("*")))

    async def idle_for(self, seconds: float) -> None:
        """IDLE until the server pushes news or ``seconds`` pass, then DONE."""
        async with self._bounded("IDLE"):
            idle = await self.run("IDLE", self.idle_start(timeout=seconds))
        with contextlib.suppress(TimeoutError):
            await self.run("IDLE", self.wait_server_push(timeout=seconds))
        # Only on a healthy connection: an error above ends the session, and must not be replaced
        # by a second one about DONE.
        if self.has_pending_idle():
            self.idle_done()
        async with self._bounded("DONE"):
            await self.run("DONE", idle)

    async def _reply(self, command: str, operation: Awaitable[Any]) -> Reply:
        response = await self.run(command, operation)
        return reply_of(response.result == "OK", response.lines)

    @contextlib.asynccontextmanager
    async def _bounded(self, command: str) -> AsyncIterator[None]:
        """Bound a step outside the probe's phases (IDLE bookkeeping) by the completion timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                yield
        except TimeoutError:
            raise ServerTimeout(f"no answer to {command} within {self.timeout:g}s") from None

    async def run(self, command: str, operation: Awaitable[T]) -> T:
        """Run one aioimaplib operation; a dropped connection ends it at once instead of at the timeout."""
        task = asyncio.ensure_future(operation)
        try:
            await asyncio.wait([task, self._closed], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        except BaseException:
            # Cut off mid-command (a phase timeout, a shutdown): the reply may still come, so the
            # connection is out of step with the server and only good for throwing away.
            self.interrupted = True
            task.cancel()
            raise
        if not task.done():
            task.cancel()
            bye = f" ({server_text(self._bye)})" if self._bye is not None else ""
            raise ProtocolFailure(f"connection closed by the server during {command}{bye}")
        try:
            return task.result()
        except ProbeError:
            raise
        except aioimaplib.CommandTimeout:
            raise ServerTimeout(f"no answer to {command}") from None
        except (aioimaplib.AioImapException, ValueError) as exc:
            raise ProtocolFailure(f"{command} failed: {server_text(str(exc))}") from None

    @property
    def healthy(self) -> bool:
        """Open and in step with the server: not closed, not inside IDLE, no command cut off."""
        if self.protocol.transport is None or self._closed.done():
            return False
        return not self.has_pending_idle() and not self.interrupted

    async def discard(self, polite: bool) -> None:
        """Close the session; LOGOUT only when the connection is healthy (after a timeout it is not)."""
        transport = self.protocol.transport
        # LOGOUT inside IDLE would wait for a DONE that never comes: skip the courtesy then.
        if polite and self.healthy:
            try:
                async with asyncio.timeout(GOODBYE_SECONDS):
                    await self.protocol.logout()
            except (TimeoutError, aioimaplib.AioImapException, OSError):
                pass
        for task in (*self.tasks, *self.protocol.tasks):
            task.cancel()
        if transport is not None:
            transport.close()  # the transport owns the socket from here
        else:
            self._client_task.cancel()
            self._sock.close()

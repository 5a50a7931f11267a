"""The IMAP4 leg (aioimaplib): open an authenticated session, find probe letters by token, delete them.

aioimaplib resolves and connects by itself and has no STARTTLS; we give it the socket we connected
(DNS and connect are our own phases) and upgrade the transport with the event loop's start_tls.
This relies on aioimaplib internals, which is why pyproject pins its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Collection, Iterator
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aioimaplib

from exporter.config.load import IncomingConfig, Security
from exporter.legs.mailbox import EXAMINE_BATCH, FoundLetter, LetterMemo, wanted
from exporter.letter.recognise import (
    BOUNCE_BYTES,
    HEADER,
    RECOGNISED_FIELDS,
    TOKEN_PREFIX,
    Recognised,
    Signer,
    is_delivery_report,
    recognise,
)
from exporter.net import connect as net
from exporter.probe.errors import (
    AuthFailure,
    MailboxFailure,
    ProbeError,
    ProtocolFailure,
    ServerTimeout,
    TLSFailure,
    server_text,
)

T = TypeVar("T")

# The header fields a letter is recognised by, at most HEADER_BYTES of them: a probe letter's are a
# few hundred bytes, so a letter whose fields fill the cap is not ours, whatever its Subject holds.
HEADER_BYTES = 4096
_FIELDS = " ".join(RECOGNISED_FIELDS).upper()
_FETCH_ITEMS = f"(UID INTERNALDATE BODY.PEEK[HEADER.FIELDS ({_FIELDS})]<0.{HEADER_BYTES}>)"
_BOUNCE_ITEMS = f"(UID INTERNALDATE BODY.PEEK[]<0.{BOUNCE_BYTES}>)"  # a bounce's returned headers are in its body
# The sweep looks for letters that carry our own header with a token in it (and bounces that quote
# one), not at Subjects: a sender can put "mrt-" into any number of Subjects.
_SWEEP_CRITERIA = [
    "OR",
    f"(HEADER {HEADER} {aioimaplib.quoted(TOKEN_PREFIX)})",
    f"(HEADER Content-Type {aioimaplib.quoted('delivery-status')} BODY {aioimaplib.quoted(TOKEN_PREFIX)})",
]
_FETCH_START = re.compile(rb"^\d+ FETCH ")
_UID = re.compile(rb"\bUID (\d+)")
_EXISTS = re.compile(rb"^\* \d+ EXISTS")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")


class ImapSession:
    """An authenticated IMAP session with the configured mailbox selected."""

    snapshot = False  # a selected mailbox sees new mail on every command: no need to reconnect

    def __init__(
        self, client: _SocketIMAP4, config: IncomingConfig, signer: Signer, address: str, memo: LetterMemo
    ) -> None:
        self._client = client
        self._config = config
        self._signer = signer
        self._memo = memo
        self.address = address
        self.certificate_not_after: float | None = None

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        # Polls search for the awaited tokens only; a sweep for every letter carrying our header.
        if sweep_before is not None:
            criteria = _SWEEP_CRITERIA
        elif tokens:
            criteria = _letter_or_bounce(sorted(tokens))
        else:
            return []
        uids = await self._search(criteria)
        known = [FoundLetter(ours.token, uid, bounce=ours.bounce) for uid in uids if (ours := self._memo.ours(uid))]
        unknown = [uid for uid in uids if uid not in self._memo][-EXAMINE_BATCH:]  # the newest
        letters = known + (await self._fetch(unknown) if unknown else [])
        return [letter for letter in letters if wanted(letter.token, tokens, sweep_before)]

    async def _fetch(self, uids: list[str]) -> list[FoundLetter]:
        """The letters of ours among ``uids``; what each one is, the memo keeps (see LetterMemo)."""
        fetch = self._client.protocol.fetch(",".join(uids), _FETCH_ITEMS, by_uid=True)
        response = await self._checked("UID FETCH", fetch)
        fetched = dict(self._parse_fetch(response.lines))
        reports = [uid for uid, (line, headers) in fetched.items() if is_delivery_report(headers)]
        bounces = await self._bounces(reports) if reports else {}
        letters = []
        for uid, (line, headers) in fetched.items():
            ours = bounces.get(uid) if uid in reports else self._recognise(headers)
            self._memo.remember(uid, ours)
            if ours is not None:
                letters.append(FoundLetter(ours.token, uid, _internaldate(line), ours.bounce))
        return letters

    async def _bounces(self, uids: list[str]) -> dict[str, Recognised | None]:
        """Read these possible bounces (bounded) and recognise the bounces of our letters."""
        fetch = self._client.protocol.fetch(",".join(uids), _BOUNCE_ITEMS, by_uid=True)
        response = await self._checked("UID FETCH", fetch)
        return {uid: recognise(self._signer, body) for uid, (_, body) in self._parse_fetch(response.lines)}

    def _recognise(self, headers: bytes) -> Recognised | None:
        if len(headers) >= HEADER_BYTES:
            return None  # cut off at the cap: too big to be ours
        return recognise(self._signer, headers)

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        if not letters:
            return
        uid_set = ",".join(letter.ref for letter in letters)
        self._memo.forget([letter.ref for letter in letters])
        protocol = self._client.protocol
        await self._checked("UID STORE", protocol.store(uid_set, "+FLAGS.SILENT", r"(\Deleted)", by_uid=True))
        # Without UIDPLUS a plain EXPUNGE would also remove letters someone else marked \Deleted:
        # we leave ours flagged rather than touch anything that is not provably ours.
        if "UIDPLUS" in protocol.capabilities:
            await self._checked("UID EXPUNGE", protocol.expunge(uid_set, by_uid=True))

    async def wait_for_change(self, seconds: float) -> None:
        """Wait until the server pushes news (IDLE) or ``seconds`` pass; without IDLE, only wait.

        With IDLE the letter is seen as soon as the server announces it, not at the next poll.
        """
        client = self._client
        if client.protocol.new_mail:
            return  # announced during the last search, delete or fetch: IDLE would not hear of it again
        if "IDLE" not in client.protocol.capabilities:
            await asyncio.sleep(seconds)
            return
        async with client.bounded("IDLE"):
            idle = await client.run("IDLE", client.idle_start(timeout=seconds))
        with contextlib.suppress(TimeoutError):
            await client.run("IDLE", client.wait_server_push(timeout=seconds))
        # Only on a healthy connection: an error above ends the session, and must not be replaced
        # by a second one about DONE.
        if client.has_pending_idle():
            client.idle_done()
        async with client.bounded("DONE"):
            await client.run("DONE", idle)

    async def close(self) -> None:
        await self._client.discard(polite=True)

    async def _search(self, criteria: list[str]) -> list[str]:
        """Matching UIDs, lowest first. No CHARSET (Exchange and Yahoo reject "CHARSET utf-8")."""
        protocol = self._client.protocol
        # Dovecot answers a SEARCH from its view before the command: NOOP first makes it see new mail.
        await self._checked("NOOP", protocol.simple_command("NOOP"))
        protocol.new_mail = False  # what NOOP announced, this search sees; later news it may miss
        response = await self._checked("UID SEARCH", protocol.search(*criteria, charset=None, by_uid=True))
        # aioimaplib gives the untagged "* SEARCH 1 2" as b"1 2"; the last line is the tagged status text.
        uids = {int(word) for line in response.lines[:-1] for word in line.split() if word.isdigit()}
        return [str(uid) for uid in sorted(uids)]

    @staticmethod
    def _parse_fetch(lines: list[Any]) -> Iterator[tuple[str, tuple[bytes, bytes]]]:
        """(UID, (FETCH line, literal)): a FETCH response is a line with UID/INTERNALDATE, then the literal."""
        for line, literal in itertools.pairwise(lines):
            if isinstance(line, bytes) and _FETCH_START.match(line) and (uid := _UID.search(line)):
                yield uid.group(1).decode(), (line, bytes(literal))

    async def _checked(self, command: str, operation: Awaitable[Any]) -> Any:
        response = await self._client.run(command, operation)
        if response.result != "OK":
            raise MailboxFailure(f"{command} failed: {_text(response)}")
        return response


def _letter_or_bounce(tokens: list[str]) -> list[str]:
    """Our letter carries its token in the Subject; a bounce (DSN) of it, in its body. The header
    test comes first so the server reads the bodies of delivery reports only. (SUBJECT search is
    the most widely supported.)"""
    bounce = ["HEADER", "Content-Type", aioimaplib.quoted("delivery-status"), *_any("BODY", tokens)]
    return ["OR", f"({' '.join(_any('SUBJECT', tokens))})", f"({' '.join(bounce)})"]


def _any(key: str, tokens: list[str]) -> list[str]:
    """``OR KEY a OR KEY b KEY c``: one search for every token still awaited."""
    if len(tokens) == 1:
        return [key, aioimaplib.quoted(tokens[0])]
    return ["OR", key, aioimaplib.quoted(tokens[0]), *_any(key, tokens[1:])]


def _internaldate(line: bytes) -> float | None:
    match = _INTERNALDATE.search(line)
    if match is None:
        return None
    try:
        return parsedate_to_datetime(_rfc2822(match.group(1).decode())).timestamp()
    except (ValueError, TypeError):
        return None


def _rfc2822(internaldate: str) -> str:
    """IMAP's ``26-Nov-2026 12:00:00 +0000`` in the RFC 2822 shape the stdlib parses."""
    day_month_year, _, rest = internaldate.strip().partition(" ")
    return f"{day_month_year.replace('-', ' ')} {rest}"


def _text(response: Any) -> str:
    lines = [line for line in response.lines if isinstance(line, bytes)]
    return server_text(lines[-1] if lines else b"") or "no reason given"


async def open_session(
    config: IncomingConfig, connected: net.Connected, clock: net.PhaseClock, signer: Signer, memo: LetterMemo
) -> ImapSession:
    """TLS (implicit or STARTTLS), greeting, LOGIN and SELECT; the caller has connected the socket."""
    implicit = config.security is Security.TLS
    context = net.client_context(config.tls)
    client = _SocketIMAP4(connected.sock, context if implicit else None, config.host, clock.limit)
    try:
        if implicit:
            async with clock.phase("mailbox_tls"):
                await client.handshake()
        async with clock.phase("mailbox_login", hint="" if implicit else net.GREETING_HINT):
            await client.greeting()
        if config.security is Security.STARTTLS:
            async with clock.phase("mailbox_tls"):
                await client.starttls(context, config.host)
        session = ImapSession(client, config, signer, connected.address, memo)
        session.certificate_not_after = net.certificate_not_after(client.ssl_object())
        async with clock.phase("mailbox_login", accumulate=True):
            memo.renew(await _login(client, config))
        return session
    except BaseException:
        await client.discard(polite=False)
        raise


async def _login(client: _SocketIMAP4, config: IncomingConfig) -> str | None:
    """LOGIN and SELECT; the mailbox's UIDVALIDITY (None if the server did not say)."""
    assert config.user is not None and config.password is not None  # the config loader requires both
    protocol = client.protocol
    if "LOGINDISABLED" in protocol.capabilities:
        raise AuthFailure("server refuses LOGIN on this connection (LOGINDISABLED: it wants TLS)")
    response = await client.run("LOGIN", protocol.login(aioimaplib.quoted(config.user), config.password.reveal()))
    # A rejected LOGIN does not raise in aioimaplib: the result says so.
    if response.result != "OK":
        raise AuthFailure(f"LOGIN rejected: {_text(response)}")
    response = await client.run("SELECT", protocol.select(aioimaplib.quoted(config.mailbox)))
    if response.result != "OK":
        raise MailboxFailure(f"SELECT {config.mailbox!r} failed: {_text(response)}")
    validity = (_UIDVALIDITY.search(line) for line in response.lines if isinstance(line, bytes))
    return next((match.group(1).decode() for match in validity if match is not None), None)


class _Protocol(aioimaplib.IMAP4ClientProtocol):  # type: ignore[misc]
    """Notes every untagged EXISTS: aioimaplib drops those that arrive during SEARCH, FETCH or STORE,
    and a letter announced there would otherwise wait for the next poll (IDLE does not repeat it)."""

    new_mail = False

    def _untagged_response(self, line: bytes) -> Any:
        if _EXISTS.match(line):
            self.new_mail = True
        return super()._untagged_response(line)


class _SocketIMAP4(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client over a socket we connected, with STARTTLS and fail-fast on connection loss."""

    def __init__(self, sock: Any, ssl_context: ssl.SSLContext | None, host: str, timeout: float) -> None:
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

    def _watch_lines(self) -> None:
        """Note the greeting and any BYE as lines arrive; keep a greeting that is not OK/PREAUTH from
        aioimaplib. Runs before the first await on the connection, so no line can come earlier."""
        if self._greeting is not None:
            return
        greeting = self._greeting = asyncio.get_running_loop().create_future()
        handle = self.protocol._handle_line

        def watched(line: bytes, current: Any) -> Any:
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
            raise net.tls_failure(exc) from None

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
        response = await self.run("STARTTLS", protocol.execute(command))
        if response.result != "OK":
            raise TLSFailure(f"STARTTLS refused: {_text(response)}")
        loop = asyncio.get_running_loop()
        try:
            protocol.transport = await loop.start_tls(protocol.transport, protocol, context, server_hostname=host)
        except (ssl.SSLError, ssl.CertificateError, ConnectionError) as exc:
            raise net.tls_failure(exc) from None
        # RFC 3501 6.2.1: capabilities learnt before TLS must be forgotten and asked again.
        await self.run("CAPABILITY", protocol.capability())

    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self.protocol.transport
        return transport.get_extra_info("ssl_object") if transport is not None else None

    @contextlib.asynccontextmanager
    async def bounded(self, command: str) -> AsyncIterator[None]:
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

    async def discard(self, polite: bool) -> None:
        """Close the session; LOGOUT only when the connection is healthy (after a timeout it is not)."""
        transport = self.protocol.transport
        # LOGOUT inside IDLE would wait for a DONE that never comes: skip the courtesy then.
        healthy = (
            transport is not None and not self._closed.done() and not self.has_pending_idle() and not self.interrupted
        )
        if polite and healthy:
            try:
                async with asyncio.timeout(2):
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

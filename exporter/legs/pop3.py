"""The POP3 mailbox leg: a small asyncio POP3 client (RFC 1939, CAPA/STLS from RFC 2449/2595).

No maintained asyncio POP3 client exists, so this speaks the protocol over asyncio streams itself.
It only needs USER/PASS, UIDL, LIST n, TOP n 0, DELE and QUIT. A hostile or broken server must not be able
to eat memory (lines and multi-line replies are capped), inject commands (arguments with CR, LF or
NUL are refused before anything is sent) or make us delete letters that are not ours (we DELE only
message numbers from this session's own UIDL listing, for letters whose token we verified).

POP3 sees only the mail present at login, so a session is a snapshot: the probe reopens one for
each poll. Deletions are committed only by QUIT; a session that ends any other way deletes nothing,
which is why we never send QUIT after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import Counter
from collections.abc import Collection, Iterator
from datetime import UTC
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime

from exporter.config.load import IncomingConfig, Security
from exporter.legs.mailbox import EXAMINE_BATCH, FoundLetter, LetterMemo, wanted
from exporter.letter.recognise import BOUNCE_BYTES, Recognised, Signer, is_delivery_report, recognise
from exporter.net import connect as net
from exporter.net.connect import PhaseClock
from exporter.probe.errors import AuthFailure, MailboxFailure, ProtocolFailure, TLSFailure, server_text

LINE_LIMIT = 64 * 1024  # one reply line; RFC 1939 allows 512 octets, real servers stay far below
# Multi-line replies are capped in bytes and in lines: many tiny lines cost far more memory than
# their bytes (each becomes an object), so a byte cap alone would not bound memory.
# A letter bigger than this is never one of ours (a probe letter is about 1 KB, plus the servers'
# trace headers, a bounce of it a few KB): its headers are not read at all, whatever a sender put in them.
LETTER_SIZE_LIMIT = 64 * 1024
# The header block of a letter within LETTER_SIZE_LIMIT fits easily (dot-stuffing, LF counted as
# one byte by LIST); only a server whose LIST lies about sizes meets these caps.
TOP_LIMIT = 2 * LETTER_SIZE_LIMIT
TOP_LINES = LETTER_SIZE_LIMIT // 2
BOUNCE_LINES = 400  # body lines read of a possible bounce: its report and the returned headers come first
UIDL_LIMIT = 16 * 1024 * 1024  # a listing
UIDL_LINES = 200_000  # messages in the mailbox
CAPA_LIMIT = 64 * 1024
CAPA_LINES = 1_000
REPLY_TEXT_LIMIT = 200  # how much of a server's text goes into an error message
QUIT_TIMEOUT = 2.0  # close() is best effort and must not hold the probe up

_UIDL_LINE = re.compile(rb"([1-9][0-9]{0,9}) ([\x21-\x7e]{1,70})")
_LIST_REPLY = re.compile(r"[1-9][0-9]{0,9} ([0-9]{1,12})\b.*")


class Pop3Client:
    """One POP3 connection over asyncio streams. Raises only ProbeError subclasses (and CancelledError).

    ``busy`` is set while a command's reply has not been read completely: the stream is then out of
    step with the server, so nothing more may be sent on it (not even QUIT).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.busy = False
        self.commands_sent: Counter[str] = Counter()
        self._secrets: list[str] = []

    @classmethod
    async def open(
        cls, connected: net.Connected, tls: ssl.SSLContext | None = None, server_hostname: str | None = None
    ) -> Pop3Client:
        """Wrap an already connected socket; with ``tls``, do the implicit TLS handshake first."""
        try:
            reader, writer = await asyncio.open_connection(
                sock=connected.sock,
                ssl=tls,
                server_hostname=server_hostname if tls else None,
                limit=LINE_LIMIT,
            )
        except (OSError, EOFError) as exc:
            connected.sock.close()
            raise (net.tls_failure(exc) if tls else ProtocolFailure(f"cannot use the connection: {exc}")) from None
        except BaseException:
            connected.sock.close()
            raise
        return cls(reader, writer)

    def hide(self, secret: str) -> None:
        """Never let ``secret`` appear in an error message, even if the server echoes it."""
        if secret:
            self._secrets.append(secret)

    # --- commands ------------------------------------------------------------------------------

    async def greeting(self) -> str:
        """Read the server's greeting; -ERR means it refuses us (busy, too many connections)."""
        ok, text = await self._status("the greeting")
        if not ok:
            raise MailboxFailure(f"server refused the session: {text}")
        return text

    async def command(self, name: str, *args: str) -> tuple[bool, str]:
        """Send a command, read its status line: (True, text) for +OK, (False, text) for -ERR."""
        line = self.encode(name, *args)
        self.busy = True
        self.commands_sent[name] += 1
        try:
            self.writer.write(line)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            raise self._closed_during(name, exc) from None
        return await self._status(name)

    async def simple(self, name: str, *args: str) -> str:
        """A command whose -ERR is a mailbox failure naming the command."""
        ok, text = await self.command(name, *args)
        if not ok:
            raise MailboxFailure(f"server refused {name}: {text}")
        return text

    async def multiline(self, name: str, *args: str, limit: int, max_lines: int) -> list[bytes]:
        """A command with a multi-line +OK reply; returns its lines, dot-unstuffed, without CRLF."""
        await self.simple(name, *args)
        return await self.data_lines(name, limit, max_lines)

    async def data_lines(self, name: str, limit: int, max_lines: int) -> list[bytes]:
        """The data lines that follow a +OK to a multi-line command, up to the final "."."""
        self.busy = True  # the data lines are still to come
        lines: list[bytes] = []
        total = 0
        while True:
            line = await self._line(name)
            if line == b".":
                self.busy = False
                return lines
            total += len(line) + 2
            if total > limit or len(lines) >= max_lines:
                raise ProtocolFailure(f"reply to {name} longer than {limit} bytes or {max_lines} lines")
            lines.append(line[1:] if line.startswith(b".") else line)

    async def quit(self) -> tuple[bool, str]:
        ok, text = await self.command("QUIT")
        self.busy = True  # QUIT ends the conversation: nothing may follow it
        return ok, text

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        # Bytes that arrived after the STLS reply but before the handshake were sent in clear text
        # and could be a man in the middle's forged replies: refuse rather than read them later as
        # if they came over TLS (the STARTTLS injection attack, CVE-2011-0411 and friends).
        # StreamReader has no public way to see its buffer, hence the private attribute.
        if getattr(self.reader, "_buffer", b""):
            raise ProtocolFailure("server sent data after its STLS reply, before TLS began")
        self.busy = True
        try:
            await self.writer.start_tls(context, server_hostname=server_hostname)
        except (OSError, EOFError) as exc:
            raise net.tls_failure(exc) from None
        self.busy = False

    def ssl_object(self) -> ssl.SSLObject | None:
        obj = self.writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    def abort(self) -> None:
        """Drop the connection without QUIT: the server then deletes nothing."""
        self.busy = True
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    # --- lines ---------------------------------------------------------------------------------

    def encode(self, name: str, *args: str) -> bytes:
        """The command line, refusing arguments that would smuggle in a second command."""
        for arg in args:
            if any(c in arg for c in "\r\n\0"):
                # Never show the argument: for PASS it is the password.
                raise ProtocolFailure(f"refusing to send {name}: an argument contains CR, LF or NUL")
        if self.busy:
            raise ProtocolFailure(f"refusing to send {name}: the connection is out of step with the server")
        return " ".join((name, *args)).encode("utf-8") + b"\r\n"

    async def _status(self, name: str) -> tuple[bool, str]:
        line = await self._line(name)
        self.busy = False
        if line == b"+OK" or line.startswith(b"+OK "):
            return True, self.printable(line[4:])
        if line == b"-ERR" or line.startswith(b"-ERR "):
            return False, self.printable(line[5:])
        raise ProtocolFailure(f"unexpected reply to {name}: {self.printable(line)!r}")

    async def _line(self, name: str) -> bytes:
        self.busy = True
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise ProtocolFailure(f"server sent a line longer than {LINE_LIMIT} bytes during {name}") from None
        except asyncio.IncompleteReadError as exc:
            raise self._closed_during(name, exc) from None
        except ssl.SSLError as exc:
            raise ProtocolFailure(f"TLS error during {name}: {exc.reason or exc}") from None
        except OSError as exc:
            raise self._closed_during(name, exc) from None
        return line.rstrip(b"\r\n")

    def _closed_during(self, name: str, exc: BaseException) -> ProtocolFailure:
        detail = f" ({exc.strerror})" if isinstance(exc, OSError) and exc.strerror else ""
        return ProtocolFailure(f"connection closed by the server during {name}{detail}")

    def printable(self, raw: bytes) -> str:
        """Server text fit for an error message (errors.server_text), without our secrets."""
        return server_text(raw, REPLY_TEXT_LIMIT, hide=self._secrets)


class Pop3Session:
    """An authenticated POP3 session: the MailboxSession of exporter.mailbox.

    ``memo`` is shared by the caller across the sessions of one mailbox, so each letter's headers
    are read only once: foreign ones for good, ours until one of them is wanted (and then only to
    verify it in the session that deletes it).
    """

    snapshot = True  # sees only mail present at login: poll by opening a new session

    def __init__(self, client: Pop3Client, signer: Signer, memo: LetterMemo, address: str) -> None:
        self.client = client
        self.signer = signer
        self.memo = memo
        self.address = address
        self.certificate_not_after: float | None = None
        self._found: dict[FoundLetter, int] = {}  # letters find() verified here -> message number
        self._closed = False
        self._deleting = False  # DELE sent: only a complete delete() may QUIT now

    @property
    def commands_sent(self) -> Counter[str]:
        """How often each command was sent, for tests and debugging."""
        return self.client.commands_sent

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        self._check_open()
        with self._errors_abort():
            listing = await self._listing()
            # Forget letters that are gone, so the memo stays as small as the mailbox. (A letter
            # newer than this snapshot, memoised by a concurrent session, may be forgotten too:
            # that costs one more TOP later, nothing worse.)
            self.memo.keep_only(listing)
            found = []
            for uidl, number in self._to_examine(listing, tokens, sweep_before):
                letter = await self._examine(uidl, number, tokens, sweep_before)
                if letter is not None:
                    # Message numbers stay valid for the whole session (POP3 never renumbers).
                    self._found[letter] = number
                    found.append(letter)
            return found

    def _to_examine(
        self, listing: dict[str, int], tokens: Collection[str], sweep_before: float | None
    ) -> list[tuple[str, int]]:
        """Letters not seen before (at most EXAMINE_BATCH, the newest first: the awaited letter is
        recent), and letters of ours the memo says are wanted now (to verify them in this session)."""
        newest_first = sorted(listing.items(), key=lambda item: item[1], reverse=True)
        unknown = [item for item in newest_first if item[0] not in self.memo][:EXAMINE_BATCH]
        ours = [item for item in newest_first if _wanted_ours(self.memo.ours(item[0]), tokens, sweep_before)]
        return unknown + ours

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        self._check_open()
        unknown = [letter.ref for letter in letters if letter not in self._found]
        if unknown:
            # Only letters this session verified: message numbers mean nothing in another session,
            # and a UIDL alone does not prove the letter is ours. Never guess.
            raise MailboxFailure(f"letter {unknown[0]!r} was not found in this session; deleting nothing")
        with self._errors_abort():
            self._deleting = True
            for number in sorted({self._found[letter] for letter in letters}):
                await self.client.simple("DELE", str(number))
            await self._commit()

    async def wait_for_change(self, seconds: float) -> None:
        """POP3 has no push: only time passes (the prober reopens snapshot sessions to see new mail)."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:
        """QUIT if the session is in a clean state, else just drop it (deleting nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            # Best effort: the server may be gone already, and then there is nothing to tell it.
            with contextlib.suppress(Exception):
                if not self.client.busy and not self._deleting:
                    async with asyncio.timeout(QUIT_TIMEOUT):
                        await self.client.quit()
                        self.client.writer.close()
                        await self.client.writer.wait_closed()
        finally:
            self.client.abort()

    # --- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MailboxFailure("the POP3 session is already closed")

    @contextlib.contextmanager
    def _errors_abort(self) -> Iterator[None]:
        """On any failure, drop the connection at once: no QUIT may commit a half-done deletion."""
        try:
            yield
        except BaseException:
            self._closed = True
            self.client.abort()
            raise

    async def _commit(self) -> None:
        try:
            ok, text = await self.client.quit()
        except ProtocolFailure as exc:
            raise MailboxFailure(f"QUIT failed, the letters may not have been deleted: {exc.message}") from None
        if not ok:
            raise MailboxFailure(f"server refused QUIT, so the letters were not deleted: {text}")
        self._closed = True
        self.client.abort()  # the server closes its side after QUIT anyway

    async def _listing(self) -> dict[str, int]:
        numbers: dict[str, int] = {}
        ambiguous: set[str] = set()
        for line in await self.client.multiline("UIDL", limit=UIDL_LIMIT, max_lines=UIDL_LINES):
            match = _UIDL_LINE.fullmatch(line)
            if match is None:
                raise ProtocolFailure(f"malformed UIDL line: {self.client.printable(line)!r}")
            uidl = match.group(2).decode("ascii")
            if uidl in numbers:
                ambiguous.add(uidl)  # a server bug; such a letter cannot be safely deleted by UIDL
            numbers[uidl] = int(match.group(1))
        return {uidl: number for uidl, number in numbers.items() if uidl not in ambiguous}

    async def _examine(
        self, uidl: str, number: int, tokens: Collection[str], sweep_before: float | None
    ) -> FoundLetter | None:
        size = await self._size(number)
        if size is None:
            return None  # another client (a user's mail program, another task) deleted it since our UIDL
        if size > LETTER_SIZE_LIMIT:
            self.memo.remember(uidl, None)  # too big to be ours: never read its headers
            return None
        ok, _ = await self.client.command("TOP", str(number), "0")
        if not ok:
            return None
        lines = await self.client.data_lines("TOP", TOP_LIMIT, TOP_LINES)
        headers = b"\r\n".join(lines) + b"\r\n"
        ours = await self._bounce(number) if is_delivery_report(headers) else recognise(self.signer, headers)
        if ours is None or not wanted(ours.token, tokens, sweep_before):
            # Foreign for good, or ours but another probe's (maybe still in flight), or too young to
            # sweep: remember which, so that its headers need not be read again.
            self.memo.remember(uidl, ours)
            return None
        return FoundLetter(ours.token, uidl, received_time(headers), ours.bounce)

    async def _bounce(self, number: int) -> Recognised | None:
        """Read the start of a possible bounce (its returned headers are in the body) and check it."""
        ok, _ = await self.client.command("TOP", str(number), str(BOUNCE_LINES))
        lines = await self.client.data_lines("TOP", TOP_LIMIT + BOUNCE_BYTES, TOP_LINES + BOUNCE_LINES) if ok else []
        return recognise(self.signer, b"\r\n".join(lines) + b"\r\n") if lines else None

    async def _size(self, number: int) -> int | None:
        """The letter's size from ``LIST n`` (None: it is gone); a reply without one counts as too big."""
        ok, text = await self.client.command("LIST", str(number))
        if not ok:
            return None
        match = _LIST_REPLY.fullmatch(text)
        return int(match.group(1)) if match is not None else LETTER_SIZE_LIMIT + 1


def _wanted_ours(ours: Recognised | None, tokens: Collection[str], sweep_before: float | None) -> bool:
    return ours is not None and wanted(ours.token, tokens, sweep_before)


def received_time(headers: bytes) -> float | None:
    """The date of the topmost Received header (the last hop: our server's arrival time)."""
    received = BytesHeaderParser().parsebytes(headers).get_all("Received") or []
    if not received:
        return None
    date = str(received[0]).rpartition(";")[2].strip()
    try:
        when = parsedate_to_datetime(date)
        # "-0000" (time zone unknown) parses as naive: take it as UTC, not as our local time.
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


async def open_session(
    config: IncomingConfig, connected: net.Connected, clock: PhaseClock, signer: Signer, memo: LetterMemo
) -> Pop3Session:
    """TLS, greeting and login on a connected socket, in the phases IMAP uses: the implicit TLS
    handshake in mailbox_tls, the greeting in mailbox_login (with the hint about implicit-TLS ports
    unless TLS came first), STLS and its handshake in mailbox_tls, USER/PASS in mailbox_login."""
    implicit = config.security is Security.TLS
    context = net.client_context(config.tls)
    client: Pop3Client | None = None
    try:
        if implicit:
            async with clock.phase("mailbox_tls"):
                client = await Pop3Client.open(connected, context, config.host)
        else:
            client = await Pop3Client.open(connected)
        async with clock.phase("mailbox_login", hint="" if implicit else net.GREETING_HINT):
            await client.greeting()
        if config.security is Security.STARTTLS:
            async with clock.phase("mailbox_tls"):
                await _start_tls(client, context, config.host)
        session = Pop3Session(client, signer, memo, connected.address)
        if config.security is not Security.NONE:
            session.certificate_not_after = net.certificate_not_after(client.ssl_object())
        async with clock.phase("mailbox_login", accumulate=True):
            await _login(client, config)
        return session
    except BaseException:
        if client is not None:
            client.abort()
        else:
            connected.sock.close()
        raise


async def _start_tls(client: Pop3Client, context: ssl.SSLContext, host: str) -> None:
    if "STLS" not in await _capabilities(client):
        raise TLSFailure("server does not offer STLS")
    ok, text = await client.command("STLS")
    if not ok:
        raise TLSFailure(f"server does not offer STLS: {text}")
    await client.start_tls(context, host)


async def _capabilities(client: Pop3Client) -> set[str]:
    """CAPA's capability names, upper case; an empty set if the server has no CAPA (RFC 1939 only)."""
    ok, _ = await client.command("CAPA")
    if not ok:
        return set()
    lines = await client.data_lines("CAPA", CAPA_LIMIT, CAPA_LINES)
    return {line.split(b" ", 1)[0].decode("ascii", "replace").upper() for line in lines if line}


async def _login(client: Pop3Client, config: IncomingConfig) -> None:
    user = config.user or ""
    password = config.password.reveal() if config.password is not None else ""
    client.hide(password)
    # Check both before sending either: a bad password must not leave a half-done login behind.
    client.encode("USER", user)
    client.encode("PASS", password)
    for name, arg in (("USER", user), ("PASS", password)):
        ok, text = await client.command(name, arg)
        if not ok:
            raise AuthFailure(f"server refused {name}: {text}")

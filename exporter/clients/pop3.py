"""A small asyncio POP3 client (RFC 1939, CAPA/STLS from RFC 2449/2595): one connection, line by line.

No maintained asyncio POP3 client exists, so this speaks the protocol over asyncio streams itself.
A hostile or broken server must not be able to eat memory (lines and multi-line replies are capped
by the caller), inject commands (arguments with CR, LF or NUL are refused before anything is sent)
or push text into our outputs unsanitised (every reply goes through sanitise.server_text).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import Counter

from exporter.net.connect import Connected
from exporter.net.tls import tls_failure
from exporter.probe.errors import MailboxFailure, ProtocolFailure
from exporter.probe.phases import Leg
from exporter.sanitise import server_text
from exporter.transcript import REDACTED, note

LINE_LIMIT = 64 * 1024  # one reply line; RFC 1939 allows 512 octets, real servers stay far below
REPLY_TEXT_LIMIT = 200  # how much of a server's text goes into an error message
SECRET_COMMANDS = {"PASS": 0, "AUTH": 1}  # name -> how many arguments a transcript shows (AUTH: the mechanism)
AUTH_LINE_LIMIT = 255  # RFC 5034 4: a longer AUTH line sends its initial response after the server's "+"
SASL_CONTINUATIONS = 3  # server challenges one AUTH answers before it gives up on the server


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
        cls, connected: Connected, tls: ssl.SSLContext | None = None, server_hostname: str | None = None
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
            raise (tls_failure(exc) if tls else ProtocolFailure(f"cannot use the connection: {exc}")) from None
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
        await self._send(name, self.encode(name, *args), _shown(name, args))
        return await self._status(name)

    async def authenticate(self, mechanism: str, response: str, abort: str) -> tuple[bool, str, str | None]:
        """RFC 5034 AUTH with one SASL message (``response``, base64): on the command line if that
        stays within 255 octets, else after the server's first "+". An error challenge is answered
        with ``abort``, anything more with "*" (cancel). (ok, text, the error challenge if any)"""
        inline = len(f"AUTH {mechanism} {response}\r\n") <= AUTH_LINE_LIMIT
        arguments = (mechanism, response) if inline else (mechanism,)
        await self._send("AUTH", self.encode("AUTH", *arguments), _shown("AUTH", arguments))
        waiting = [] if inline else [response]
        challenge: str | None = None
        line = await self._line("AUTH")
        for _ in range(SASL_CONTINUATIONS):
            if line != b"+" and not line.startswith(b"+ "):
                break
            note(Leg.MAILBOX, False, self.printable(line))
            self.busy = False  # the continuation is read whole: our answer is next
            if waiting:
                answer = waiting.pop()
            elif challenge is None:
                challenge, answer = line[2:].decode("ascii", "replace"), abort
            else:
                answer = "*"
            await self._send("AUTH", answer.encode("ascii") + b"\r\n", REDACTED)  # base64: it carries the token
            line = await self._line("AUTH")
        ok, text = self._status_of("AUTH", line)
        return ok, text, challenge

    async def _send(self, name: str, line: bytes, shown: str | bytes) -> None:
        self.busy = True
        self.commands_sent[name] += 1
        note(Leg.MAILBOX, True, shown)
        try:
            self.writer.write(line)
            await self.writer.drain()
        except (OSError, RuntimeError) as exc:
            raise self._closed_during(name, exc) from None

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
                note(Leg.MAILBOX, False, f"({len(lines)} data lines, {total} bytes)")  # never a letter's text
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
            raise tls_failure(exc) from None
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
        return self._status_of(name, await self._line(name))

    def _status_of(self, name: str, line: bytes) -> tuple[bool, str]:
        self.busy = False
        note(Leg.MAILBOX, False, self.printable(line))
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
        """Server text fit for an error message (sanitise.server_text), without our secrets."""
        return server_text(raw, REPLY_TEXT_LIMIT, hide=self._secrets)


def _shown(name: str, args: tuple[str, ...]) -> str:
    """A command as a transcript shows it: the secret arguments of PASS and AUTH redacted."""
    if name not in SECRET_COMMANDS:
        return " ".join((name, *args))
    kept = args[: SECRET_COMMANDS[name]]
    return " ".join((name, *kept, *([REDACTED] if len(args) > len(kept) else [])))

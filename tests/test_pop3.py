"""The POP3 leg: against scripted (fake and hostile) servers here, against the real Dovecot below."""

from __future__ import annotations

import asyncio
import re
import smtplib
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from exporter.clients.pop3 import LINE_LIMIT, Pop3Client
from exporter.config.model import IncomingConfig, Protocol, Secret, Security, ServerConfig, TLSOptions
from exporter.legs.mailbox import FoundLetter
from exporter.legs.memo import LetterMemo
from exporter.legs.pop3 import (
    TOP_LIMIT,
    TOP_LINES,
    UIDL_LINES,
    Pop3Session,
    open_session,
    received_time,
)
from exporter.letter.compose import build_letter
from exporter.letter.recognise import Recognised
from exporter.letter.token import Signer, Token
from exporter.net import connect as net
from exporter.net.connect import GOODBYE_SECONDS
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import (
    AuthFailure,
    ConnectFailure,
    MailboxFailure,
    ProbeError,
    ProtocolFailure,
    ServerTimeout,
    TLSFailure,
)
from exporter.probe.phases import Phase
from tests.hostile import HostileServer, Peer, serve
from tests.rig import MailRig

SIGNER = Signer(b"k")
PASSWORD = "s3cret-Pa55"


def incoming(
    port: int,
    security: Security = Security.NONE,
    *,
    user: str = "probe",
    password: str = PASSWORD,
    host: str = "127.0.0.1",
    ca_file: str | None = None,
) -> IncomingConfig:
    return IncomingConfig(
        server=ServerConfig(
            host=host,
            port=port,
            security=security,
            tls=TLSOptions(ca_file=ca_file),
            user=user,
            password=Secret(password),
        ),
        protocol=Protocol.POP3,
    )


def letter(token: Token | None = None, subject: str | None = None, extra: str = "") -> bytes:
    """A letter as delivered: with a Received header on top, like an MTA adds."""
    token = token or SIGNER.new_token()
    built = build_letter(token, "monitor@example.test", "probe@example.test", "dev", "task")
    if subject is not None:
        built = re.sub(rb"(?m)^Subject: .*$", b"Subject: " + subject.encode() + b"\r", built, count=1)
    received = "Received: from mx by pop.example.test; Wed, 26 Nov 2025 12:33:00 +0000\r\n"
    return (received + extra).encode() + built


def foreign_letter(subject: str = "hello", extra: str = "") -> bytes:
    return (
        "Received: from mx by pop.example.test; Wed, 26 Nov 2025 12:00:00 +0000\r\n"
        f"{extra}From: someone@example.test\r\nTo: probe@example.test\r\nSubject: {subject}\r\n\r\n"
        "Dear probe,\r\n.leading dot\r\n"
    ).encode()


# --- a scripted POP3 server ----------------------------------------------------------------------


@dataclass
class FakeMailbox:
    """An RFC 1939 server's mailbox, shared by all connections to one fake server."""

    letters: dict[str, bytes]  # UIDL -> letter, in message-number order
    password: str = PASSWORD
    capabilities: tuple[str, ...] = ("USER", "UIDL", "TOP", "STLS")
    # command name -> raw reply sent instead of the normal one (b"" hangs up instead of replying)
    replies: dict[str, bytes] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)  # every command received, arguments masked
    failing_dele: int | None = None  # the DELE (counting from 1) that gets -ERR

    async def __call__(self, peer: Peer) -> None:
        await peer.send(b"+OK fake POP3 ready\r\n")
        numbers = list(self.letters)  # the snapshot at login
        deleted: set[int] = set()
        while line := await peer.line():
            name, _, arg = line.decode().partition(" ")
            name = name.upper()
            self.commands.append(name if name == "PASS" else line.decode())
            if name in self.replies:
                if not self.replies[name]:
                    return
                await peer.send(self.replies[name])
            elif name == "QUIT":
                for number in deleted:
                    del self.letters[numbers[number - 1]]
                await peer.send(b"+OK bye\r\n")
                return
            else:
                await peer.send(self._reply(name, arg, numbers, deleted))

    def _reply(self, name: str, arg: str, numbers: list[str], deleted: set[int]) -> bytes:
        if name == "CAPA":
            return b"+OK\r\n" + "".join(f"{c}\r\n" for c in self.capabilities).encode() + b".\r\n"
        if name == "USER":
            return b"+OK\r\n"
        if name == "PASS":
            return b"+OK logged in\r\n" if arg == self.password else b"-ERR [AUTH] Authentication failed.\r\n"
        if name == "UIDL":
            listing = "".join(f"{i} {u}\r\n" for i, u in enumerate(numbers, 1) if i not in deleted)
            return b"+OK\r\n" + listing.encode() + b".\r\n"
        if name == "LIST":
            return f"+OK {arg} {len(self.letters[numbers[int(arg) - 1]])}\r\n".encode()
        if name == "TOP":
            number = int(arg.split()[0])
            head = self.letters[numbers[number - 1]].split(b"\r\n\r\n", 1)[0]
            stuffed = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in head.split(b"\r\n"))
            return b"+OK\r\n" + stuffed + b"\r\n.\r\n"
        if name == "DELE":
            if self.failing_dele == sum(c.startswith("DELE") for c in self.commands):
                return b"-ERR no such message\r\n"
            deleted.add(int(arg))
            return b"+OK marked\r\n"
        return b"-ERR unknown command\r\n"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeMailbox, HostileServer]]:
    box = FakeMailbox(letters={})
    async with serve(box) as server:
        yield box, server


async def login(
    server: HostileServer,
    config: IncomingConfig | None = None,
    memo: LetterMemo | None = None,
    limit: float = 5.0,
) -> Pop3Session:
    clock = PhaseClock(limit=limit)
    connected = await server.connect(clock)
    config = config or incoming(server.port)
    return await open_session(config, connected, clock, SIGNER, memo if memo is not None else LetterMemo())


async def fails_to_login(handler: Callable[[Peer], Awaitable[None]], **options: object) -> ProbeError:
    async with serve(handler) as server:
        config = incoming(server.port, **options)  # type: ignore[arg-type]
        with pytest.raises(ProbeError) as caught:
            await login(server, config, limit=5.0)
        await server.finished()
    return caught.value


# --- the happy path against the fake ---------------------------------------------------------------


async def test_finds_its_letter_and_deletes_only_it(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    ours, other_probe = SIGNER.new_token(), SIGNER.new_token()
    box.letters.update({"a": foreign_letter(), "b": letter(ours), "c": letter(other_probe), "d": foreign_letter(".x")})
    memo = LetterMemo()
    session = await login(server, memo=memo)
    found = await session.find({ours.value})
    assert found == [FoundLetter(token=ours, ref="b", server_time=1764160380.0)]
    # Foreign letters are remembered as such; another probe's letter (it may still be in flight) with its token.
    assert memo.letters == {"a": None, "c": Recognised(other_probe), "d": None}
    await session.delete(found)
    await server.finished()
    assert set(box.letters) == {"a", "c", "d"}
    assert [c for c in box.commands if c.startswith(("DELE", "QUIT"))] == ["DELE 2", "QUIT"]


async def test_memo_means_foreign_headers_are_read_once(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    box.letters.update({"a": foreign_letter(), "b": foreign_letter()})
    memo = LetterMemo({"gone": None})  # a letter deleted meanwhile: forgotten, so the memo cannot grow forever
    for expected_tops in (2, 0):
        session = await login(server, memo=memo)
        assert await session.find({SIGNER.new_token().value}) == []
        assert session.commands_sent["TOP"] == expected_tops
        assert memo.letters == {"a": None, "b": None}
        await session.close()


async def test_duplicate_uidl_is_never_found_nor_deleted() -> None:
    token = SIGNER.new_token()

    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        for reply in (b"+OK\r\n", b"+OK\r\n", b"+OK\r\n1 same\r\n2 same\r\n.\r\n", b"+OK bye\r\n"):
            await peer.line()
            await peer.send(reply)
        await peer.until_eof()

    async with serve(handler) as server:
        session = await login(server)
        # Which of the two would DELE remove? Neither is looked at, so neither can be deleted.
        assert await session.find({token.value}) == []
        assert session.commands_sent["TOP"] == 0
        await session.close()


async def test_letter_expunged_between_uidl_and_top_is_skipped() -> None:
    """Another client deleted message 1 after our UIDL: skip it, still find ours."""
    token = SIGNER.new_token()
    ours = letter(token).replace(b"\r\n.", b"\r\n..")

    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        # The newest letter first: LIST 2, TOP 2, then LIST 1 and TOP 1.
        replies = (
            b"+OK\r\n",
            b"+OK\r\n",
            b"+OK\r\n1 gone\r\n2 mine\r\n.\r\n",
            b"+OK 2 900\r\n",
            b"+OK\r\n" + ours.split(b"\r\n\r\n")[0] + b"\r\n\r\n.\r\n",
            b"+OK 1 500\r\n",
            b"-ERR Message 1 expunged.\r\n",
        )
        for reply in replies:
            await peer.line()
            await peer.send(reply)
        await peer.until_eof()

    async with serve(handler) as server:
        session = await login(server)
        found = await session.find({token.value})
        assert [letter.ref for letter in found] == ["mine"]
        assert "gone" not in session.memo  # not known to be foreign: it is simply gone
        await session.close()


async def test_forged_token_is_not_ours(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    forged = Signer(b"another key").new_token()
    box.letters["f"] = letter(forged)
    session = await login(server)
    assert await session.find({forged.value}) == []
    await session.close()


async def test_multiline_replies_are_dot_unstuffed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.line()
        await peer.send(b"+OK\r\n..X-Dotted: 1\r\n..\r\n...\r\nplain\r\n\r\n.\r\n")
        await peer.line()
        await peer.send(b"+OK still in step\r\n")
        await peer.until_eof()

    async with serve(handler) as server:
        client = await Pop3Client.open(await server.connect(PhaseClock(limit=5)))
        lines = await client.multiline("TOP", "1", "0", limit=TOP_LIMIT, max_lines=10)
        assert await client.command("NOOP") == (True, "still in step")
        client.abort()
    # "." alone ends the reply; the server stuffed "." onto every line that starts with one.
    assert lines == [b".X-Dotted: 1", b".", b"..", b"plain", b""]


async def test_close_quits_politely_and_is_idempotent(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    session = await login(server)
    await session.close()
    await session.close()
    await server.finished()
    assert box.commands == ["USER probe", "PASS", "QUIT"]
    with pytest.raises(MailboxFailure):
        await session.find({"x"})


async def test_close_is_bounded_when_quit_goes_unanswered() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        for _ in ("USER", "PASS"):
            await peer.line()
            await peer.send(b"+OK\r\n")
        await peer.until_eof()  # QUIT arrives and is never answered

    async with serve(handler) as server:
        session = await login(server)
        start = time.monotonic()
        await asyncio.wait_for(session.close(), GOODBYE_SECONDS + 30)  # bounded, whatever the server does
        assert time.monotonic() - start >= GOODBYE_SECONDS  # it did wait for the goodbye
        await server.finished()
    assert server.peers[0].received.endswith(b"\r\nQUIT\r\n")


async def test_delete_refuses_letters_not_found_in_this_session(
    fake: tuple[FakeMailbox, HostileServer],
) -> None:
    box, server = fake
    token = SIGNER.new_token()
    box.letters["b"] = letter(token)
    first = await login(server)
    found = await first.find({token.value})
    await first.close()
    second = await login(server)
    with pytest.raises(MailboxFailure, match="not found in this session"):
        await second.delete(found)
    await second.close()
    await server.finished()
    assert "b" in box.letters
    assert not any(c.startswith("DELE") for c in box.commands)


async def test_failed_dele_drops_the_session_without_quit(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    one, two = SIGNER.new_token(), SIGNER.new_token()
    box.letters.update({"a": letter(one), "b": letter(two)})
    box.failing_dele = 2  # the first DELE succeeds: a QUIT now would commit half the deletion
    session = await login(server)
    found = await session.find({one.value, two.value})
    with pytest.raises(MailboxFailure, match="DELE"):
        await session.delete(found)
    await session.close()
    await server.finished()
    assert box.commands[-2:] == ["DELE 1", "DELE 2"]
    assert set(box.letters) == {"a", "b"}


async def test_refused_quit_means_not_deleted(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    token = SIGNER.new_token()
    box.letters["b"] = letter(token)
    box.replies["QUIT"] = b"-ERR some deleted messages not removed\r\n"
    session = await login(server)
    found = await session.find({token.value})
    with pytest.raises(MailboxFailure, match="not deleted"):
        await session.delete(found)
    await session.close()  # never raises, sends nothing more
    assert box.commands[-2:] == ["DELE 1", "QUIT"]


async def test_connection_lost_at_quit_means_maybe_not_deleted(fake: tuple[FakeMailbox, HostileServer]) -> None:
    box, server = fake
    token = SIGNER.new_token()
    box.letters["b"] = letter(token)
    box.replies["QUIT"] = b""  # hang up instead of answering
    session = await login(server)
    with pytest.raises(MailboxFailure, match="QUIT failed, the letters may not have been deleted"):
        await session.delete(await session.find({token.value}))
    await session.close()
    assert "b" in box.letters


async def test_wrong_password_is_auth_failure_without_the_password(
    fake: tuple[FakeMailbox, HostileServer],
) -> None:
    _, server = fake
    with pytest.raises(AuthFailure, match="Authentication failed") as caught:
        await login(server, incoming(server.port, password="wrong-" + PASSWORD))
    assert PASSWORD not in str(caught.value)
    assert caught.value.phase == "mailbox_login"


# --- hostile servers ----------------------------------------------------------------------------------


async def test_garbage_greeting() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"220 smtp.example.test ESMTP\r\n")
        await peer.until_eof()

    error = await fails_to_login(handler)
    assert isinstance(error, ProtocolFailure)
    assert "unexpected reply to the greeting" in error.message
    assert error.phase == "mailbox_login"


async def test_err_greeting_is_a_refusal() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"-ERR too many connections\r\n")
        await peer.until_eof()

    error = await fails_to_login(handler)
    assert isinstance(error, MailboxFailure)
    assert "too many connections" in error.message


async def test_hang_up_before_greeting() -> None:
    async def handler(peer: Peer) -> None:
        del peer

    error = await fails_to_login(handler)
    assert isinstance(error, ProtocolFailure)
    assert "connection closed by the server during the greeting" in error.message


async def test_almost_ok_is_not_ok() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OKAY\r\n")
        await peer.until_eof()

    assert isinstance(await fails_to_login(handler), ProtocolFailure)


async def test_password_echoed_by_server_is_masked() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        await peer.line()
        await peer.send(b"+OK\r\n")
        password = (await peer.line()).split(b" ", 1)[1]
        await peer.send(b"-ERR bad password " + password + b"\r\n")
        await peer.until_eof()

    error = await fails_to_login(handler)
    assert isinstance(error, AuthFailure)
    assert PASSWORD not in str(error)
    assert "bad password ********" in error.message


async def test_user_refused_is_auth_failure() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        await peer.line()
        await peer.send(b"-ERR [AUTH] Plaintext authentication disallowed\r\n")
        await peer.until_eof()

    error = await fails_to_login(handler)
    assert isinstance(error, AuthFailure)
    assert "USER" in error.message


@pytest.mark.parametrize(
    ("user", "password"), [("probe\r\nDELE 1", PASSWORD), ("probe", PASSWORD + "\n"), ("a\0", "x")]
)
async def test_line_breaks_in_arguments_are_refused_before_sending(user: str, password: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        await peer.until_eof()

    async with serve(handler) as server:
        with pytest.raises(ProtocolFailure, match="CR, LF or NUL") as caught:
            await login(server, incoming(server.port, user=user, password=password))
        await server.finished()
    assert server.peers[0].received == b""  # not even USER went out
    assert PASSWORD not in str(caught.value)


async def test_dropped_mid_uidl() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        for _ in ("USER", "PASS"):
            await peer.line()
            await peer.send(b"+OK\r\n")
        await peer.line()
        await peer.send(b"+OK\r\n1 abc\r\n2 de")  # and hang up

    async with serve(handler) as server:
        session = await login(server)
        with pytest.raises(ProtocolFailure, match="connection closed by the server during UIDL"):
            await session.find({"x"})
        await session.close()


async def test_malformed_uidl_line() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        for reply in (b"+OK\r\n", b"+OK\r\n", b"+OK\r\n1 abc\r\nnonsense\r\n.\r\n"):
            await peer.line()
            await peer.send(reply)
        await peer.until_eof()

    async with serve(handler) as server:
        session = await login(server)
        with pytest.raises(ProtocolFailure, match="malformed UIDL line"):
            await session.find({"x"})
        await session.close()
        await server.finished()
    assert b"QUIT" not in server.peers[0].received  # out of step: no QUIT, no deletion


async def test_endless_line_fails_fast_in_bounded_memory() -> None:
    total = 10 * 1024 * 1024
    chunk = b"+" * 65536

    async def handler(peer: Peer) -> None:
        for _ in range(total // len(chunk)):  # 10 MiB without a newline, as long as the client reads
            await peer.send(chunk)

    tracemalloc.start()
    try:
        start = time.monotonic()
        error = await fails_to_login(handler)
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(error, ProtocolFailure)
    assert f"line longer than {LINE_LIMIT} bytes" in error.message
    assert elapsed < 5.0  # it gives up at the first 64 KiB, not after 10 MiB
    assert peak < 2 * 1024 * 1024


def endless_reply(command: bytes, line: bytes, count: int) -> Callable[[Peer], Awaitable[None]]:
    """Log in, list one letter, then answer ``command`` with ``count`` copies of ``line``."""

    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        while (request := await peer.line()) and not request.startswith(command):
            # LIST: a lie about the size, so that the caps on TOP are what stops it
            replies = {b"UIDL": b"+OK\r\n1 abc\r\n.\r\n", b"LIST 1": b"+OK 1 100\r\n"}
            await peer.send(replies.get(request, b"+OK\r\n"))
        await peer.send(b"+OK\r\n")
        batch = line * 1000
        for _ in range(count // 1000 + 1):
            await peer.send(batch)
        await peer.until_eof()

    return handler


@pytest.mark.parametrize(
    ("command", "line", "count"),
    [
        (b"TOP", b"X-Filler: " + b"x" * 1000 + b"\r\n", TOP_LIMIT // 1000),  # too many bytes
        (b"TOP", b"X\r\n", TOP_LINES),  # few bytes, too many lines
        (b"UIDL", b"1 a\r\n", UIDL_LINES),
    ],
)
async def test_endless_multiline_reply_is_capped(command: bytes, line: bytes, count: int) -> None:
    async with serve(endless_reply(command, line, count)) as server:
        session = await login(server)
        with pytest.raises(ProtocolFailure, match=f"reply to {command.decode()} longer than"):
            await session.find({"x"})
        await session.close()


async def test_tarpit_times_out() -> None:
    async def handler(peer: Peer) -> None:
        await peer.until_eof()  # accepts, never speaks

    async with serve(handler) as server:
        for security, phase in ((Security.NONE, "mailbox_login"), (Security.TLS, "mailbox_tls")):
            start = time.monotonic()
            with pytest.raises(ServerTimeout) as caught:
                await login(server, incoming(server.port, security), limit=0.5)
            assert caught.value.phase == phase
            assert 0.5 <= time.monotonic() - start < 3.0


async def test_tarpit_after_login_times_out_in_find() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        for _ in ("USER", "PASS"):
            await peer.line()
            await peer.send(b"+OK\r\n")
        await peer.until_eof()

    async with serve(handler) as server:
        clock = PhaseClock(limit=0.5)
        session = await open_session(incoming(server.port), await server.connect(clock), clock, SIGNER, LetterMemo())
        with pytest.raises(ServerTimeout):
            async with clock.phase(Phase.MAILBOX_SEARCH):
                await session.find({"x"})
        await session.close()
        await server.finished()
    assert b"QUIT" not in server.peers[0].received


def stls_server(capabilities: bytes, stls_reply: bytes, after: bytes = b"") -> Callable[[Peer], Awaitable[None]]:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK\r\n")
        await peer.line()
        await peer.send(b"+OK\r\n" + capabilities + b".\r\n")
        if await peer.line() == b"STLS":
            await peer.send(stls_reply)
            if after:
                await peer.reader.read(1)  # the client's TLS hello: answer it with ``after``
                await peer.send(after)
        await peer.until_eof()

    return handler


async def test_no_stls_in_capa() -> None:
    error = await fails_to_login(stls_server(b"USER\r\nUIDL\r\n", b""), security=Security.STARTTLS)
    assert isinstance(error, TLSFailure)
    assert error.message == "server does not offer STLS"
    assert error.phase == "mailbox_tls"


async def test_stls_refused() -> None:
    error = await fails_to_login(
        stls_server(b"STLS\r\n", b"-ERR TLS support isn't enabled\r\n"), security=Security.STARTTLS
    )
    assert isinstance(error, TLSFailure)
    assert "server does not offer STLS" in error.message


async def test_no_tls_after_stls() -> None:
    error = await fails_to_login(
        stls_server(b"STLS\r\n", b"+OK Begin TLS\r\n", b"this is not TLS at all\r\n" * 10),
        security=Security.STARTTLS,
    )
    assert isinstance(error, TLSFailure)


async def test_stls_injection_is_refused() -> None:
    # Clear-text replies smuggled in with the STLS answer must never be read as if they came over TLS.
    error = await fails_to_login(
        stls_server(b"STLS\r\n", b"+OK Begin TLS\r\n+OK injected\r\n"), security=Security.STARTTLS
    )
    assert isinstance(error, ProtocolFailure)
    assert "before TLS began" in error.message


async def test_tls_to_a_clear_text_server() -> None:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK clear text POP3\r\n")
        await peer.until_eof()

    error = await fails_to_login(handler, security=Security.TLS)
    assert isinstance(error, TLSFailure)
    assert error.phase == "mailbox_tls"


def test_received_time() -> None:
    top = (
        b"Received: from a by b; Wed, 26 Nov 2025 12:33:00 +0000 (UTC)\r\n"
        b"Received: from x by a; Tue, 1 Jan 2019 00:00:00 +0000\r\n"
    )
    assert received_time(top + b"\r\n") == 1764160380.0
    assert received_time(b"Received: by b; Wed, 26 Nov 2025 12:33:00 -0000\r\n\r\n") == 1764160380.0
    assert received_time(b"Received: from a; yesterday\r\n\r\n") is None
    assert received_time(b"Subject: none\r\n\r\n") is None


# --- the real Dovecot -------------------------------------------------------------------------------

USER = "user3"  # ours alone: other tests use the other users


@pytest.fixture
def mailbox(rig: MailRig) -> MailRig:
    rig.clear_mailbox(USER)
    return rig


def dovecot(rig: MailRig, security: Security, **options: Any) -> IncomingConfig:
    port = rig.ports.pop3s if security is Security.TLS else rig.ports.pop3
    settings: dict[str, Any] = {
        "user": rig.address(USER),
        "password": rig.password(USER),
        "host": rig.hostname,  # the certificate's name, though we connect to 127.0.0.1
        "ca_file": str(rig.ca_file),
    }
    return incoming(port, security, **{**settings, **options})


async def dovecot_session(
    rig: MailRig, security: Security = Security.STARTTLS, memo: LetterMemo | None = None, **options: Any
) -> Pop3Session:
    config = dovecot(rig, security, **options)
    clock = PhaseClock(limit=10)
    async with clock.phase(Phase.MAILBOX_CONNECT, on_timeout=ConnectFailure):
        connected = await net.connect_any(["127.0.0.1"], config.server.port)
    return await open_session(config, connected, clock, SIGNER, memo if memo is not None else LetterMemo())


def stored(rig: MailRig) -> list[bytes]:
    return sorted(path.read_bytes() for path in rig.messages(USER))


@pytest.mark.parametrize("security", [Security.NONE, Security.STARTTLS, Security.TLS])
async def test_dovecot_login_each_way(mailbox: MailRig, security: Security) -> None:
    session = await dovecot_session(mailbox, security)
    assert session.address == "127.0.0.1"
    if security is Security.NONE:
        assert session.tls is None
    else:
        assert session.tls is not None and session.tls.not_after is not None
        assert session.tls.not_after > time.time() + 300 * 86400  # the rig's cert: one year
        assert session.tls.version.startswith("TLSv1.")
    assert await session.find({SIGNER.new_token().value}) == []
    await session.close()
    await session.close()


async def test_dovecot_wrong_password(mailbox: MailRig) -> None:
    wrong = "not-" + mailbox.password(USER)
    with pytest.raises(AuthFailure) as caught:
        await dovecot_session(mailbox, password=wrong)
    assert caught.value.phase == "mailbox_login"
    assert wrong not in str(caught.value)
    assert mailbox.password(USER) not in str(caught.value)


@pytest.mark.parametrize("security", [Security.STARTTLS, Security.TLS])
@pytest.mark.parametrize(
    ("options", "complaint"),
    [({"ca_file": None}, "certificate verification failed"), ({"host": "pop.example.org"}, "Hostname mismatch")],
)
async def test_dovecot_untrusted_certificate(
    mailbox: MailRig, security: Security, options: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(TLSFailure, match=complaint) as caught:
        await dovecot_session(mailbox, security, **options)
    assert caught.value.phase == "mailbox_tls"


async def test_dovecot_line_break_in_user_name(mailbox: MailRig) -> None:
    mailbox.deliver_raw(USER, foreign_letter())
    before = stored(mailbox)
    with pytest.raises(ProtocolFailure, match="CR, LF or NUL"):
        await dovecot_session(mailbox, user=mailbox.address(USER) + "\r\nDELE 1")
    assert stored(mailbox) == before


async def test_dovecot_finds_and_deletes_only_its_letter(mailbox: MailRig) -> None:
    ours, in_flight = SIGNER.new_token(), SIGNER.new_token()
    forged = Signer(b"guessed key").new_token()
    others = [
        foreign_letter(),
        # A forged token in Subject and the probe header: token-shaped, wrongly signed.
        letter(forged),
        foreign_letter(subject=f"re: {ours.value[:-1]}0", extra=f"X-Mail-Roundtrip-Probe: {forged.value}\r\n"),
        letter(in_flight),  # another probe's letter: ours, but not looked for now
    ]
    mailbox.deliver_raw(USER, others[0])
    mailbox.deliver_raw(USER, others[1])
    mailbox.deliver_raw(USER, letter(ours))
    mailbox.deliver_raw(USER, others[2])
    mailbox.deliver_raw(USER, others[3])

    memo = LetterMemo()
    session = await dovecot_session(mailbox, memo=memo)
    found = await session.find({ours.value})
    assert [letter.token for letter in found] == [ours]
    assert found[0].server_time == 1764160380.0  # the topmost Received header's date
    # The foreign and forged ones as foreign; the in-flight probe's letter as ours, with its token.
    assert sorted(memo.letters.values(), key=str) == [None, None, None, Recognised(in_flight)]
    assert found[0].ref not in memo
    await session.delete(found)
    assert sorted(others) == stored(mailbox)  # the others byte for byte

    again = await dovecot_session(mailbox, memo=memo)
    assert [letter.token for letter in await again.find({ours.value, in_flight.value})] == [in_flight]
    # memo: the foreign letters' headers were not read again; the in-flight one is read to verify it here
    assert again.commands_sent["TOP"] == 1
    await again.close()
    assert sorted(others) == stored(mailbox)


async def test_dovecot_uidl_is_stable_across_sessions(mailbox: MailRig) -> None:
    token = SIGNER.new_token()
    mailbox.deliver_raw(USER, letter(token))
    refs = []
    for security in (Security.NONE, Security.TLS):
        session = await dovecot_session(mailbox, security)
        refs.append([found.ref for found in await session.find({token.value})])
        await session.close()
    assert refs[0] == refs[1]
    assert len(refs[0]) == 1


async def test_dovecot_aborted_session_deletes_nothing(mailbox: MailRig) -> None:
    token = SIGNER.new_token()
    mailbox.deliver_raw(USER, letter(token))
    before = stored(mailbox)
    session = await dovecot_session(mailbox)
    found = await session.find({token.value})

    async def connection_dies_instead_of_quit() -> tuple[bool, str]:
        session.client.abort()
        raise ProtocolFailure("connection closed by the server during QUIT")

    session.client.quit = connection_dies_instead_of_quit  # type: ignore[method-assign]
    with pytest.raises(MailboxFailure, match="may not have been deleted"):
        await session.delete(found)
    assert session.commands_sent["DELE"] == 1
    await session.close()

    # Dovecot only expunges on QUIT: the letter is still there, and found again.
    assert stored(mailbox) == before
    again = await dovecot_session(mailbox)
    assert [f.ref for f in await again.find({token.value})] == [f.ref for f in found]
    await again.delete(await again.find({token.value}))
    assert stored(mailbox) == []


async def test_dovecot_server_time_is_the_lmtp_arrival(mailbox: MailRig) -> None:
    token = SIGNER.new_token()
    raw = build_letter(token, "monitor@example.test", mailbox.address(USER), "dev", "task")

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", mailbox.ports.smtp, timeout=10) as smtp:
            smtp.sendmail("monitor@example.test", [mailbox.address(USER)], raw)

    sent = time.time()
    await asyncio.to_thread(send)
    await asyncio.to_thread(mailbox.wait_for, lambda: mailbox.messages(USER), 20.0, "delivery to user3")
    session = await dovecot_session(mailbox)
    (found,) = await session.find({token.value})
    await session.close()
    # Dovecot's LMTP adds the topmost Received header, dated to the second.
    assert found.server_time is not None
    assert int(sent) <= found.server_time <= time.time()

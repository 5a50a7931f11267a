"""The IMAP session logic against a scripted in-process server (tests/imapfake.py), without the rig:
greetings, LOGIN, SELECT, finding and deleting by token, IDLE, news announced during a command,
BYE, hang-ups and odd replies. The same logic against the real Dovecot: test_roundtrip, test_faults."""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aioimaplib
import pytest

from exporter.auth.credentials import Credentials
from exporter.clients.imap4 import Imap4Client
from exporter.config.model import (
    Cleanup,
    IncomingConfig,
    Mechanism,
    Protocol,
    Secret,
    Security,
    ServerConfig,
    TLSOptions,
)
from exporter.legs import imap
from exporter.legs.memo import LetterMemo
from exporter.letter.compose import build_letter
from exporter.letter.token import Signer, Token
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import AuthFailure, MailboxFailure, ProtocolFailure, TLSFailure
from tests.hostile import HostileServer, serve
from tests.imapfake import TAG, FakeImap
from tests.imaptrash import FakeImapWithTrash

SIGNER = Signer(b"imap-session-tests")
PASSWORD = "fake-Pa55word"
DEADLINE = 20.0  # bounds every session step: a hang fails the test instead of stalling the suite


def config(port: int, security: Security = Security.NONE, cleanup: Cleanup | None = None) -> IncomingConfig:
    return IncomingConfig(
        server=ServerConfig(
            host="127.0.0.1",
            port=port,
            security=security,
            tls=TLSOptions(),
            user="probe@example.test",
            password=Secret(PASSWORD),
        ),
        protocol=Protocol.IMAP,
        cleanup=cleanup,
    )


def probe_letter(token: Token | None = None) -> tuple[Token, bytes]:
    token = token or SIGNER.new_token()
    return token, build_letter(token, "monitor@example.test", "probe@example.test", "dev", "task")


FOREIGN = b"From: someone@example.test\r\nSubject: hello\r\nMessage-ID: <1@example.test>\r\n\r\nHi\r\n"


@dataclass
class Running:
    fake: FakeImap
    server: HostileServer
    memo: LetterMemo = field(default_factory=LetterMemo)  # shared by the sessions, as a task's Mailbox does

    async def open(self, security: Security = Security.NONE, login: Credentials | None = None) -> imap.ImapSession:
        clock = PhaseClock(DEADLINE)
        connected = await self.server.connect(clock)
        session = imap.open_session(config(self.server.port, security), connected, clock, SIGNER, self.memo, login)
        return await asyncio.wait_for(session, DEADLINE)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    fake = FakeImap(password=PASSWORD)
    async with serve(fake) as server:
        yield Running(fake, server)


async def test_finds_its_letter_by_token_and_deletes_only_it(running: Running) -> None:
    token, raw = probe_letter()
    running.fake.add(FOREIGN)
    uid = running.fake.add(raw, datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    running.fake.add(probe_letter()[1])  # another probe's letter, not awaited
    session = await running.open()
    found = await session.find([token.value])
    assert [(letter.token.value, letter.ref) for letter in found] == [(token.value, str(uid))]
    assert found[0].server_time == datetime(2026, 11, 26, 12, 0, tzinfo=UTC).timestamp()
    await session.delete(found)
    await session.close()
    assert uid not in running.fake.uids() and len(running.fake.letters) == 2
    assert any(command.startswith("UID EXPUNGE") for command in running.fake.commands)


async def test_a_forged_token_is_not_ours(running: Running) -> None:
    token, raw = probe_letter()
    forged = raw.replace(token.value.encode(), token.value[:-4].encode() + b"0000")
    running.fake.add(forged)
    session = await running.open()
    assert await session.find([token.value, token.value[:-4] + "0000"]) == []
    await session.close()


async def test_without_uidplus_the_letter_is_only_flagged(running: Running) -> None:
    running.fake.capabilities = ("IMAP4rev1", "IDLE")
    token, raw = probe_letter()
    running.fake.add(raw)
    running.fake.add(FOREIGN)
    running.fake.letters[1].flags.add("\\Deleted")  # someone else's, marked for deletion by them
    session = await running.open()
    await session.delete(await session.find([token.value]))
    await session.close()
    assert len(running.fake.letters) == 2  # nothing expunged: a plain EXPUNGE would take the other one too
    assert "\\Deleted" in running.fake.letters[0].flags
    assert not any("EXPUNGE" in command for command in running.fake.commands)


@pytest.mark.parametrize(
    ("greeting", "error", "text"),
    [
        (b"* BYE Too many connections\r\n", MailboxFailure, "Too many connections"),
        (b"220 smtp.example.test ESMTP\r\n", ProtocolFailure, "not an IMAP greeting"),
    ],
)
async def test_a_greeting_that_is_not_ok_ends_the_session(
    running: Running, greeting: bytes, error: type[Exception], text: str
) -> None:
    running.fake.greeting = greeting
    with pytest.raises(error, match=text) as raised:
        await running.open()
    assert getattr(raised.value, "phase", None) == "mailbox_login"


async def test_a_rejected_login_is_auth_with_the_servers_words(running: Running) -> None:
    running.fake.password = "another one"
    with pytest.raises(AuthFailure, match="AUTHENTICATIONFAILED"):
        await running.open()


async def test_logindisabled_sends_no_password(running: Running) -> None:
    running.fake.capabilities = ("IMAP4rev1", "LOGINDISABLED")
    with pytest.raises(AuthFailure, match="LOGINDISABLED"):
        await running.open()
    assert not any(command.startswith("LOGIN") for command in running.fake.commands)


async def test_starttls_not_offered_is_tls(running: Running) -> None:
    with pytest.raises(TLSFailure, match="does not offer STARTTLS"):
        await running.open(Security.STARTTLS)


async def test_a_refused_select_is_mailbox(running: Running) -> None:
    running.fake.replies["SELECT"] = TAG + b" NO Mailbox doesn't exist: INBOX\r\n"
    with pytest.raises(MailboxFailure, match=r"SELECT 'INBOX' failed: .*doesn't exist"):
        await running.open()


async def test_odd_search_reply_is_mailbox_with_sanitised_text(running: Running) -> None:
    running.fake.replies["UID SEARCH"] = TAG + b" NO \x1b[31mSearch\x07 failed\r\n"
    session = await running.open()
    with pytest.raises(MailboxFailure, match="UID SEARCH failed") as raised:
        await session.find(["mrt-x"])
    await session.close()
    assert not any(ord(c) < 32 for c in str(raised.value))


async def test_bye_mid_session_is_protocol_with_the_goodbye(running: Running) -> None:
    running.fake.replies["UID SEARCH"] = b"* BYE Server shutting down.\r\n"
    running.fake.hang_up_after = frozenset({"UID SEARCH"})
    session = await running.open()
    with pytest.raises(ProtocolFailure, match="Server shutting down"):
        await asyncio.wait_for(session.find(["mrt-x"]), DEADLINE)
    await session.close()


async def test_a_hang_up_mid_fetch_is_protocol(running: Running) -> None:
    token, raw = probe_letter()
    running.fake.add(raw)
    running.fake.replies["UID FETCH"] = b""
    session = await running.open()
    with pytest.raises(ProtocolFailure, match="connection closed by the server during UID FETCH"):
        await asyncio.wait_for(session.find([token.value]), DEADLINE)
    await session.close()


async def test_news_during_search_skips_idle(running: Running) -> None:
    """aioimaplib drops an EXISTS that arrives during SEARCH; the session must still act on it."""
    running.fake.before["UID SEARCH"] = b"* 1 EXISTS\r\n"
    session = await running.open()
    await session.find(["mrt-x"])
    await asyncio.wait_for(session.pause(DEADLINE * 10), DEADLINE)
    await session.close()
    assert "IDLE" not in running.fake.commands


async def test_idle_returns_when_the_server_announces_a_letter(running: Running) -> None:
    token, raw = probe_letter()
    session = await running.open()
    assert await session.find([token.value]) == []
    waiting = asyncio.ensure_future(session.pause(DEADLINE * 10))
    await asyncio.wait_for(running.fake.idling.wait(), DEADLINE)
    running.fake.add(raw)
    await asyncio.wait_for(waiting, DEADLINE)
    assert [letter.token for letter in await session.find([token.value])] == [token]
    await session.close()


async def test_idle_without_news_ends_with_done_and_the_session_goes_on(running: Running) -> None:
    session = await running.open()
    await session.find(["mrt-x"])  # what SELECT announced is seen: the wait needs news after it
    await asyncio.wait_for(session.pause(0.2), DEADLINE)
    token, raw = probe_letter()
    running.fake.add(raw)
    assert len(await session.find([token.value])) == 1
    await session.close()
    assert "IDLE" in running.fake.commands
    assert running.fake.commands[-1] == "LOGOUT"


async def test_without_idle_waiting_is_only_time(running: Running) -> None:
    running.fake.capabilities = ("IMAP4rev1", "UIDPLUS")
    session = await running.open()
    await session.find(["mrt-x"])
    await asyncio.wait_for(session.pause(0.05), DEADLINE)
    await session.close()
    assert "IDLE" not in running.fake.commands


def test_the_adapter_shadows_no_method_aioimaplib_calls_on_itself() -> None:
    """Imap4Client subclasses aioimaplib.IMAP4: a method of ours with the name of one that aioimaplib
    calls on ``self`` (``idle_start`` calls ``self.idle()``) would silently replace it. The one
    override meant: create_client, to connect over our own socket."""
    called = set(re.findall(r"self\.(\w+)\(", inspect.getsource(aioimaplib.IMAP4)))
    ours = {name for name in vars(Imap4Client) if not name.startswith("__")}
    assert ours & called == {"create_client"}


# --- AUTHENTICATE with a bearer token ----------------------------------------------------------------

TOKEN = "fake-access-token-0123"
XOAUTH2 = Credentials("probe@example.test", Secret(TOKEN), Mechanism.XOAUTH2)


@pytest.mark.parametrize("sasl_ir", [True, False])
async def test_authenticate_inline_or_after_the_plus(running: Running, sasl_ir: bool) -> None:
    """SASL-IR (RFC 4959) puts the message on the command line; without it, it follows the "+".
    The capabilities the OK announces count from then on (here UIDPLUS: the delete expunges)."""
    fake = running.fake
    fake.capabilities = ("IMAP4rev1", "AUTH=XOAUTH2", *(["SASL-IR"] if sasl_ir else []))
    fake.token, fake.authenticated_capabilities = TOKEN, ("IMAP4rev1", "UIDPLUS")
    token, raw = probe_letter()
    fake.add(raw)
    session = await running.open(login=XOAUTH2)
    await session.delete(await session.find([token.value]))
    await session.close()
    (authenticate,) = [command for command in fake.commands if command.startswith("AUTHENTICATE")]
    assert (authenticate == "AUTHENTICATE XOAUTH2") is not sasl_ir
    assert len(fake.sasl_answers) == (0 if sasl_ir else 1)
    assert fake.letters == [] and any(command.startswith("UID EXPUNGE") for command in fake.commands)


@pytest.mark.parametrize(("mechanism", "abort"), [(Mechanism.XOAUTH2, b""), (Mechanism.OAUTHBEARER, b"AQ==")])
async def test_a_refused_token_is_auth_with_the_decoded_challenge(
    running: Running, mechanism: Mechanism, abort: bytes
) -> None:
    running.fake.capabilities = ("IMAP4rev1", "SASL-IR", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER")
    running.fake.token = "another-token"
    refused: list[bool] = []
    login = Credentials("probe@example.test", Secret(TOKEN), mechanism, lambda: refused.append(True))
    with pytest.raises(AuthFailure) as raised:
        await running.open(login=login)
    assert "(status 401, schemes bearer, scope mail): Authentication failed." in str(raised.value)
    assert running.fake.sasl_answers == [abort]  # RFC 7628 3.2.3: a dummy answer ends the exchange
    assert refused == [True]  # a cached token is dropped


async def test_a_server_that_challenges_for_ever_is_cut_off(running: Running) -> None:
    running.fake.capabilities = ("IMAP4rev1", "SASL-IR", "AUTH=XOAUTH2")
    running.fake.challenge_again = True
    with pytest.raises(ProtocolFailure):
        await running.open(login=XOAUTH2)
    assert running.fake.sasl_answers == [b"", b"*", b"*"]  # the abort answer, then cancel


async def test_a_mechanism_not_offered_is_not_tried(running: Running) -> None:
    running.fake.capabilities = ("IMAP4rev1", "SASL-IR", "AUTH=PLAIN")
    with pytest.raises(AuthFailure, match="server does not offer AUTHENTICATE XOAUTH2"):
        await running.open(login=XOAUTH2)
    assert not any(command.startswith(("AUTHENTICATE", "LOGIN")) for command in running.fake.commands)


# --- cleanup: trash, where Dovecot cannot show the fallbacks (tests/test_trash.py: the real thing) ----


@pytest.mark.parametrize("capabilities", [("UIDPLUS",), (), ("MOVE",)], ids=["copy-uidplus", "copy", "move"])
async def test_trash_fallbacks(capabilities: tuple[str, ...]) -> None:
    """Without MOVE: COPY, then \\Deleted and UID EXPUNGE of exactly that UID, then the copy expunged in
    the Trash by the UID COPYUID gave it. Without UIDPLUS no EXPUNGE at all (a plain one could take
    others' letters) and, without COPYUID, the copy stays in the Trash."""
    fake = FakeImapWithTrash(password=PASSWORD, capabilities=("IMAP4rev1", *capabilities))
    token, raw = probe_letter()
    fake.add(FOREIGN)
    fake.inbox[0].flags.add("\\Deleted")  # someone else's, marked for deletion by them
    mine = fake.add(raw)
    async with serve(fake) as server:
        clock = PhaseClock(DEADLINE)
        incoming = config(server.port, cleanup=Cleanup.TRASH)
        session = await imap.open_session(incoming, await server.connect(clock), clock, SIGNER, LetterMemo())
        await session.delete(await session.find([token.value]))
        await session.close()
    sent = fake.commands[fake.commands.index('LIST "" "*"') + 1 : -1]  # up to LOGOUT
    copy, deleted = mine + 1, "+FLAGS.SILENT (\\Deleted)"
    copied = [f'UID COPY {mine} "Trash"', f"UID STORE {mine} {deleted}"]
    in_trash = ['SELECT "Trash"', f"UID STORE {copy} {deleted}", f"UID EXPUNGE {copy}", 'SELECT "INBOX"']
    expected = {
        "copy-uidplus": [*copied, f"UID EXPUNGE {mine}", *in_trash],
        "copy": copied,
        "move": [f'UID MOVE {mine} "Trash"'],
    }
    kind = "move" if "MOVE" in capabilities else "copy-uidplus" if capabilities else "copy"
    assert sent == expected[kind]
    assert fake.inbox[0].raw == FOREIGN and "\\Deleted" in fake.inbox[0].flags  # never expunged
    assert [letter.uid for letter in fake.inbox] == ([1, mine] if kind == "copy" else [1])
    assert [letter.uid for letter in fake.trash] == ([] if kind == "copy-uidplus" else [copy])

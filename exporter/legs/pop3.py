"""The POP3 mailbox leg: find probe letters by token and delete them, over clients.pop3.

It only needs USER/PASS, UIDL, LIST n, TOP n 0, DELE and QUIT. A hostile or broken server must not
make us delete letters that are not ours (we DELE only message numbers from this session's own UIDL
listing, for letters whose token we verified) or read without bound (every listing and reply is
capped in bytes and in lines: many tiny lines cost far more memory than their bytes).

POP3 sees only the mail present at login, so a session is a snapshot: Pop3Mailbox logs in again
for each look. Deletions are committed only by QUIT; a session that ends any other way deletes
nothing, which is why we never send QUIT after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator
from email.parser import BytesHeaderParser

from exporter.auth import sasl
from exporter.auth.credentials import Credentials, login_of
from exporter.clients.pop3 import Pop3Client
from exporter.config.model import IncomingConfig, Security
from exporter.legs.mailbox import EXAMINE_BATCH, Access, FoundLetter, wanted
from exporter.legs.memo import LetterMemo
from exporter.letter.fields import field_date
from exporter.letter.recognise import BOUNCE_BYTES, Recognised, is_delivery_report, recognise
from exporter.letter.token import Signer
from exporter.net.connect import GOODBYE_SECONDS, Connected
from exporter.net.tls import GREETING_HINT, TLSFacts, client_context, tls_facts
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import AuthFailure, MailboxFailure, ProtocolFailure, TLSFailure
from exporter.probe.phases import Phase

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

_UIDL_LINE = re.compile(rb"([1-9][0-9]{0,9}) ([\x21-\x7e]{1,70})")
_LIST_REPLY = re.compile(r"[1-9][0-9]{0,9} ([0-9]{1,12})\b.*")


class Pop3Session:
    """An authenticated POP3 session: the MailboxSession of legs.mailbox.

    ``memo`` is shared by the caller across the sessions of one mailbox, so each letter's headers
    are read only once: foreign ones for good, ours until one of them is wanted (and then only to
    verify it in the session that deletes it).
    """

    def __init__(self, client: Pop3Client, signer: Signer, memo: LetterMemo, address: str) -> None:
        self.client = client
        self.signer = signer
        self.memo = memo
        self.address = address
        self.tls: TLSFacts | None = None
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

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """QUIT if the session is in a clean state, else just drop it (deleting nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            # Best effort: the server may be gone already, and then there is nothing to tell it.
            with contextlib.suppress(Exception):
                if not self.client.busy and not self._deleting:
                    async with asyncio.timeout(GOODBYE_SECONDS):
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
        return FoundLetter(ours.token, uidl, received_time(headers), ours.bounce, headers=headers)

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
    return field_date(str(received[0]).rpartition(";")[2]) if received else None


async def open_session(
    config: IncomingConfig,
    connected: Connected,
    clock: PhaseClock,
    signer: Signer,
    memo: LetterMemo,
    credentials: Credentials | None = None,
) -> Pop3Session:
    """TLS, greeting and login on a connected socket, in the phases IMAP uses: the implicit TLS
    handshake in mailbox_tls, the greeting in mailbox_login (with the hint about implicit-TLS ports
    unless TLS came first), STLS and its handshake in mailbox_tls, USER/PASS (or AUTH with a token)
    in mailbox_login. Without ``credentials``, the configured password."""
    server = config.server
    implicit = server.security is Security.TLS
    context = client_context(server.tls)
    client: Pop3Client | None = None
    try:
        if implicit:
            async with clock.phase(Phase.MAILBOX_TLS):
                client = await Pop3Client.open(connected, context, server.host)
        else:
            client = await Pop3Client.open(connected)
        async with clock.phase(Phase.MAILBOX_LOGIN, hint="" if implicit else GREETING_HINT):
            await client.greeting()
        if server.security is Security.STARTTLS:
            async with clock.phase(Phase.MAILBOX_TLS):
                await _start_tls(client, context, server.host)
        session = Pop3Session(client, signer, memo, connected.address)
        if server.security is not Security.NONE:
            session.tls = tls_facts(client.ssl_object())
        async with clock.phase(Phase.MAILBOX_LOGIN, accumulate=True):
            await _login(client, login_of(server, credentials), config)
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


async def _capabilities(client: Pop3Client) -> dict[str, list[str]]:
    """CAPA's capabilities, upper case, each with its arguments (SASL's mechanisms); empty if the
    server has no CAPA (RFC 1939 only)."""
    ok, _ = await client.command("CAPA")
    if not ok:
        return {}
    lines = await client.data_lines("CAPA", CAPA_LIMIT, CAPA_LINES)
    words = [line.decode("ascii", "replace").upper().split() for line in lines]
    return {capability[0]: capability[1:] for capability in words if capability}


async def _login(client: Pop3Client, credentials: Credentials, config: IncomingConfig) -> None:
    client.hide(credentials.secret.reveal())
    if credentials.mechanism is not None:
        await _authenticate(client, credentials, config)
        return
    user, password = credentials.user, credentials.secret.reveal()
    # Check both before sending either: a bad password must not leave a half-done login behind.
    client.encode("USER", user)
    client.encode("PASS", password)
    for name, arg in (("USER", user), ("PASS", password)):
        ok, text = await client.command(name, arg)
        if not ok:
            raise AuthFailure(f"server refused {name}: {text}")


async def _authenticate(client: Pop3Client, credentials: Credentials, config: IncomingConfig) -> None:
    """AUTH (RFC 5034) with the OAuth2 token: one mechanism, one attempt. A server whose CAPA lists
    SASL mechanisms without this one is not asked at all."""
    mechanism = credentials.mechanism
    assert mechanism is not None
    offered = (await _capabilities(client)).get("SASL")
    if offered is not None and mechanism.wire not in offered:
        raise AuthFailure(f"server does not offer AUTH {mechanism.wire} (it offers: {' '.join(offered)})")
    server = config.server
    message = sasl.initial_response(mechanism, credentials.user, credentials.secret.reveal(), server.host, server.port)
    abort = sasl.encoded(sasl.abort_response(mechanism))
    ok, text, challenge = await client.authenticate(mechanism.wire, sasl.encoded(message), abort)
    if not ok:
        credentials.rejected()
        said = f" ({sasl.describe_challenge(challenge)})" if challenge is not None else ""
        raise AuthFailure(f"AUTH {mechanism.wire} rejected{said}: {text}")


class Pop3Mailbox:
    """The MailboxSession over POP3: a POP3 session sees only the mail present at login, so each
    look after a pause is a new login (a Pop3Session), and a pause ends the session: a POP3 server
    may lock the mailbox while one is open, and a concurrent probe of the same task must get in."""

    sees_new_mail = False

    def __init__(self, login: Callable[[], Awaitable[Pop3Session]], first: Pop3Session) -> None:
        self._login = login
        self._session: Pop3Session | None = first
        self.address = first.address
        self.tls = first.tls

    def _current(self) -> Pop3Session:
        if self._session is None:
            raise MailboxFailure("the POP3 session is already closed")
        return self._session

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        return await self._current().find(tokens, sweep_before)

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        await self._current().delete(letters)

    async def header_block(self, letter: FoundLetter) -> bytes | None:
        return letter.headers  # TOP read it whole when the letter was found

    async def pause(self, seconds: float) -> None:
        await self.close()
        await asyncio.sleep(seconds)

    async def resume(self) -> None:
        if self._session is not None and not self._session.closed:
            return
        session = self._session = await self._login()
        self.address, self.tls = session.address, session.tls

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def open_mailbox(
    config: IncomingConfig, access: Access, clock: PhaseClock, signer: Signer, memo: LetterMemo
) -> Pop3Mailbox:
    async def login() -> Pop3Session:
        credentials = await access.credentials()
        return await open_session(config, await access.connect(), clock, signer, memo, credentials)

    return Pop3Mailbox(login, await login())

"""The IMAP4 mailbox leg: open an authenticated session, find probe letters by token, delete them.

The session logic lives here; the conversation with the server goes through clients.imap4, the
one module that knows aioimaplib.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator, Collection, Iterator
from email.utils import parsedate_to_datetime
from typing import Literal

from exporter.auth import sasl
from exporter.auth.credentials import Credentials, login_of
from exporter.clients.imap4 import Imap4Client, Reply, quoted
from exporter.config.model import Cleanup, IncomingConfig, Security
from exporter.legs.folders import special_use
from exporter.legs.junk import folder_state, junk_memo, junk_state
from exporter.legs.mailbox import EXAMINE_BATCH, Access, FoundLetter, wanted
from exporter.legs.memo import JunkMemo, LetterMemo
from exporter.legs.trash import cleanup_of, move_to_trash
from exporter.letter.arrival import ARRIVAL_HEADER_BYTES, Placement
from exporter.letter.compose import HEADER
from exporter.letter.recognise import BOUNCE_BYTES, RECOGNISED_FIELDS, Recognised, is_delivery_report, recognise
from exporter.letter.token import TOKEN_PREFIX, Signer
from exporter.net.connect import Connected
from exporter.net.tls import GREETING_HINT, TLSFacts, client_context, tls_facts
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import AuthFailure, MailboxFailure
from exporter.probe.phases import Phase

# The header fields a letter is recognised by, at most HEADER_BYTES of them: a probe letter's are a
# few hundred bytes, so a letter whose fields fill the cap is not ours, whatever its Subject holds.
HEADER_BYTES = 4096
_FIELDS = " ".join(RECOGNISED_FIELDS).upper()
_FETCH_ITEMS = f"(UID INTERNALDATE BODY.PEEK[HEADER.FIELDS ({_FIELDS})]<0.{HEADER_BYTES}>)"
_HEADER_ITEMS = f"(UID BODY.PEEK[HEADER]<0.{ARRIVAL_HEADER_BYTES}>)"
# One new letter (after IDLE's push, usually the probe's own): its whole header block at once, which
# recognises it and is what its arrival is read from; a FETCH less per probe.
_ONE_LETTER_ITEMS = f"(UID INTERNALDATE BODY.PEEK[HEADER]<0.{ARRIVAL_HEADER_BYTES}>)"
_BOUNCE_ITEMS = f"(UID INTERNALDATE BODY.PEEK[]<0.{BOUNCE_BYTES}>)"  # a bounce's returned headers are in its body
# The sweep looks for letters that carry our own header with a token in it (and bounces that quote
# one), not at Subjects: a sender can put "mrt-" into any number of Subjects.
_SWEEP_CRITERIA = [
    "OR",
    f"(HEADER {HEADER} {quoted(TOKEN_PREFIX)})",
    f"(HEADER Content-Type {quoted('delivery-status')} BODY {quoted(TOKEN_PREFIX)})",
]
# Why the junk folder is selected: to search it (its UIDVALIDITY is learnt), to read or to delete a
# letter found there (its UIDVALIDITY must not have changed since).
FolderUse = Literal["search", "read", "delete"]
_FETCH_START = re.compile(rb"^\d+ FETCH ")
_UID = re.compile(rb"\bUID (\d+)")
_INTERNALDATE = re.compile(rb'INTERNALDATE "([^"]+)"')
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")


class ImapSession:
    """An authenticated IMAP session with the configured mailbox selected."""

    sees_new_mail = True  # a selected mailbox sees new mail on every command: no need to log in again

    def __init__(
        self, client: Imap4Client, config: IncomingConfig, signer: Signer, address: str, memo: LetterMemo
    ) -> None:
        self._client = client
        self._config = config
        self._signer = signer
        self._memo = memo
        self.address = address
        self.tls: TLSFacts | None = None
        self._trash_name: str | None = None
        # What the junk folder looked like when this session last searched it, and for which tokens.
        self._junk_seen: tuple[tuple[bytes, ...], frozenset[str]] | None = None
        self._junk: JunkMemo | None = None  # the junk folder this session last searched
        self._junk_validity: str | None = None  # and its UIDVALIDITY then (the memo's may be newer)
        self._home = True  # the configured mailbox is selected
        self._block: tuple[LetterMemo, str, bytes] | None = None  # a letter of ours' header block, read whole

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        self._block = None  # a block read by an earlier look is not wanted any more
        # Polls search for the awaited tokens only; a sweep for every letter carrying our header.
        if sweep_before is not None:
            criteria = _SWEEP_CRITERIA
        elif tokens:
            criteria = _letter_or_bounce(sorted(tokens))
        else:
            return []
        letters = await self._find_here(criteria, tokens, sweep_before, self._memo)
        if letters and sweep_before is None:
            return letters  # found in the mailbox itself: the junk folder can wait for the next look
        return letters + await self._find_in_junk(criteria, tokens, sweep_before)

    async def _find_here(
        self, criteria: list[str], tokens: Collection[str], sweep_before: float | None, memo: LetterMemo
    ) -> list[FoundLetter]:
        """In the selected folder, whose letters ``memo`` knows."""
        uids = await self._search(criteria)
        known = [FoundLetter(ours.token, uid, bounce=ours.bounce) for uid in uids if (ours := memo.ours(uid))]
        unknown = [uid for uid in uids if uid not in memo][-EXAMINE_BATCH:]  # the newest
        letters = known + (await self._fetch(unknown, memo) if unknown else [])
        return [letter for letter in letters if wanted(letter.token, tokens, sweep_before)]

    async def _find_in_junk(
        self, criteria: list[str], tokens: Collection[str], sweep_before: float | None
    ) -> list[FoundLetter]:
        """The same search in the junk folder, unless STATUS shows that no letter came in there since
        this session last searched it for these tokens."""
        junk = await junk_memo(self._client, self._config, self._memo)
        if junk is None:
            return []
        if sweep_before is None and self._junk_seen is not None and set(tokens) <= self._junk_seen[1]:
            assert junk.name is not None
            if await junk_state(self._client, junk.name) == self._junk_seen[0]:
                return []
        async with self._in_folder(junk, "search") as opened:
            letters = await self._find_here(criteria, tokens, sweep_before, junk.letters)
        self._junk, self._junk_seen = junk, (folder_state(opened), frozenset(tokens))
        return [dataclasses.replace(letter, placement=Placement.JUNK) for letter in letters]

    @contextlib.asynccontextmanager
    async def _in_folder(self, junk: JunkMemo, purpose: FolderUse) -> AsyncIterator[Reply]:
        """With the junk folder selected (read-only, but to delete), then the configured mailbox
        again. After a failure the session ends anyway: it is not selected back."""
        name, client = junk.name, self._client
        assert name is not None
        command = "SELECT" if purpose == "delete" else "EXAMINE"
        self._home = False  # (a failed SELECT or EXAMINE leaves no mailbox selected, RFC 3501 6.3.1)
        opened = await (client.select(name) if command == "SELECT" else client.examine(name))
        if not opened.ok:
            self._memo.junk = None  # renamed or removed: looked for again by the next probe
            raise MailboxFailure(f"{command} {name!r} (the junk folder) failed: {opened.text()}")
        if purpose == "search":
            self._junk_validity = uid_validity(opened)
            junk.letters.renew(self._junk_validity)
        elif uid_validity(opened) != self._junk_validity:
            # Its UIDs now name other letters (the folder was made anew): touch none of them.
            raise MailboxFailure(f"the junk folder {name!r} changed (UIDVALIDITY) since it was searched")
        yield opened
        self._checked(f"SELECT {self._config.mailbox!r}", await client.select(self._config.mailbox))
        self._home = True

    async def _fetch(self, uids: list[str], memo: LetterMemo) -> list[FoundLetter]:
        """The letters of ours among ``uids``; what each one is, the memo keeps (see LetterMemo)."""
        whole = len(uids) == 1
        items, cap = (_ONE_LETTER_ITEMS, ARRIVAL_HEADER_BYTES) if whole else (_FETCH_ITEMS, HEADER_BYTES)
        reply = self._checked("UID FETCH", await self._client.uid_fetch(",".join(uids), items))
        fetched = dict(fetch_responses(reply))
        reports = [uid for uid, (line, headers) in fetched.items() if is_delivery_report(headers)]
        bounces = await self._bounces(reports) if reports else {}
        letters = []
        for uid, (line, headers) in fetched.items():
            ours = bounces.get(uid) if uid in reports else self._recognise(headers, cap)
            memo.remember(uid, ours)
            if ours is not None:
                letters.append(FoundLetter(ours.token, uid, internaldate(line), ours.bounce))
                if whole and not ours.bounce:
                    self._block = (memo, uid, headers)
        return letters

    async def _bounces(self, uids: list[str]) -> dict[str, Recognised | None]:
        """Read these possible bounces (bounded) and recognise the bounces of our letters."""
        reply = self._checked("UID FETCH", await self._client.uid_fetch(",".join(uids), _BOUNCE_ITEMS))
        return {uid: recognise(self._signer, body) for uid, (_, body) in fetch_responses(reply)}

    def _recognise(self, headers: bytes, cap: int) -> Recognised | None:
        if len(headers) >= cap:
            return None  # cut off at the cap: too big to be ours
        return recognise(self._signer, headers)

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        here = [letter for letter in letters if letter.placement is Placement.INBOX]
        in_junk = [letter for letter in letters if letter.placement is Placement.JUNK]
        if here:
            await self._delete_in(self._config.mailbox, self._memo, here)
        junk = self._junk  # the folder this session found them in
        if in_junk and junk is not None and junk.name is not None:
            async with self._in_folder(junk, "delete"):
                await self._delete_in(junk.name, junk.letters, in_junk)

    async def _delete_in(self, mailbox: str, memo: LetterMemo, letters: Collection[FoundLetter]) -> None:
        """Delete these letters of the selected ``mailbox``."""
        uid_set = ",".join(letter.ref for letter in letters)
        memo.forget([letter.ref for letter in letters])
        client = self._client
        if cleanup_of(self._config.cleanup, client.capabilities) is Cleanup.TRASH:
            trash = await self._trash()
            if trash != mailbox:  # a probe that reads the Trash itself deletes in place
                home, self._home = self._home, False
                await move_to_trash(client, uid_set, mailbox, trash)
                self._home = home  # move_to_trash selected ``mailbox`` again
                return
        self._checked("UID STORE", await client.uid_store(uid_set, r"(\Deleted)"))
        # Without UIDPLUS a plain EXPUNGE would also remove letters someone else marked \Deleted:
        # we leave ours flagged rather than touch anything that is not provably ours. (Not sent with
        # the STORE: it depends on it, RFC 3501 5.5.)
        if "UIDPLUS" in client.capabilities:
            self._checked("UID EXPUNGE", await client.uid_expunge(uid_set))

    async def header_block(self, letter: FoundLetter) -> bytes | None:
        memo = self._memo if letter.placement is Placement.INBOX else self._junk.letters if self._junk else None
        block, self._block = self._block, None
        if block is not None and block[0] is memo and block[1] == letter.ref:
            return block[2]  # read whole when it was recognised
        if letter.placement is Placement.INBOX:
            return await self._header_block(letter.ref)
        if self._junk is None:
            return None
        async with self._in_folder(self._junk, "read"):
            return await self._header_block(letter.ref)

    async def _header_block(self, uid: str) -> bytes | None:
        reply = await self._client.uid_fetch(uid, _HEADER_ITEMS)
        return next((block for ref, (_, block) in fetch_responses(reply) if ref == uid), None) if reply.ok else None

    async def _trash(self) -> str:
        """The \\Trash folder's name, asked once per session."""
        if self._trash_name is None:
            self._trash_name = special_use(self._checked("LIST", await self._client.list_special_use()), "\\Trash")
            if self._trash_name is None:
                raise MailboxFailure("no folder has the \\Trash special use (RFC 6154): the letter stays")
        return self._trash_name

    async def resume(self) -> None:
        """Nothing to do: the next search's NOOP makes the server look for new mail."""

    async def pause(self, seconds: float) -> None:
        """Wait until the server pushes news (IDLE) or ``seconds`` pass; without IDLE, only wait.

        With IDLE the letter is seen as soon as the server announces it, not at the next poll.
        """
        client = self._client
        if client.new_mail:
            return  # announced during the last search, delete or fetch: IDLE would not hear of it again
        if "IDLE" not in client.capabilities:
            await asyncio.sleep(seconds)
            return
        await client.idle_for(seconds)

    async def close(self) -> None:
        await self._client.discard(polite=True)

    @property
    def reusable(self) -> bool:
        """Fit for another probe (persistent: true, legs.keep): open, in step with the server, and
        with the configured mailbox selected (a failure in the junk folder or the Trash may leave
        another one, or none)."""
        return self._client.healthy and self._home

    async def check(self) -> None:
        """NOOP: that a kept session is still there and logged in (raises a ProbeError if not)."""
        self._checked("NOOP", await self._client.noop())

    async def _search(self, criteria: list[str]) -> list[str]:
        """Matching UIDs, lowest first."""
        client = self._client
        # Dovecot answers a SEARCH from its view before the command: NOOP first makes it see new mail,
        # unless the server has just announced some (IDLE's EXISTS): then its view has it already.
        # Not sent back to back with the SEARCH: the search depends on the NOOP (RFC 3501 5.5), and
        # Dovecot, given both at once, searched its view from before the NOOP (polling p50 lag +0.9 s).
        if not client.new_mail:
            self._checked("NOOP", await client.noop())
        client.new_mail = False  # what was announced, this search sees; later news it may miss
        reply = self._checked("UID SEARCH", await client.uid_search(criteria))
        uids = {int(word) for line in reply.lines[:-1] for word in line.split() if word.isdigit()}
        return [str(uid) for uid in sorted(uids)]

    @staticmethod
    def _checked(command: str, reply: Reply) -> Reply:
        return reply.require(command)


def fetch_responses(reply: Reply) -> Iterator[tuple[str, tuple[bytes, bytes]]]:
    """(UID, (FETCH line, literal)): a FETCH response is a line with UID/INTERNALDATE, then the literal."""
    for line, literal in reply.pairs:
        if _FETCH_START.match(line) and (uid := _UID.search(line)):
            yield uid.group(1).decode(), (line, literal)


def _letter_or_bounce(tokens: list[str]) -> list[str]:
    """Our letter carries its token in the Subject; a bounce (DSN) of it, in its body. The header
    test comes first so the server reads the bodies of delivery reports only. (SUBJECT search is
    the most widely supported.)"""
    bounce = ["HEADER", "Content-Type", quoted("delivery-status"), *_any("BODY", tokens)]
    return ["OR", f"({' '.join(_any('SUBJECT', tokens))})", f"({' '.join(bounce)})"]


def _any(key: str, tokens: list[str]) -> list[str]:
    """``OR KEY a OR KEY b KEY c``: one search for every token still awaited."""
    if len(tokens) == 1:
        return [key, quoted(tokens[0])]
    return ["OR", key, quoted(tokens[0]), *_any(key, tokens[1:])]


def internaldate(line: bytes) -> float | None:
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


async def open_session(
    config: IncomingConfig,
    connected: Connected,
    clock: PhaseClock,
    signer: Signer,
    memo: LetterMemo,
    credentials: Credentials | None = None,
) -> ImapSession:
    """TLS (implicit or STARTTLS), greeting, LOGIN (or AUTHENTICATE with a token) and SELECT; the
    caller has connected the socket. Without ``credentials``, the configured password."""
    server = config.server
    implicit = server.security is Security.TLS
    context = client_context(server.tls)
    client = Imap4Client(connected.sock, context if implicit else None, server.host, clock.limit)
    try:
        if implicit:
            async with clock.phase(Phase.MAILBOX_TLS):
                await client.handshake()
        async with clock.phase(Phase.MAILBOX_LOGIN, hint="" if implicit else GREETING_HINT):
            await client.greeting()
        if server.security is Security.STARTTLS:
            async with clock.phase(Phase.MAILBOX_TLS):
                await client.starttls(context, server.host)
        session = ImapSession(client, config, signer, connected.address, memo)
        session.tls = tls_facts(client.ssl_object())
        async with clock.phase(Phase.MAILBOX_LOGIN, accumulate=True):
            memo.renew(await _login(client, config, login_of(server, credentials)))
        return session
    except BaseException:
        await client.discard(polite=False)
        raise


async def _login(client: Imap4Client, config: IncomingConfig, credentials: Credentials) -> str | None:
    """LOGIN (or AUTHENTICATE) and SELECT; the mailbox's UIDVALIDITY (None if the server did not say)."""
    if credentials.mechanism is not None:
        await _authenticate(client, credentials, config)
    else:
        if "LOGINDISABLED" in client.capabilities:
            raise AuthFailure("server refuses LOGIN on this connection (LOGINDISABLED: it wants TLS)")
        reply = await client.login(credentials.user, credentials.secret.reveal())
        if not reply.ok:
            raise AuthFailure(f"LOGIN rejected: {reply.text()}")
    reply = await client.select(config.mailbox)
    if not reply.ok:
        raise MailboxFailure(f"SELECT {config.mailbox!r} failed: {reply.text()}")
    return uid_validity(reply)


def uid_validity(reply: Reply) -> str | None:
    """The UIDVALIDITY a SELECT or EXAMINE reply gives (None if the server did not say)."""
    validity = (_UIDVALIDITY.search(line) for line in reply.lines)
    return next((match.group(1).decode() for match in validity if match is not None), None)


async def _authenticate(client: Imap4Client, credentials: Credentials, config: IncomingConfig) -> None:
    """AUTHENTICATE with the OAuth2 token: one mechanism, one attempt."""
    mechanism = credentials.mechanism
    assert mechanism is not None
    if f"AUTH={mechanism.wire}" not in client.capabilities:
        raise AuthFailure(f"server does not offer AUTHENTICATE {mechanism.wire}")
    server = config.server
    message = sasl.initial_response(mechanism, credentials.user, credentials.secret.reveal(), server.host, server.port)
    abort = sasl.encoded(sasl.abort_response(mechanism)).encode()
    reply, challenge = await client.authenticate(mechanism.wire, sasl.encoded(message).encode(), abort)
    if not reply.ok:
        credentials.rejected()
        said = f" ({sasl.describe_challenge(challenge)})" if challenge is not None else ""
        raise AuthFailure(f"AUTHENTICATE {mechanism.wire} rejected{said}: {reply.text()}")


async def open_mailbox(
    config: IncomingConfig, access: Access, clock: PhaseClock, signer: Signer, memo: LetterMemo
) -> ImapSession:
    credentials = await access.credentials()
    return await open_session(config, await access.connect(), clock, signer, memo, credentials)

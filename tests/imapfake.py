"""A scripted IMAP4rev1 server in-process, for unit tests of the IMAP session logic without the rig.

It speaks enough of RFC 3501 for what a probe does (CAPABILITY, STARTTLS, LOGIN, AUTHENTICATE with
a bearer token, SELECT, NOOP, UID SEARCH, UID FETCH, UID STORE, UID EXPUNGE, EXPUNGE, IDLE, LOGOUT)
over ``tests.hostile.serve``,
and can be scripted to misbehave: another greeting, a reply replaced or a hang-up instead of it,
untagged lines pushed before a reply (EXISTS during SEARCH), lines pushed while the client idles.
Responses have the shape Dovecot gives them (FETCH literals included), so the client's parsing is
tested against what it meets in the field; the real Dovecot is tested in the rig tests.

A test does not wait on time: ``FakeImap.idling`` is an event set when a client enters IDLE.
"""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from tests.hostile import Peer

TAG = b"TAG"  # in scripted replies: replaced by the tag of the command being answered
_TOKEN = re.compile(rb'"((?:[^"\\]|\\.)*)"|\(|\)|\{(\d+)\}$|[^\s()"]+')
_SECTION = re.compile(r"BODY(?:\.PEEK)?\[([^\]]*)\](?:<(\d+)\.(\d+)>)?", re.IGNORECASE)


@dataclass
class FakeLetter:
    raw: bytes
    uid: int
    internaldate: datetime
    flags: set[str] = field(default_factory=set)

    def header_block(self) -> bytes:
        head, _, _ = self.raw.partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"

    def header_values(self, name: str) -> list[str]:
        message = email.message_from_bytes(self.header_block(), policy=email.policy.compat32)
        return [str(value) for value in message.get_all(name) or []]


@dataclass
class FakeImap:
    """One mailbox (INBOX) shared by every connection to the fake server."""

    password: str
    user: str = "probe@example.test"
    capabilities: tuple[str, ...] = ("IMAP4rev1", "IDLE", "UIDPLUS")
    greeting: bytes = b"* OK fake IMAP4rev1 ready\r\n"
    # command name ("UID SEARCH", "LOGIN", ...) -> raw reply instead of the normal one, TAG replaced;
    # b"" hangs up instead of replying.
    replies: dict[str, bytes] = field(default_factory=dict)
    hang_up_after: frozenset[str] = frozenset()  # commands after whose scripted reply the server hangs up
    # command name -> untagged lines sent before the normal reply (news announced during a command)
    before: dict[str, bytes] = field(default_factory=dict)
    tls_context: ssl.SSLContext | None = None  # offered by STARTTLS when set
    letters: list[FakeLetter] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # every command line, LOGIN's password masked
    token: str | None = None  # the access token AUTHENTICATE accepts (in any mechanism's message)
    authenticated_capabilities: tuple[str, ...] = ()  # announced in AUTHENTICATE's OK, as Dovecot does
    sasl_answers: list[bytes] = field(default_factory=list)  # every line the client sent after a "+"
    challenge_again: bool = False  # answer every SASL response with another challenge (never end)
    idling: asyncio.Event = field(default_factory=asyncio.Event)
    _uid_next: int = 1
    _idlers: list[Peer] = field(default_factory=list)

    def add(self, raw: bytes, internaldate: datetime | None = None) -> int:
        """Deliver a letter; clients in IDLE hear of it at once, as from a real server."""
        uid = self._uid_next
        self._uid_next += 1
        when = internaldate or datetime.fromisoformat("2026-11-26T12:00:00+00:00")
        self.letters.append(FakeLetter(raw, uid, when))
        for peer in self._idlers:
            peer.writer.write(b"* %d EXISTS\r\n" % len(self.letters))
        return uid

    def push_to_idlers(self, line: bytes) -> None:
        for peer in self._idlers:
            peer.writer.write(line)

    def uids(self) -> list[int]:
        return [letter.uid for letter in self.letters]

    async def __call__(self, peer: Peer) -> None:
        await peer.send(self.greeting)
        while True:
            line = await _command_line(peer)
            if not line:
                return
            tag, _, rest = line.partition(b" ")
            command = _command(rest)
            name = command.name
            self.commands.append(_masked(name, rest.decode(errors="replace")))
            if name in self.before:
                await peer.send(self.before[name])
            if name in self.replies:
                if not self.replies[name]:
                    return
                await peer.send(self.replies[name].replace(TAG, tag))
                if name in self.hang_up_after:
                    return
                continue
            if not await self._answer(peer, tag, command):
                return

    async def _answer(self, peer: Peer, tag: bytes, command: Command) -> bool:
        """Reply to one command; False when the session is over."""
        name = command.name
        handler = {
            "CAPABILITY": self._capability,
            "LOGIN": self._login,
            "SELECT": self._select,
            "NOOP": self._ok,
            "UID SEARCH": self._search,
            "UID FETCH": self._fetch,
            "UID STORE": self._store,
            "UID EXPUNGE": self._uid_expunge,
            "EXPUNGE": self._expunge,
        }.get(name)
        if name == "LOGOUT":
            await peer.send(b"* BYE logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
            return False
        if name == "AUTHENTICATE":
            return await self._authenticate(peer, tag, command)
        if name == "IDLE":
            await self._idle(peer, tag)
        elif name == "STARTTLS" and self.tls_context is not None:
            await peer.send(tag + b" OK Begin TLS negotiation now\r\n")
            await peer.start_tls(self.tls_context)
        elif handler is None:
            await peer.send(tag + b" BAD unknown command\r\n")
        else:
            try:
                untagged = handler(command)
            except _Rejected as exc:
                await peer.send(tag + b" " + exc.args[0] + b"\r\n")
            else:
                await peer.send(untagged + tag + b" OK " + name.encode() + b" completed\r\n")
        return True

    # --- commands ------------------------------------------------------------------------------

    def _capability(self, command: Command) -> bytes:
        offered = [*self.capabilities, *(["STARTTLS"] if self.tls_context is not None else [])]
        return b"* CAPABILITY " + " ".join(offered).encode() + b"\r\n"

    def _login(self, command: Command) -> bytes:
        if command.args[1:2] != [self.password.encode()]:
            raise _Rejected(b"NO [AUTHENTICATIONFAILED] Authentication failed.")
        return b""

    def _select(self, command: Command) -> bytes:
        return b"* %d EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n* OK [UIDNEXT %d] next\r\n" % (
            len(self.letters),
            self._uid_next,
        )

    def _ok(self, command: Command) -> bytes:
        return b""

    def _search(self, command: Command) -> bytes:
        matching = [letter.uid for letter in self.letters if _all_match(command.args, letter)]
        return b"* SEARCH" + b"".join(b" %d" % uid for uid in matching) + b"\r\n"

    def _fetch(self, command: Command) -> bytes:
        wanted = _uid_set(_atom(command.args[0]))
        items = command.raw.partition(" ")[2]  # the item list as sent: sections keep their brackets
        out = bytearray()
        for number, letter in enumerate(self.letters, start=1):
            if letter.uid in wanted:
                out += b"* %d FETCH (" % number + _fetch_items(letter, items) + b")\r\n"
        return bytes(out)

    def _store(self, command: Command) -> bytes:
        wanted = _uid_set(_atom(command.args[0]))
        flags = set(re.findall(r"\\?\w+", command.raw.partition("(")[2]))
        for letter in self.letters:
            if letter.uid in wanted:
                letter.flags |= flags
        return b""

    def _uid_expunge(self, command: Command) -> bytes:
        return self._remove(_uid_set(_atom(command.args[0])))

    def _expunge(self, command: Command) -> bytes:
        return self._remove(None)

    def _remove(self, only: set[int] | None) -> bytes:
        """EXPUNGE every letter flagged \\Deleted (``only`` these UIDs, for UID EXPUNGE)."""
        out = bytearray()
        for number in range(len(self.letters), 0, -1):
            letter = self.letters[number - 1]
            if "\\Deleted" in letter.flags and (only is None or letter.uid in only):
                del self.letters[number - 1]
                out += b"* %d EXPUNGE\r\n" % number
        return bytes(out)

    async def _authenticate(self, peer: Peer, tag: bytes, command: Command) -> bool:
        """A bearer token exchange: the message inline (SASL-IR) or after "+", an error challenge
        (XOAUTH2's shape) to a wrong token, then NO; False if the client hung up meanwhile."""
        message = _atom(command.args[1]).encode() if len(command.args) > 1 else await self._sasl_answer(peer, b"")
        if message is None:
            return False
        if self.token is not None and f"auth=Bearer {self.token}\x01".encode() in base64.b64decode(message):
            offered = " ".join(self.authenticated_capabilities)
            await peer.send(tag + b" OK [CAPABILITY " + offered.encode() + b"] Logged in\r\n")
            return True
        challenge = base64.b64encode(b'{"status":"401","schemes":"bearer","scope":"mail"}')
        while (answer := await self._sasl_answer(peer, challenge)) is not None:
            if self.challenge_again:
                continue  # not even "*" (cancel) ends it
            ending = b"BAD Authentication aborted by client." if answer == b"*" else b"NO Authentication failed."
            await peer.send(tag + b" " + ending + b"\r\n")
            return True
        return False

    async def _sasl_answer(self, peer: Peer, challenge: bytes) -> bytes | None:
        """Send a continuation request; the client's answer, None if it hung up instead."""
        await peer.send(b"+ " + challenge + b"\r\n")
        before = len(peer.lines)
        answer = await peer.line()
        if len(peer.lines) == before:  # line() says b"" for an empty line and for a hang-up alike
            return None
        self.sasl_answers.append(answer)
        return answer

    async def _idle(self, peer: Peer, tag: bytes) -> None:
        await peer.send(b"+ idling\r\n")
        self._idlers.append(peer)
        self.idling.set()
        try:
            line = await peer.line()
        finally:
            self._idlers.remove(peer)
            self.idling.clear()
        if line.upper() == b"DONE":
            await peer.send(tag + b" OK Idle completed.\r\n")


class _Rejected(Exception):
    """A command answered with a tagged NO/BAD instead of OK."""


async def _command_line(peer: Peer) -> bytes:
    """One command, with any literal ({n} at a line's end) read in and inlined as a quoted string."""
    line = await peer.line()
    while (literal := re.search(rb"\{(\d+)\+?\}$", line)) is not None:
        await peer.send(b"+ go ahead\r\n")
        data = await peer.reader.readexactly(int(literal.group(1)))
        rest = await peer.line()
        quoted = b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        line = line[: literal.start()] + quoted + rest
    return line


@dataclass(frozen=True)
class Command:
    name: str  # upper case; "UID FETCH" for UID commands
    args: list[bytes | list[object]]  # parsed: atoms and strings as bytes, lists as lists
    raw: str  # the arguments as sent


def _command(rest: bytes) -> Command:
    text = rest.decode(errors="replace")
    words = _parse(rest)
    first = _atom(words[0]).upper() if words else ""
    _, _, after_name = text.partition(" ")
    if first == "UID" and len(words) > 1:
        return Command(f"UID {_atom(words[1]).upper()}", words[2:], after_name.partition(" ")[2])
    return Command(first, words[1:], after_name)


def _parse(data: bytes) -> list[bytes | list[object]]:
    """Atoms and quoted strings as bytes, parenthesised lists as lists."""
    stack: list[list[bytes | list[object]]] = [[]]
    for match in _TOKEN.finditer(data):
        text = match.group(0)
        if text == b"(":
            stack.append([])
        elif text == b")" and len(stack) > 1:
            inner = stack.pop()
            stack[-1].append(inner)  # type: ignore[arg-type]
        elif match.group(1) is not None:
            stack[-1].append(re.sub(rb"\\(.)", rb"\1", match.group(1)))
        else:
            stack[-1].append(text)
    return stack[0]


def _atom(word: bytes | list[object] | object) -> str:
    return word.decode(errors="replace") if isinstance(word, bytes) else ""


def _uid_set(text: str) -> set[int]:
    uids: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        if low.isdigit() and (not high or high.isdigit()):
            uids.update(range(int(low), int(high or low) + 1))
    return uids


def _all_match(keys: list[bytes | list[object]], letter: FakeLetter) -> bool:
    """Search keys in a row all match (RFC 3501 6.4.4: juxtaposition is AND)."""
    stream = iter(keys)
    return all(_match(key, stream, letter) for key in stream)


def _match(key: bytes | list[object] | object, rest: Iterator[bytes | list[object]], letter: FakeLetter) -> bool:
    if isinstance(key, list):
        return _all_match(key, letter)  # type: ignore[arg-type]
    name = _atom(key).upper()
    if name == "ALL":
        return True
    if name == "OR":  # both keys are read (each with its arguments) before either decides
        first = _match(next(rest), rest, letter)
        second = _match(next(rest), rest, letter)
        return first or second
    if name == "NOT":
        return not _match(next(rest), rest, letter)
    if name in ("SUBJECT", "FROM", "TO"):
        return _contains(letter.header_values(name), _atom(next(rest)))
    if name == "HEADER":
        field_name = _atom(next(rest))
        return _contains(letter.header_values(field_name), _atom(next(rest)))
    if name in ("BODY", "TEXT"):
        needle = _atom(next(rest)).encode().lower()
        return needle in (letter.raw if name == "TEXT" else letter.raw.partition(b"\r\n\r\n")[2]).lower()
    if name in ("BEFORE", "SINCE"):
        day = datetime.strptime(_atom(next(rest)), "%d-%b-%Y").date()
        return letter.internaldate.date() < day if name == "BEFORE" else letter.internaldate.date() >= day
    if name == "UID":
        return letter.uid in _uid_set(_atom(next(rest)))
    if name == "DELETED":
        return "\\Deleted" in letter.flags
    if name == "UNDELETED":
        return "\\Deleted" not in letter.flags
    if name in ("LARGER", "SMALLER"):
        size = int(_atom(next(rest)))
        return len(letter.raw) > size if name == "LARGER" else len(letter.raw) < size
    raise ValueError(f"the fake does not know the search key {name!r}")


def _contains(values: list[str], needle: str) -> bool:
    return any(needle.lower() in " ".join(value.split()).lower() for value in values)


def _fetch_items(letter: FakeLetter, items: str) -> bytes:
    out: list[bytes] = [b"UID %d" % letter.uid]
    words = set(re.sub(r"\[[^\]]*\]", "", items).upper().replace("(", " ").replace(")", " ").split())
    if "INTERNALDATE" in words:
        out.append(b'INTERNALDATE "' + letter.internaldate.strftime("%d-%b-%Y %H:%M:%S %z").encode() + b'"')
    if "RFC822.SIZE" in words:
        out.append(b"RFC822.SIZE %d" % len(letter.raw))
    for section in _SECTION.finditer(items):
        data = _section_data(letter, section.group(1))
        start = int(section.group(2)) if section.group(2) else None
        label = f"BODY[{section.group(1)}]"
        if start is not None:
            data = data[start : start + int(section.group(3))]
            label += f"<{start}>"
        out.append(label.encode() + b" {%d}\r\n" % len(data) + data)
    return b" ".join(out)


def _section_data(letter: FakeLetter, section: str) -> bytes:
    upper = section.upper()
    if upper.startswith("HEADER.FIELDS"):
        names = {name.lower() for name in re.findall(r"[\w-]+", section[len("HEADER.FIELDS") :])}
        return _header_fields(letter.header_block(), names)
    if upper == "HEADER":
        return letter.header_block()
    if upper == "TEXT":
        return letter.raw.partition(b"\r\n\r\n")[2]
    return letter.raw


def _header_fields(block: bytes, names: set[str]) -> bytes:
    """The named fields with their continuation lines, in the letter's order, then the blank line."""
    kept: list[bytes] = []
    keep = False
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        keep = line.split(b":", 1)[0].strip().decode(errors="replace").lower() in names
        if keep:
            kept.append(line)
    return b"".join(line + b"\r\n" for line in kept) + b"\r\n"


def _masked(name: str, line: str) -> str:
    return "LOGIN ********" if name == "LOGIN" else line

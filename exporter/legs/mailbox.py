"""What the probe needs from a mailbox, whatever the protocol: find letters by token, delete them,
and wait for news. legs.imap and legs.pop3 implement MailboxSession; legs.table opens one by
protocol; the probe only talks to this interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from exporter.auth.credentials import Credentials
from exporter.letter.arrival import Placement
from exporter.letter.token import Token
from exporter.net.connect import Connected
from exporter.net.tls import TLSFacts

# Resolves and connects, in the leg's dns and connect phases, each time it is called.
Connect = Callable[[], Awaitable[Connected]]
# The credentials to log in with (an OAuth2 token is got in the leg's oauth2 phase), each time it is called.
Login = Callable[[], Awaitable[Credentials | None]]


@dataclass(frozen=True)
class Access:
    """How a mailbox leg reaches its server each time it logs in: credentials first (so that no
    connection is opened when there is no token to log in with), then resolve and connect."""

    credentials: Login
    connect: Connect


# How many letters not seen before one search looks at: whatever a sender puts in the mailbox, a
# probe reads at most this many letters' headers (the newest first: the awaited letter is recent).
EXAMINE_BATCH = 100


def wanted(token: Token, tokens: Collection[str], sweep_before: float | None) -> bool:
    return token.value in tokens or (sweep_before is not None and token.created < sweep_before)


@dataclass(frozen=True)
class FoundLetter:
    token: Token  # verified: the letter is provably one of ours
    ref: str  # IMAP UID or POP3 UIDL: stable across sessions
    server_time: float | None = None  # the server's arrival time (INTERNALDATE, Received), Unix time
    bounce: str | None = None  # set when this is a bounce (DSN) of the letter: the server's diagnostic
    placement: Placement = Placement.INBOX  # the folder it is in
    # Its header block where the search read it whole (POP3's TOP); IMAP reads it in header_block().
    headers: bytes | None = field(default=None, compare=False, repr=False)


class MailboxSession(Protocol):
    """An open, authenticated mailbox. find and delete run inside a phase of the caller's PhaseClock;
    resume times its own (the login phases, when it logs in again)."""

    tls: TLSFacts | None  # None without TLS
    address: str  # the IP address connected to
    # False when a session sees only the mail present at login (POP3): the probe then tidies up at
    # login, before DATA, and each look logs in again (resume).
    sees_new_mail: bool

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        """Letters in the mailbox that carry one of ``tokens``, verified by their signature; with
        ``sweep_before``, also letters of ours whose token was made before that Unix time. Reads the
        headers of at most EXAMINE_BATCH letters it has not seen before, each with a byte cap."""
        ...

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        """Delete exactly these letters (and nothing else)."""
        ...

    async def header_block(self, letter: FoundLetter) -> bytes | None:
        """The found letter's whole header block (at most ARRIVAL_HEADER_BYTES), to see how it arrived;
        None if the server would not give it."""
        ...

    async def pause(self, seconds: float) -> None:
        """Wait until the mailbox may have new mail (IMAP: the server's IDLE push) or ``seconds``
        have passed. POP3 has no push: it ends the session (a POP3 server may lock the mailbox while
        one is open) and waits; ``resume`` logs in again."""
        ...

    async def resume(self) -> None:
        """Before a look: make mail that arrived since the last one visible (POP3: log in again, in
        the login phases, if the session ended; IMAP: nothing, a selected mailbox sees new mail)."""
        ...

    async def close(self) -> None:
        """Log out politely; never raises."""
        ...

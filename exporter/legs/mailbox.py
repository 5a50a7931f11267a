"""What the probe needs from a mailbox, whatever the protocol: find letters by token, delete them.

imap.py and pop3.py implement MailboxSession; the probe only talks to this interface.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.letter.recognise import Recognised, Token
from exporter.probe.errors import Bounced

# How many letters not seen before one search looks at: whatever a sender puts in the mailbox, a
# probe reads at most this many letters' headers (the newest first: the awaited letter is recent).
EXAMINE_BATCH = 100
# What a letter memo may hold; past it the oldest entries are forgotten (read again, if ever needed).
MEMO_LIMIT = 50_000


def wanted(token: Token, tokens: Collection[str], sweep_before: float | None) -> bool:
    return token.value in tokens or (sweep_before is not None and token.created < sweep_before)


@dataclass(frozen=True)
class FoundLetter:
    token: Token  # verified: the letter is provably one of ours
    ref: str  # IMAP UID or POP3 UIDL: stable across sessions
    server_time: float | None = None  # the server's arrival time (INTERNALDATE, Received), Unix time
    bounce: str | None = None  # set when this is a bounce (DSN) of the letter: the server's diagnostic


@dataclass(frozen=True)
class SortedLetters:
    """Letters a search found, by what they are to the probe that found them. Pure, so that what
    a search means can be tested (and extended) without a mailbox."""

    mine: list[FoundLetter]
    late: list[FoundLetter]  # of earlier probes that gave up waiting for them
    swept: list[FoundLetter]  # leftovers, found only because they are old
    bounces: list[FoundLetter]  # a bounce proves a letter will not arrive, never that it did

    @property
    def to_delete(self) -> list[FoundLetter]:
        return [*self.mine, *self.late, *self.swept, *self.bounces]

    def raise_if_bounced(self, token: Token) -> None:
        """End the probe when ``token``'s letter bounced."""
        own = next((bounce for bounce in self.bounces if bounce.token.value == token.value), None)
        if own is not None:
            raise Bounced(f"the letter bounced: {own.bounce}", phase="mailbox_search")


def sort_found(found: Sequence[FoundLetter], token: str | None, late: Collection[str]) -> SortedLetters:
    """``token``: the probe's own (None when only late letters and leftovers are looked for)."""
    letters = [letter for letter in found if letter.bounce is None]
    mine = [letter for letter in letters if letter.token.value == token]
    late_ones = [letter for letter in letters if letter not in mine and letter.token.value in late]
    swept = [letter for letter in letters if letter not in mine and letter not in late_ones]
    return SortedLetters(mine, late_ones, swept, [letter for letter in found if letter.bounce is not None])


@dataclass
class LetterMemo:
    """What earlier sessions of one mailbox learnt about its letters, by stable reference (IMAP UID,
    POP3 UIDL), so that no letter's headers are read twice: ``None`` for a letter that is not ours
    (not recognised, or too big or odd to be one of ours), what it is for a letter of ours (or a
    bounce of one) that was not wanted yet (another probe's, or too young to sweep). ``validity``
    is IMAP's UIDVALIDITY: UIDs under another one mean other letters."""

    letters: dict[str, Recognised | None] = field(default_factory=dict)
    validity: str | None = None

    def __contains__(self, ref: str) -> bool:
        return ref in self.letters

    def ours(self, ref: str) -> Recognised | None:
        return self.letters.get(ref)

    def remember(self, ref: str, ours: Recognised | None) -> None:
        self.letters[ref] = ours
        if len(self.letters) > MEMO_LIMIT:
            for old in list(self.letters)[: MEMO_LIMIT // 10]:
                del self.letters[old]

    def forget(self, refs: Collection[str]) -> None:
        for ref in refs:
            self.letters.pop(ref, None)

    def keep_only(self, refs: Collection[str]) -> None:
        """Forget letters that are gone, so the memo stays as small as the mailbox."""
        self.letters = {ref: ours for ref, ours in self.letters.items() if ref in refs}

    def renew(self, validity: str | None) -> None:
        if validity != self.validity:
            self.letters.clear()
            self.validity = validity


class MailboxSession(Protocol):
    """An open, authenticated mailbox. Every method runs inside a phase of the caller's PhaseClock."""

    certificate_not_after: float | None
    address: str  # the IP address connected to
    snapshot: bool  # True when the session sees only mail present at login (POP3): reopen to poll

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        """Letters in the mailbox that carry one of ``tokens``, verified by their signature; with
        ``sweep_before``, also letters of ours whose token was made before that Unix time. Reads the
        headers of at most EXAMINE_BATCH letters it has not seen before, each with a byte cap."""
        ...

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        """Delete exactly these letters (and nothing else)."""
        ...

    async def wait_for_change(self, seconds: float) -> None:
        """Return when the mailbox may have new mail (server push) or after ``seconds``."""
        ...

    async def close(self) -> None:
        """Log out politely; never raises."""
        ...

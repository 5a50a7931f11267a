"""What the probe needs from a mailbox, whatever the protocol: find letters by token, delete them.

imap.py and pop3.py implement MailboxSession; the probe only talks to this interface.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from exporter.errors import Bounced
from exporter.message import Token


def wanted(token: Token, tokens: Collection[str], sweep_before: float | None) -> bool:
    return token.value in tokens or (sweep_before is not None and token.created < sweep_before)


@dataclass(frozen=True)
class FoundLetter:
    token: Token  # verified: the letter is provably one of ours
    ref: str  # IMAP UID or POP3 UIDL: stable across sessions
    server_time: float | None = None  # the server's arrival time (INTERNALDATE, Received), Unix time
    bounce: str | None = None  # set when this is a bounce (DSN) of the letter: the server's diagnostic


def split_bounces(found: list[FoundLetter]) -> tuple[list[FoundLetter], list[FoundLetter]]:
    """(letters, bounces): a bounce proves the letter will not arrive, never that it did."""
    return [letter for letter in found if letter.bounce is None], [letter for letter in found if letter.bounce]


def raise_if_bounced(bounces: list[FoundLetter], token: Token, late: dict[str, float]) -> None:
    """End the probe when ``token``'s letter bounced; forget late letters that bounced (they will
    not come)."""
    for bounce in bounces:
        late.pop(bounce.token.value, None)
    own = next((bounce for bounce in bounces if bounce.token.value == token.value), None)
    if own is not None:
        raise Bounced(f"the letter bounced: {own.bounce}", phase="mailbox_search")


class MailboxSession(Protocol):
    """An open, authenticated mailbox. Every method runs inside a phase of the caller's PhaseClock."""

    certificate_not_after: float | None
    address: str  # the IP address connected to
    snapshot: bool  # True when the session sees only mail present at login (POP3): reopen to poll

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        """Letters in the mailbox that carry one of ``tokens``, verified by their signature; with
        ``sweep_before``, also every letter of ours whose token was made before that Unix time."""
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

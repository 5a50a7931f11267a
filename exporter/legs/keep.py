"""Sessions kept across a task's probes (``persistent: true``), for either leg.

A probe borrows the kept session instead of connecting, shaking hands and logging in; when it is
done the session is handed back for the next probe. A session that is gone (a server restart, a
dropped connection, the server's idle timeout) is closed and a fresh one logs in, in the same probe.
Every ``fresh_login_every``-th probe logs in fresh on purpose: the kept session no longer proves that
a login works, that probe does (and fails with ``auth`` when it does not).

The IMAP session is checked with a NOOP before it is lent (Keeper, here); the SMTP session proves
itself by taking MAIL FROM and RCPT TO (legs.outbox).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Generic, Protocol, TypeVar

from exporter.config.model import IncomingConfig
from exporter.legs import imap
from exporter.legs.imap import ImapSession
from exporter.legs.mailbox import Access, FoundLetter, MailboxSession
from exporter.legs.memo import LetterMemo
from exporter.letter.token import Signer
from exporter.net.tls import TLSFacts
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import ProbeError
from exporter.probe.phases import Phase

# How long a kept session may take to answer its check before it is given up for a fresh login (a
# connection dropped without a word would otherwise hold the probe until the completion timeout).
CHECK_SECONDS = 5.0


class Closable(Protocol):
    @property
    def reusable(self) -> bool: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Closable)


class Shelf(Generic[S]):
    """Where one task keeps one session of a leg. Probes that overlap get sessions of their own; of
    those handed back, one is kept and the others are closed."""

    def __init__(self, fresh_login_every: int) -> None:
        self._every = fresh_login_every
        self._kept: S | None = None
        self._served = 0  # probes served by the kept session's login, that login's own probe included
        self._closed = False

    async def take(self) -> S | None:
        """The kept session, unless there is none or its login has served its share of probes
        (then it is closed: this probe logs in anew)."""
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        if self._served >= self._every or not kept.reusable:  # not reusable: the server has closed it
            await kept.close()
            return None
        self._served += 1
        return kept

    def logged_in(self) -> None:
        """A fresh session logged in for this probe: it counts as the first its login serves."""
        self._served = 1

    async def give_back(self, session: S) -> None:
        if self._kept is None and not self._closed and session.reusable:
            self._kept = session
        else:
            await session.close()

    async def close(self) -> None:
        """Close the kept session (the task is removed, or the exporter stops)."""
        self._closed = True
        kept, self._kept = self._kept, None
        if kept is not None:
            await kept.close()


class Keeper:
    """One task's kept IMAP session, checked with a NOOP (in the mailbox_login phase) before it is lent."""

    def __init__(self, config: IncomingConfig) -> None:
        self._config = config
        self.shelf: Shelf[ImapSession] = Shelf(config.fresh_login_every)

    async def open(self, access: Access, clock: PhaseClock, signer: Signer, memo: LetterMemo) -> MailboxSession:
        kept = await self.shelf.take()
        if kept is not None:
            if await _answers(kept, clock):
                return _Lent(kept, self.shelf)
            await kept.close()
        session = await imap.open_mailbox(self._config, access, clock, signer, memo)
        self.shelf.logged_in()
        return _Lent(session, self.shelf)

    async def close(self) -> None:
        await self.shelf.close()


async def _answers(session: ImapSession, clock: PhaseClock) -> bool:
    async with clock.phase(Phase.MAILBOX_LOGIN):
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await session.check()
        except (ProbeError, TimeoutError, OSError):
            return False
    return True


class _Lent:
    """A kept session as one probe sees it: closing it hands it back to its shelf."""

    sees_new_mail = True

    def __init__(self, session: ImapSession, shelf: Shelf[ImapSession]) -> None:
        self._session = session
        self._shelf = shelf
        self.address = session.address
        self.tls: TLSFacts | None = session.tls
        self._returned = False

    async def find(self, tokens: Collection[str], sweep_before: float | None = None) -> list[FoundLetter]:
        return await self._session.find(tokens, sweep_before)

    async def delete(self, letters: Collection[FoundLetter]) -> None:
        await self._session.delete(letters)

    async def header_block(self, letter: FoundLetter) -> bytes | None:
        return await self._session.header_block(letter)

    async def pause(self, seconds: float) -> None:
        await self._session.pause(seconds)

    async def resume(self) -> None:
        await self._session.resume()

    async def close(self) -> None:
        if not self._returned:
            self._returned = True
            await self._shelf.give_back(self._session)

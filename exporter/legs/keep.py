"""An IMAP session kept across a task's probes (``persistent: true``).

A probe borrows the kept session instead of connecting, shaking hands and logging in; when it is
done the session is handed back, still selected, for the next probe. Before a kept session is lent
a NOOP (in the mailbox_login phase) shows that the server still holds it; a session that is gone
(a server restart, a dropped connection, the server's autologout) is closed and a fresh one logs in,
in the same probe. Every ``fresh_login_every``-th probe logs in fresh on purpose: the kept session
no longer proves that a login works, that probe does (and fails with ``auth`` when it does not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection

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

# How long a kept session may take to answer its NOOP before it is given up for a fresh login (a
# connection dropped without a word would otherwise hold the probe until the completion timeout).
CHECK_SECONDS = 5.0


class Keeper:
    """One task's kept session. Probes that overlap get sessions of their own; of those handed
    back, one is kept and the others log out."""

    def __init__(self, config: IncomingConfig) -> None:
        self._config = config
        self._kept: ImapSession | None = None
        self._lent = 0  # probes served by the kept session's login, that login's own probe included
        self._closed = False

    async def open(self, access: Access, clock: PhaseClock, signer: Signer, memo: LetterMemo) -> MailboxSession:
        kept, self._kept = self._kept, None
        if kept is not None:
            if self._lent < self._config.fresh_login_every and await _answers(kept, clock):
                self._lent += 1
                return _Lent(kept, self)
            await kept.close()
        session = await imap.open_mailbox(self._config, access, clock, signer, memo)
        self._lent = 1
        return _Lent(session, self)

    async def take_back(self, session: ImapSession) -> None:
        if self._kept is None and not self._closed and session.reusable:
            self._kept = session
        else:
            await session.close()

    async def close(self) -> None:
        """Log the kept session out (the task is removed, or the exporter stops)."""
        self._closed = True
        kept, self._kept = self._kept, None
        if kept is not None:
            await kept.close()


async def _answers(session: ImapSession, clock: PhaseClock) -> bool:
    async with clock.phase(Phase.MAILBOX_LOGIN):
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await session.check()
        except (ProbeError, TimeoutError, OSError):
            return False
    return True


class _Lent:
    """A kept session as one probe sees it: closing it hands it back to its keeper."""

    sees_new_mail = True

    def __init__(self, session: ImapSession, keeper: Keeper) -> None:
        self._session = session
        self._keeper = keeper
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
            await self._keeper.take_back(self._session)

"""A task's SMTP leg across probes: with ``persistent: true`` its session is kept (legs.keep).

A kept session proves itself by taking the next letter's MAIL FROM and RCPT TO: if it does not (the
server closed it after its idle timeout, a restart, a limit of letters per connection), it is closed
and a fresh session connects and logs in, in the same probe, before anything of the letter was sent.
A session is kept only once the server took its letter; one whose transaction failed is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from exporter.config.model import SMTPConfig
from exporter.legs.keep import CHECK_SECONDS, Shelf
from exporter.legs.smtp import Receipt, SmtpSession
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import ProbeError


class Outbox:
    def __init__(self, config: SMTPConfig) -> None:
        self._shelf: Shelf[SmtpSession] | None = Shelf(config.fresh_login_every) if config.persistent else None

    async def send(
        self,
        clock: PhaseClock,
        letter: bytes,
        sender: str,
        destination: str,
        fresh: Callable[[], Awaitable[SmtpSession]],
        before_data: Callable[[], Awaitable[None]] | None = None,
    ) -> Receipt:
        """Send ``letter`` on the kept session, or on the one ``fresh`` opens."""
        session = await self._kept_envelope(clock, sender, destination)
        if session is None:
            session = await fresh()
            if self._shelf is not None:
                self._shelf.logged_in()
            try:
                await session.envelope(clock, sender, destination)
            except BaseException:
                await session.close()
                raise
        try:
            receipt = await session.hand_over(clock, letter, before_data)
        except BaseException:
            await session.close()
            raise
        await self._done_with(session)
        return receipt

    async def _kept_envelope(self, clock: PhaseClock, sender: str, destination: str) -> SmtpSession | None:
        kept = await self._shelf.take() if self._shelf is not None else None
        if kept is None:
            return None
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                await kept.envelope(clock, sender, destination)
        except (ProbeError, TimeoutError, OSError):
            await kept.close()
            return None
        return kept

    async def _done_with(self, session: SmtpSession) -> None:
        if self._shelf is not None:
            await self._shelf.give_back(session)
        else:
            await session.close()

    async def close(self) -> None:
        """QUIT the kept session (the task is removed, or the exporter stops)."""
        if self._shelf is not None:
            await self._shelf.close()

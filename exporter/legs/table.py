"""The table of mailbox legs: how a session is opened, by protocol (as blackbox_exporter's Probers).

A new way to read a mailbox (a new protocol, another login flow) is one entry here; the probe loop
does not change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from exporter.config.model import IncomingConfig, Protocol
from exporter.legs import imap, pop3
from exporter.legs.mailbox import Access, MailboxSession
from exporter.legs.memo import LetterMemo
from exporter.letter.token import Signer
from exporter.probe.clock import PhaseClock

Opener = Callable[[IncomingConfig, Access, PhaseClock, Signer, LetterMemo], Awaitable[MailboxSession]]

MAILBOX_LEGS: dict[Protocol, Opener] = {
    Protocol.IMAP: imap.open_mailbox,
    Protocol.POP3: pop3.open_mailbox,
}


async def open_mailbox(
    config: IncomingConfig, access: Access, clock: PhaseClock, signer: Signer, memo: LetterMemo
) -> MailboxSession:
    """An authenticated session (the opener owns the socket from ``access.connect`` on: it closes it on failure)."""
    return await MAILBOX_LEGS[config.protocol](config, access, clock, signer, memo)

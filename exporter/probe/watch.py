"""Waiting for the letter: a task's mailbox across probes, the search loop, and the tidy-up.

The loop is the same for every protocol: how a mailbox shows new mail (IMAP's IDLE, POP3's new
login per look) is the session's business (legs.mailbox.MailboxSession); what a search found means
to the probe is the pure probe.found.sort_found.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.auth.credentials import Credentials, obtain
from exporter.config.model import MAX_EMAIL_TIMEOUT, IncomingConfig, TaskConfig
from exporter.legs.keep import Keeper
from exporter.legs.mailbox import Access, FoundLetter, MailboxSession
from exporter.legs.memo import LetterMemo
from exporter.legs.smtp import Receipt
from exporter.legs.table import open_mailbox
from exporter.letter.arrival import Arrival, read_arrival
from exporter.letter.token import Signer, Token
from exporter.net.connect import Connected
from exporter.net.resolve import Resolve
from exporter.probe.clock import PhaseClock
from exporter.probe.dial import dial
from exporter.probe.errors import DeliveryTimeout, ProbeError, ProtocolFailure
from exporter.probe.found import SortedLetters, sort_found
from exporter.probe.phases import Leg, Phase
from exporter.probe.result import ProbeResult

# Signed letters older than this are leftovers of earlier runs (a crash, a restart while letters
# travelled): no probe can still be waiting for them, since the email timeout is at most an hour.
SWEEP_AGE = 2 * MAX_EMAIL_TIMEOUT
# A sweep reads letters that are not the probe's own, so it runs at most this often per mailbox.
SWEEP_EVERY = 600.0


@dataclass
class Mailbox:
    """One task's mailbox, kept across probes.

    ``memo`` remembers what each letter already read is (see LetterMemo); ``late`` holds the tokens
    of letters that were accepted but not seen by their own probe (token -> acceptance time), so that
    a later probe can recognise them when they do arrive, count them as late and clean them up.
    """

    config: IncomingConfig
    signer: Signer
    memo: LetterMemo = field(default_factory=LetterMemo)
    late: dict[str, float] = field(default_factory=dict)
    on_late: Callable[[FoundLetter, float], None] = lambda letter, accepted: None
    next_sweep: float = float("-inf")  # monotonic time: the first probe sweeps
    keeper: Keeper | None = None  # the session kept across probes (persistent: true)

    def __post_init__(self) -> None:
        if self.config.persistent:
            self.keeper = Keeper(self.config)

    def claim_sweep(self) -> float | None:
        """If a sweep is due: its cutoff (letters of ours made before it are leftovers, Unix time),
        and the next one not before SWEEP_EVERY from now. Claimed once, by one of concurrent probes."""
        now = time.monotonic()
        if now < self.next_sweep:
            return None
        self.next_sweep = now + SWEEP_EVERY
        return time.time() - SWEEP_AGE

    def claim_late(self, letters: list[FoundLetter]) -> list[FoundLetter]:
        """Take late letters out of ``late`` (once: concurrent probes may find the same one)."""
        claimed = []
        for letter in letters:
            accepted = self.late.pop(letter.token.value, None)
            if accepted is not None:
                self.on_late(letter, accepted)
                claimed.append(letter)
        return claimed

    async def open(self, clock: PhaseClock, resolve: Resolve, result: ProbeResult) -> MailboxSession:
        config = self.config

        async def connect() -> Connected:
            return await dial(clock, resolve, Leg.MAILBOX, result.mailbox, config.server.host, config.server.port)

        async def credentials() -> Credentials | None:
            return await obtain(config.server, clock, Leg.MAILBOX)

        access = Access(credentials, connect)
        if self.keeper is not None:
            session = await self.keeper.open(access, clock, self.signer, self.memo)
        else:
            session = await open_mailbox(config, access, clock, self.signer, self.memo)
        result.mailbox.address = result.mailbox.address or session.address  # a kept session did not dial
        result.mailbox.tls = session.tls
        return session

    async def close(self) -> None:
        """Log out a kept session (the task is removed, the exporter stops)."""
        if self.keeper is not None:
            await self.keeper.close()


async def wait_for_letter(
    task: TaskConfig,
    clock: PhaseClock,
    mailbox: Mailbox,
    session: MailboxSession,
    token: Token,
    result: ProbeResult,
    receipt: Receipt,
) -> tuple[FoundLetter, float]:
    """Search until the letter is there or the email timeout (counted from acceptance) has passed;
    the found letter and when it was seen (monotonic). Closes the session."""
    deadline = receipt.accepted_monotonic + task.email_timeout
    try:
        while True:
            check_started = time.monotonic()
            await session.resume()
            async with clock.phase(Phase.MAILBOX_SEARCH):
                found = await session.find([token.value, *mailbox.late])
            seen = time.monotonic()
            letters = sort_found(found, token.value, mailbox.late)
            if letters.mine:  # read before it is deleted
                async with clock.phase(Phase.MAILBOX_HEADERS):
                    result.arrival = await _arrival(session, letters.mine[0], task.incoming)
            if letters.to_delete:
                async with clock.phase(Phase.MAILBOX_DELETE):
                    await _remove(session, mailbox, letters, result)
            if letters.mine:
                if session.sees_new_mail:  # a snapshot session (POP3) tidied up at login instead
                    await tidy_up(clock, mailbox, session, result)
                return letters.mine[0], seen
            letters.raise_if_bounced(token)
            now = time.monotonic()
            if now >= deadline:
                raise DeliveryTimeout(
                    f"letter not found within {task.email_timeout:g}s of acceptance ({receipt.reply})",
                    phase=Phase.MAILBOX_SEARCH,
                )
            # Checks start every poll_interval (not poll_interval after the last one ended), so the
            # detection delay of polling stays below the interval.
            try:
                await session.pause(max(0.0, min(check_started + task.incoming.poll_interval, deadline) - now))
            except ProbeError as exc:
                exc.phase = exc.phase or Phase.MAILBOX_SEARCH  # waiting (IDLE) is part of searching
                raise
    except ProbeError:
        raise
    except OSError as exc:
        raise ProtocolFailure(f"mailbox connection failed: {exc.strerror or exc}") from None
    finally:
        result.mailbox.tls = session.tls
        await session.close()


async def _arrival(session: MailboxSession, letter: FoundLetter, config: IncomingConfig) -> Arrival:
    return read_arrival(await session.header_block(letter), letter.placement, config.authserv_ids)


async def _remove(session: MailboxSession, mailbox: Mailbox, letters: SortedLetters, result: ProbeResult) -> None:
    mailbox.claim_late(letters.late)
    for bounce in letters.bounces:
        mailbox.late.pop(bounce.token.value, None)  # a late letter that bounced will not come
    result.swept += len(letters.swept)
    await session.delete(letters.to_delete)


async def tidy_up(clock: PhaseClock, mailbox: Mailbox, session: MailboxSession, result: ProbeResult) -> None:
    """Late letters and, when due, leftovers: in a phase of its own, never inside delivery time.
    A snapshot session (POP3) always looks (it is the login check, and reads each new letter's
    headers once); a live one (IMAP) only when a sweep is due (its searches look for late letters)."""
    sweep_before = mailbox.claim_sweep()
    if sweep_before is None and session.sees_new_mail:
        return
    async with clock.phase(Phase.MAILBOX_SWEEP):
        found = await session.find(list(mailbox.late), sweep_before)
        letters = sort_found(found, None, mailbox.late)
        if letters.to_delete:
            await _remove(session, mailbox, letters, result)

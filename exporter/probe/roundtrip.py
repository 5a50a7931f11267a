"""One round trip: send the probe letter over SMTP, find it in the mailbox, delete it.

The result is a value: success, or exactly one failure reason, with per-phase timings and the
delivery time (SMTP server accepted the letter -> the letter was seen in the mailbox).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from exporter.config.load import MAX_EMAIL_TIMEOUT, IncomingConfig, Protocol, TaskConfig
from exporter.legs import imap, pop3, smtp
from exporter.legs.mailbox import FoundLetter, LetterMemo, MailboxSession, SortedLetters, sort_found
from exporter.letter.recognise import Signer, Token, build_letter
from exporter.net import connect as net
from exporter.net.resolve import Resolution
from exporter.probe.errors import ConnectFailure, DeliveryTimeout, DNSFailure, ProbeError, ProtocolFailure, Reason

log = logging.getLogger(__name__)

Resolve = Callable[[str], Awaitable[Resolution]]
# Signed letters older than this are leftovers of earlier runs (a crash, a restart while letters
# travelled): no probe can still be waiting for them, since the email timeout is at most an hour.
SWEEP_AGE = 2 * MAX_EMAIL_TIMEOUT
# A sweep reads letters that are not the probe's own, so it runs at most this often per mailbox.
SWEEP_EVERY = 600.0
# Every phase a probe can time, in the order a round trip goes through them.
PHASES = (
    "smtp_dns",
    "smtp_connect",
    "smtp_tls",
    "smtp_greeting",
    "smtp_auth",
    "smtp_submit",
    "mailbox_dns",
    "mailbox_connect",
    "mailbox_tls",
    "mailbox_login",
    "mailbox_search",
    "mailbox_delete",
    "mailbox_sweep",
)


@dataclass
class ProbeResult:
    device: str
    task: str
    token: str
    started: float  # Unix time
    success: bool = False
    reason: Reason | None = None
    error: str | None = None  # human-readable, phase first; never contains a secret
    failed_phase: str | None = None  # the phase the failure happened in (its leg is the prefix)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase
    dns_cached: dict[str, bool] = field(default_factory=dict)  # per leg: was the answer a cache hit
    delivery_seconds: float | None = None  # accepted -> seen, our clock
    server_delivery_seconds: float | None = None  # accepted -> the mailbox server's arrival time
    smtp_reply: str | None = None
    smtp_address: str | None = None  # which address of the SMTP host answered
    mailbox_address: str | None = None
    smtp_certificate_not_after: float | None = None
    mailbox_certificate_not_after: float | None = None
    accepted_wall: float | None = None
    swept: int = 0  # leftover letters of earlier runs this probe deleted
    finished: float = 0.0

    @property
    def sent(self) -> bool:
        """The SMTP server took the letter: it may still arrive later (late arrival)."""
        return self.accepted_wall is not None


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

    async def open(self, clock: net.PhaseClock, resolve: Resolve, result: ProbeResult) -> MailboxSession:
        connected = await connect_leg(clock, resolve, result, "mailbox", self.config.host, self.config.port)
        result.mailbox_address = connected.address
        # open_session owns the socket from here: it closes it (or its transport) on failure.
        session: MailboxSession
        if self.config.protocol is Protocol.POP3:
            session = await pop3.open_session(self.config, connected, clock, self.signer, self.memo)
        else:
            session = await imap.open_session(self.config, connected, clock, self.signer, self.memo)
        result.mailbox_certificate_not_after = session.certificate_not_after
        return session


async def connect_leg(
    clock: net.PhaseClock, resolve: Resolve, result: ProbeResult, leg: str, host: str, port: int
) -> net.Connected:
    async with clock.phase(f"{leg}_dns", on_timeout=DNSFailure):
        resolution = await resolve(host)
    result.dns_cached[leg] = resolution.cached
    async with clock.phase(f"{leg}_connect", on_timeout=ConnectFailure):
        return await net.connect_any(resolution.addresses, port)


async def run_probe(
    device: str, task: TaskConfig, signer: Signer, resolve: Resolve, mailbox: Mailbox | None = None
) -> ProbeResult:
    """Never raises (but for cancellation): every failure becomes the result's reason."""
    token = signer.new_token()
    result = ProbeResult(device=device, task=task.name, token=token.value, started=time.time())
    clock = net.PhaseClock(task.completion_timeout)
    mailbox = mailbox or Mailbox(task.incoming, signer)
    try:
        await _round_trip(device, task, token, clock, resolve, mailbox, result)
        result.success = True
    except ProbeError as exc:
        result.reason, result.error, result.failed_phase = exc.reason, str(exc), exc.phase
        if result.accepted_wall is not None and exc.reason is not Reason.BOUNCED:
            mailbox.late[token.value] = result.accepted_wall  # it may still arrive: recognise it then
    except Exception as exc:  # a bug or an unexpected library error must not kill the scheduler
        log.exception("probe %s/%s failed unexpectedly", device, task.name)
        result.reason, result.error = Reason.PROTOCOL, f"unexpected error: {type(exc).__name__}"
    finally:
        result.phases = dict(clock.durations)
        result.finished = time.time()
    return result


async def _round_trip(
    device: str,
    task: TaskConfig,
    token: Token,
    clock: net.PhaseClock,
    resolve: Resolve,
    mailbox: Mailbox,
    result: ProbeResult,
) -> None:
    # The mailbox is opened while SMTP connects, and DATA waits for it: a mailbox that cannot be
    # opened gets no letter (nobody would take it out again).
    early = asyncio.ensure_future(_prepare_mailbox(clock, resolve, mailbox, result))
    try:
        receipt = await _send(device, task, token, clock, resolve, result, lambda: _opened(early))
        session = await early
    except BaseException:
        await _close_early(early)
        raise
    letter, seen = await wait_for_letter(task, clock, resolve, mailbox, session, token, result, receipt)
    result.delivery_seconds = max(0.0, seen - receipt.accepted_monotonic)
    if letter.server_time is not None:
        result.server_delivery_seconds = letter.server_time - receipt.accepted_wall


async def _prepare_mailbox(
    clock: net.PhaseClock, resolve: Resolve, mailbox: Mailbox, result: ProbeResult
) -> MailboxSession | None:
    """IMAP: the session the probe will search in, so that the first search runs the moment the
    letter is accepted and login time never counts as delivery time. POP3 (a session sees only the
    mail present at login): a login check that also deals with late letters, leftovers and letters
    not seen before, so that the polls after DATA only read new letters; then None."""
    session = await mailbox.open(clock, resolve, result)
    if not session.snapshot:
        return session
    try:
        await tidy_up(clock, mailbox, session, result)
    finally:
        await session.close()
    return None


async def _opened(early: asyncio.Future[MailboxSession | None]) -> None:
    """Wait for the mailbox to be open; its failure ends the SMTP session before DATA."""
    await asyncio.wait([early])  # not ``await early``: a cancelled send must not cancel it too
    early.result()


async def _close_early(early: asyncio.Future[MailboxSession | None]) -> None:
    if not early.done():
        early.cancel()
    try:
        session = await early
    except (asyncio.CancelledError, Exception):
        return
    if session is not None:
        await session.close()


async def _send(
    device: str,
    task: TaskConfig,
    token: Token,
    clock: net.PhaseClock,
    resolve: Resolve,
    result: ProbeResult,
    before_data: Callable[[], Awaitable[None]],
) -> smtp.Receipt:
    connected = await connect_leg(clock, resolve, result, "smtp", task.smtp.host, task.smtp.port)
    result.smtp_address = connected.address
    letter = build_letter(token, task.sender, task.destination, device, task.name)
    receipt = await smtp.send_letter(task.smtp, connected, clock, letter, task.sender, task.destination, before_data)
    result.smtp_reply = receipt.reply
    result.smtp_certificate_not_after = receipt.certificate_not_after
    result.accepted_wall = receipt.accepted_wall
    return receipt


async def wait_for_letter(
    task: TaskConfig,
    clock: net.PhaseClock,
    resolve: Resolve,
    mailbox: Mailbox,
    session: MailboxSession | None,
    token: Token,
    result: ProbeResult,
    receipt: smtp.Receipt,
) -> tuple[FoundLetter, float]:
    """Search until the letter is there or the email timeout (counted from acceptance) has passed."""
    deadline = receipt.accepted_monotonic + task.email_timeout
    try:
        while True:
            check_started = time.monotonic()
            if session is None:
                session = await mailbox.open(clock, resolve, result)
            async with clock.phase("mailbox_search"):
                found = await session.find([token.value, *mailbox.late])
            seen = time.monotonic()
            letters = sort_found(found, token.value, mailbox.late)
            if letters.to_delete:
                async with clock.phase("mailbox_delete"):
                    await _remove(session, mailbox, letters, result)
            if letters.mine:
                if not session.snapshot:  # POP3 tidied up before DATA (and this session has ended)
                    await tidy_up(clock, mailbox, session, result)
                return letters.mine[0], seen
            letters.raise_if_bounced(token)
            now = time.monotonic()
            if now >= deadline:
                raise DeliveryTimeout(
                    f"letter not found within {task.email_timeout:g}s of acceptance ({receipt.reply})",
                    phase="mailbox_search",
                )
            # Checks start every poll_interval (not poll_interval after the last one ended), so the
            # detection delay of polling stays below the interval.
            wait = max(0.0, min(check_started + task.incoming.poll_interval, deadline) - now)
            if session.snapshot:  # POP3: a session never sees new mail; log in again after the wait
                await session.close()
                session = None
                await asyncio.sleep(wait)
            else:
                try:
                    await session.wait_for_change(wait)
                except ProbeError as exc:
                    exc.phase = exc.phase or "mailbox_search"  # waiting (IDLE) is part of searching
                    raise
    except ProbeError:
        raise
    except OSError as exc:
        raise ProtocolFailure(f"mailbox connection failed: {exc.strerror or exc}") from None
    finally:
        if session is not None:
            await session.close()


async def _remove(session: MailboxSession, mailbox: Mailbox, letters: SortedLetters, result: ProbeResult) -> None:
    mailbox.claim_late(letters.late)
    for bounce in letters.bounces:
        mailbox.late.pop(bounce.token.value, None)  # a late letter that bounced will not come
    result.swept += len(letters.swept)
    await session.delete(letters.to_delete)


async def tidy_up(clock: net.PhaseClock, mailbox: Mailbox, session: MailboxSession, result: ProbeResult) -> None:
    """Late letters and, when due, leftovers: in a phase of its own, never inside delivery time.
    A POP3 session always looks (it is the login check, and reads each new letter's headers once);
    an IMAP session only when a sweep is due (its searches look for late letters anyway)."""
    sweep_before = mailbox.claim_sweep()
    if sweep_before is None and not session.snapshot:
        return
    async with clock.phase("mailbox_sweep"):
        found = await session.find(list(mailbox.late), sweep_before)
        letters = sort_found(found, None, mailbox.late)
        if letters.to_delete:
            await _remove(session, mailbox, letters, result)

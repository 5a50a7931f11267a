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

from exporter import imap, net, pop3, smtp
from exporter.config import MAX_EMAIL_TIMEOUT, IncomingConfig, Protocol, TaskConfig
from exporter.dns import Resolution
from exporter.errors import ConnectFailure, DeliveryTimeout, DNSFailure, ProbeError, ProtocolFailure, Reason
from exporter.mailbox import FoundLetter, MailboxSession, raise_if_bounced, split_bounces
from exporter.message import Signer, Token, build_letter

log = logging.getLogger(__name__)

Resolve = Callable[[str], Awaitable[Resolution]]
# Signed letters older than this are leftovers of earlier runs (a crash, a restart while letters
# travelled): no probe can still be waiting for them, since the email timeout is at most an hour.
SWEEP_AGE = 2 * MAX_EMAIL_TIMEOUT
# Every phase a probe can time, in the order a round trip goes through them.
PHASES = (
    "smtp_dns", "smtp_connect", "smtp_tls", "smtp_greeting", "smtp_auth", "smtp_submit",
    "mailbox_dns", "mailbox_connect", "mailbox_tls", "mailbox_login", "mailbox_search", "mailbox_delete",
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

    ``memo`` remembers POP3 letters already known not to be ours; ``late`` holds the tokens of letters
    that were accepted but not seen by their own probe (token -> acceptance time), so that a later
    probe can recognise them when they do arrive, count them as late and clean them up.
    """

    config: IncomingConfig
    signer: Signer
    memo: set[str] = field(default_factory=set)
    late: dict[str, float] = field(default_factory=dict)
    on_late: Callable[[FoundLetter, float], None] = lambda letter, accepted: None

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
            session = await imap.open_session(self.config, connected, clock, self.signer)
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
    # IMAP: log in while the letter is being sent, so the first search can run the moment SMTP accepts it
    # and login time does not count as delivery time. POP3 sees only mail present at login: open later.
    early = None
    if task.incoming.protocol is Protocol.IMAP:
        early = asyncio.ensure_future(mailbox.open(clock, resolve, result))
    try:
        receipt = await _send(device, task, token, clock, resolve, result)
        session = await early if early is not None else None
    except BaseException:
        if early is not None:
            await _close_early(early)
        raise
    letter, seen = await wait_for_letter(task, clock, resolve, mailbox, session, token, result, receipt)
    result.delivery_seconds = max(0.0, seen - receipt.accepted_monotonic)
    if letter.server_time is not None:
        result.server_delivery_seconds = letter.server_time - receipt.accepted_wall


async def _close_early(early: asyncio.Future[MailboxSession]) -> None:
    if not early.done():
        early.cancel()
    try:
        session = await early
    except (asyncio.CancelledError, Exception):
        return
    await session.close()


async def _send(
    device: str, task: TaskConfig, token: Token, clock: net.PhaseClock, resolve: Resolve, result: ProbeResult
) -> smtp.Receipt:
    connected = await connect_leg(clock, resolve, result, "smtp", task.smtp.host, task.smtp.port)
    result.smtp_address = connected.address
    letter = build_letter(token, task.sender, task.destination, device, task.name)
    receipt = await smtp.send_letter(task.smtp, connected, clock, letter, task.sender, task.destination)
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
    sweep_before: float | None = time.time() - SWEEP_AGE  # the first search of a probe also sweeps
    try:
        while True:
            check_started = time.monotonic()
            if session is None:
                session = await mailbox.open(clock, resolve, result)
            async with clock.phase("mailbox_search"):
                found = await session.find([token.value, *mailbox.late], sweep_before)
            seen = time.monotonic()
            found, bounces = split_bounces(found)
            mine = [letter for letter in found if letter.token.value == token.value]
            others = [letter for letter in found if letter not in mine]
            late = mailbox.claim_late(others)
            swept = [letter for letter in others if letter not in late]  # found only because they are old
            result.swept += len(swept)
            sweep_before = None
            to_delete = mine + late + swept + bounces
            if to_delete:
                async with clock.phase("mailbox_delete"):
                    await session.delete(to_delete)
            if mine:
                return mine[0], seen
            raise_if_bounced(bounces, token, mailbox.late)
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

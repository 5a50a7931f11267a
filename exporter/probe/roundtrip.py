"""One round trip: send the probe letter over SMTP, find it in the mailbox, delete it.

The result is a value (probe.result.ProbeResult): success, or exactly one failure reason, with
per-phase timings and the delivery time (SMTP server accepted the letter -> the letter was seen).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from exporter.auth.credentials import obtain
from exporter.config.model import TaskConfig
from exporter.legs import smtp
from exporter.legs.mailbox import MailboxSession
from exporter.legs.outbox import Outbox
from exporter.letter.arrival import Placement
from exporter.letter.compose import build_letter
from exporter.letter.token import Signer, Token
from exporter.net.resolve import Resolve
from exporter.probe.clock import PhaseClock
from exporter.probe.dial import dial, dial_mx
from exporter.probe.errors import FiledAsJunk, ProbeError, Reason
from exporter.probe.phases import Leg, Phase
from exporter.probe.result import ProbeResult
from exporter.probe.watch import Mailbox, tidy_up, wait_for_letter
from exporter.transcript import note_letter, recording

log = logging.getLogger(__name__)


async def run_probe(
    device: str,
    task: TaskConfig,
    signer: Signer,
    resolve: Resolve,
    mailbox: Mailbox | None = None,
    outbox: Outbox | None = None,
) -> ProbeResult:
    """Never raises (but for cancellation): every failure becomes the result's reason. ``mailbox`` and
    ``outbox`` are the task's, kept across probes; without them (--once) nothing is kept after it."""
    token = signer.new_token()
    result = ProbeResult(device=device, task=task.name, token=token.value, started=time.time())
    clock = PhaseClock(task.completion_timeout)
    own_mailbox, own_outbox = mailbox is None, outbox is None
    mailbox = mailbox or Mailbox(task.incoming, signer)
    outbox = outbox or Outbox(task.smtp)
    secrets = (task.smtp.password, task.incoming.server.password)
    try:
        with recording(device, task.name, hide=secrets) as result.transcript:
            await _round_trip(device, task, token, clock, resolve, (mailbox, outbox), result)
        result.success = True
    except ProbeError as exc:
        result.reason, result.error, result.failed_phase = exc.reason, str(exc), exc.phase
        # Neither seen nor bounced, it may still arrive: recognise it then.
        if (
            result.accepted_wall is not None
            and result.delivery_seconds is None
            and exc.reason is not Reason.SMTP_REJECTED
        ):
            mailbox.late[token.value] = result.accepted_wall
    except Exception as exc:  # a bug or an unexpected library error must not kill the scheduler
        log.exception("probe %s/%s failed unexpectedly", device, task.name)
        result.reason, result.error = Reason.PROTOCOL, f"unexpected error: {type(exc).__name__}"
    finally:
        if own_mailbox:
            await mailbox.close()
        if own_outbox:
            await outbox.close()
        result.phases = dict(clock.durations)
        result.spans = clock.spans
        result.finished = time.time()
    return result


async def _round_trip(
    device: str,
    task: TaskConfig,
    token: Token,
    clock: PhaseClock,
    resolve: Resolve,
    kept: tuple[Mailbox, Outbox],
    result: ProbeResult,
) -> None:
    mailbox, outbox = kept
    # The mailbox is opened while SMTP connects, and DATA waits for it: a mailbox that cannot be
    # opened gets no letter (nobody would take it out again).
    early = asyncio.ensure_future(_prepare_mailbox(clock, resolve, mailbox, result))
    try:
        receipt = await _send(device, task, token, clock, resolve, outbox, result, lambda: _opened(early))
        session = await early
    except BaseException:
        await _close_early(early)
        raise
    letter, seen = await wait_for_letter(task, clock, mailbox, session, token, result, receipt)
    result.delivery_seconds = max(0.0, seen - receipt.accepted_monotonic)
    if letter.server_time is not None:
        result.server_delivery_seconds = letter.server_time - receipt.accepted_wall
    if letter.placement is Placement.JUNK and task.incoming.junk_is_failure:
        score = result.arrival.spam_score if result.arrival is not None else None
        given = f" (spam score {score:g})" if score is not None else ""
        raise FiledAsJunk(
            f"the letter arrived after {result.delivery_seconds:.3f}s, but in the junk folder{given}: "
            "its reader would not see it",
            phase=Phase.MAILBOX_SEARCH,
        )


async def _prepare_mailbox(
    clock: PhaseClock, resolve: Resolve, mailbox: Mailbox, result: ProbeResult
) -> MailboxSession:
    """The session the probe will search in, so that login time never counts as delivery time. A
    snapshot session (POP3 sees only the mail present at login) first tidies up, as the login check
    that also deals with late letters, leftovers and letters not seen before, so that the looks
    after DATA only read new letters; then it ends, and its next look logs in again."""
    session = await mailbox.open(clock, resolve, result)
    if session.sees_new_mail:
        return session
    try:
        await tidy_up(clock, mailbox, session, result)
        await session.pause(0)
    except BaseException:
        await session.close()
        raise
    return session


async def _opened(early: asyncio.Future[MailboxSession]) -> None:
    """Wait for the mailbox to be open; its failure ends the SMTP session before DATA."""
    await asyncio.wait([early])  # not ``await early``: a cancelled send must not cancel it too
    early.result()


async def _close_early(early: asyncio.Future[MailboxSession]) -> None:
    if not early.done():
        early.cancel()
    try:
        session = await early
    except (asyncio.CancelledError, Exception):
        return
    await session.close()


async def _send(
    device: str,
    task: TaskConfig,
    token: Token,
    clock: PhaseClock,
    resolve: Resolve,
    outbox: Outbox,
    result: ProbeResult,
    before_data: Callable[[], Awaitable[None]],
) -> smtp.Receipt:
    async def fresh() -> smtp.SmtpSession:
        credentials = await obtain(task.smtp, clock, Leg.SMTP)
        config = task.smtp
        if config.mx:  # the host that answered is the one TLS verifies
            host, connected = await dial_mx(clock, resolve, result.smtp, config.host, config.port)
            config = dataclasses.replace(config, host=host)
        else:
            connected = await dial(clock, resolve, Leg.SMTP, result.smtp, config.host, config.port)
        return await smtp.open_session(config, connected, clock, credentials)

    letter = build_letter(token, task.sender, task.destination, device, task.name, task.spam_test)
    note_letter(letter)
    receipt = await outbox.send(clock, letter, task.sender, task.destination, fresh, before_data)
    result.smtp_reply = receipt.reply
    result.smtp.address = receipt.address  # a kept session did not dial
    result.smtp.tls = receipt.tls
    result.accepted_wall = receipt.accepted_wall
    result.accepted_offset = receipt.accepted_monotonic - clock.origin
    return receipt

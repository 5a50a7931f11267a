"""The SMTP leg: hand the probe letter to the outgoing server, timing each phase.

Phases: smtp_tls (implicit TLS handshake, or STARTTLS), smtp_greeting (banner and EHLO),
smtp_auth (one explicit mechanism, one attempt), smtp_submit (MAIL, RCPT, DATA). aiosmtplib's
public API is used here; its private hook and its exceptions are clients.smtp's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

from exporter.auth import sasl
from exporter.auth.credentials import Credentials
from exporter.clients.smtp import HandshakeTimedSMTP, translate_error
from exporter.config.model import Security, SMTPConfig
from exporter.net.connect import GOODBYE_SECONDS, Connected
from exporter.net.tls import GREETING_HINT, TLSFacts, client_context, tls_facts
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import AuthFailure, ProbeError, TLSFailure
from exporter.probe.phases import Phase
from exporter.sanitise import server_text

# One mechanism, chosen in this order of preference from what the server offers. aiosmtplib's
# login() would try every mechanism after a failure: several failed logins per probe lock accounts.
AUTH_PREFERENCE = ("plain", "login", "cram-md5")


@dataclass(frozen=True)
class Receipt:
    """What the SMTP server said when it took the letter."""

    reply: str  # the final DATA reply, sanitised (sanitise.server_text), e.g. "250 2.0.0 Ok: queued as 4Xy1Z2"
    accepted_monotonic: float
    accepted_wall: float
    tls: TLSFacts | None
    address: str  # the server's address that took it


class SmtpSession:
    """An open SMTP session, logged in where the task says so, ready for a letter."""

    def __init__(self, client: HandshakeTimedSMTP, address: str, tls: TLSFacts | None) -> None:
        self.client = client
        self.address = address
        self.tls = tls
        self._idle = True  # no transaction begun or left unfinished: another letter may follow

    @property
    def reusable(self) -> bool:
        """Fit for another letter (persistent: true, legs.keep): connected, its last letter taken."""
        return self._idle and self.client.is_connected

    async def envelope(self, clock: PhaseClock, sender: str, destination: str) -> None:
        """MAIL FROM and RCPT TO: the letter's transaction begins."""
        client = self.client
        client.timeout = clock.limit  # a kept session serves probes with clocks of their own
        self._idle = False
        # RET=HDRS (RFC 3461): a bounce returns only the letter's headers. They prove which letter bounced,
        # keep the bounce small, and a filter that refused the body (a spam test) does not refuse its bounce.
        options = ["RET=HDRS"] if client.supports_extension("dsn") else []
        if client.supports_extension("pipelining"):
            async with _phase(clock, Phase.SMTP_SUBMIT, "MAIL FROM and RCPT TO"):
                await client.envelope(sender, destination, options)
            return
        async with _phase(clock, Phase.SMTP_SUBMIT, "MAIL FROM"):
            await client.mail(sender, options=options)
        async with _phase(clock, Phase.SMTP_SUBMIT, "RCPT TO", accumulate=True):
            await client.rcpt(destination)

    async def hand_over(
        self, clock: PhaseClock, letter: bytes, before_data: Callable[[], Awaitable[None]] | None = None
    ) -> Receipt:
        """DATA, after ``before_data``: if that raises, no letter is sent (the mailbox login failed:
        nobody would take it), and the session is not fit for another (its transaction is open)."""
        if before_data is not None:
            await before_data()
        async with _phase(clock, Phase.SMTP_SUBMIT, "DATA", accumulate=True):
            response = await self.client.data(letter)
        self._idle = True
        reply = server_text(f"{response.code} {response.message}")
        return Receipt(reply, time.monotonic(), time.time(), self.tls, self.address)

    async def close(self) -> None:
        await _quit(self.client)


async def open_session(
    config: SMTPConfig, connected: Connected, clock: PhaseClock, credentials: Credentials | None = None
) -> SmtpSession:
    """Greeting, EHLO, TLS as configured and, with ``credentials``, AUTH."""
    client = HandshakeTimedSMTP(
        hostname=config.host,
        sock=connected.sock,
        use_tls=config.security is Security.TLS,
        start_tls=False,
        tls_context=client_context(config.tls),
        local_hostname=config.helo_name,
        timeout=clock.limit,
    )
    try:
        await _open(client, config, clock)
        if credentials is not None:
            async with _phase(clock, Phase.SMTP_AUTH, "AUTH"):
                await _authenticate(client, credentials, config)
    except BaseException:
        await _quit(client)
        if client.connected_at is None:
            connected.sock.close()  # no transport took the socket over: it is still ours to close
        raise
    return SmtpSession(client, connected.address, tls_facts(client.get_transport_info("ssl_object")))


async def _open(client: HandshakeTimedSMTP, config: SMTPConfig, clock: PhaseClock) -> None:
    if config.security is Security.TLS:
        start = time.monotonic()
        try:
            async with _phase(clock, Phase.SMTP_TLS, "the TLS handshake"):
                await client.connect()
        except ProbeError as exc:
            if client.connected_at is not None and not isinstance(exc, TLSFailure):
                exc.phase = Phase.SMTP_GREETING  # TLS was up: the banner is what failed
            raise
        # aiosmtplib's connect() does handshake and banner in one call: split it where the handshake ended.
        if client.connected_at is not None:
            clock.split(Phase.SMTP_TLS, Phase.SMTP_GREETING, start, client.connected_at, time.monotonic())
        async with _phase(clock, Phase.SMTP_GREETING, "EHLO", accumulate=True):
            await client.ehlo()
        return
    async with _phase(clock, Phase.SMTP_GREETING, "the greeting", hint=GREETING_HINT):
        await client.connect()
        await client.ehlo()
    offered = client.supports_extension("starttls")
    if config.security is Security.STARTTLS or (config.security is Security.MAY and offered):
        async with _phase(clock, Phase.SMTP_TLS, "STARTTLS"):
            if not offered:
                raise TLSFailure("server does not offer STARTTLS")
            await client.starttls(server_hostname=config.host)
        async with _phase(clock, Phase.SMTP_GREETING, "EHLO", accumulate=True):
            await client.ehlo()


async def _authenticate(client: aiosmtplib.SMTP, credentials: Credentials, config: SMTPConfig) -> None:
    if not client.supports_extension("auth"):
        hint = "" if client.get_transport_info("sslcontext") else " (many servers offer AUTH only over TLS)"
        raise AuthFailure(f"server does not offer AUTH{hint}")
    offered = [m.lower() for m in client.server_auth_methods]
    if credentials.mechanism is not None:
        await _bearer(client, credentials, offered, config)
        return
    mechanism = next((m for m in AUTH_PREFERENCE if m in offered), None)
    if mechanism is None:
        raise AuthFailure(f"no supported AUTH mechanism offered (server offers: {' '.join(offered)})")
    method = getattr(client, f"auth_{mechanism.replace('-', '')}")
    await method(credentials.user, credentials.secret.reveal())


async def _bearer(client: aiosmtplib.SMTP, credentials: Credentials, offered: list[str], config: SMTPConfig) -> None:
    """AUTH with an OAuth2 token (XOAUTH2 or OAUTHBEARER), its initial response on the command line
    (a token is at most 8 KB: the line stays within RFC 4954's 12,288 octets). A refusal comes as a
    334 error challenge first, answered so that the server ends the exchange."""
    mechanism = credentials.mechanism
    assert mechanism is not None
    if mechanism.value not in offered:
        raise AuthFailure(f"server does not offer AUTH {mechanism.wire} (it offers: {' '.join(offered)})")
    message = sasl.initial_response(mechanism, credentials.user, credentials.secret.reveal(), config.host, config.port)
    reply = await client.execute_command(b"AUTH", mechanism.wire.encode(), sasl.encoded(message).encode())
    challenge = None
    if reply.code == 334:
        challenge = reply.message
        reply = await client.execute_command(sasl.encoded(sasl.abort_response(mechanism)).encode())
    if reply.code == 235:
        return
    credentials.rejected()
    said = f" ({sasl.describe_challenge(challenge)})" if challenge is not None else ""
    raise AuthFailure(f"server rejected the token{said}: {server_text(f'{reply.code} {reply.message}')}")


async def _quit(client: aiosmtplib.SMTP) -> None:
    """Say goodbye politely, but never let a slow QUIT delay or fail a probe that already has its answer."""
    try:
        async with asyncio.timeout(GOODBYE_SECONDS):
            if client.is_connected:
                await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()


@contextlib.asynccontextmanager
async def _phase(
    clock: PhaseClock, name: Phase, command: str, accumulate: bool = False, hint: str = ""
) -> AsyncIterator[None]:
    """A timed phase whose aiosmtplib errors become probe failures naming the command."""
    async with clock.phase(name, accumulate=accumulate, hint=hint):
        try:
            yield
        except ProbeError:
            raise
        except Exception as exc:
            raise translate_error(exc, command) from None

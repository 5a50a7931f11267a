"""The SMTP leg: hand the probe letter to the outgoing server, timing each phase.

Phases: smtp_tls (implicit TLS handshake, or STARTTLS), smtp_greeting (banner and EHLO),
smtp_auth (one explicit mechanism, one attempt), smtp_submit (MAIL, RCPT, DATA).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiosmtplib

from exporter.config.load import Security, ServerConfig
from exporter.net import connect as net
from exporter.probe.errors import (
    AuthFailure,
    ProbeError,
    ProtocolFailure,
    ServerTimeout,
    SMTPRejected,
    TLSFailure,
    server_text,
)

# One mechanism, chosen in this order of preference from what the server offers. aiosmtplib's
# login() would try every mechanism after a failure: several failed logins per probe lock accounts.
AUTH_PREFERENCE = ("plain", "login", "cram-md5")
LOCAL_HOSTNAME = "mail-roundtrip-exporter.localhost"


@dataclass(frozen=True)
class Receipt:
    """What the SMTP server said when it took the letter."""

    reply: str  # the final DATA reply, sanitised (errors.server_text), e.g. "250 2.0.0 Ok: queued as 4Xy1Z2"
    accepted_monotonic: float
    accepted_wall: float
    certificate_not_after: float | None


async def send_letter(
    config: ServerConfig,
    connected: net.Connected,
    clock: net.PhaseClock,
    letter: bytes,
    sender: str,
    destination: str,
    before_data: Callable[[], Awaitable[None]] | None = None,
) -> Receipt:
    """``before_data`` runs between RCPT and DATA, outside any phase; if it raises, the session ends
    with QUIT instead of DATA, so no letter is sent (the mailbox login failed: nobody would take it)."""
    client = _HandshakeTimedSMTP(
        hostname=config.host,
        sock=connected.sock,
        use_tls=config.security is Security.TLS,
        start_tls=False,
        tls_context=net.client_context(config.tls),
        local_hostname=LOCAL_HOSTNAME,
        timeout=clock.limit,
    )
    try:
        await _open(client, config, clock)
        if config.user is not None and config.password is not None:
            async with _phase(clock, "smtp_auth", "AUTH"):
                await _authenticate(client, config.user, config.password.reveal())
        not_after = net.certificate_not_after(client.get_transport_info("ssl_object"))
        reply = await _submit(client, clock, letter, sender, destination, before_data)
        return Receipt(reply, time.monotonic(), time.time(), not_after)
    finally:
        await _quit(client)
        if client.connected_at is None:
            connected.sock.close()  # no transport took the socket over: it is still ours to close


async def _open(client: _HandshakeTimedSMTP, config: ServerConfig, clock: net.PhaseClock) -> None:
    if config.security is Security.TLS:
        start = time.monotonic()
        try:
            async with _phase(clock, "smtp_tls", "the TLS handshake"):
                await client.connect()
        except ProbeError as exc:
            if client.connected_at is not None and not isinstance(exc, TLSFailure):
                exc.phase = "smtp_greeting"  # TLS was up: the banner is what failed
            raise
        # aiosmtplib's connect() does handshake and banner in one call: split it where the handshake ended.
        if client.connected_at is not None:
            clock.durations["smtp_tls"] = client.connected_at - start
            clock.durations["smtp_greeting"] = time.monotonic() - client.connected_at
        async with _phase(clock, "smtp_greeting", "EHLO", accumulate=True):
            await client.ehlo()
        return
    async with _phase(clock, "smtp_greeting", "the greeting", hint=net.GREETING_HINT):
        await client.connect()
        await client.ehlo()
    if config.security is Security.STARTTLS:
        async with _phase(clock, "smtp_tls", "STARTTLS"):
            if not client.supports_extension("starttls"):
                raise TLSFailure("server does not offer STARTTLS")
            await client.starttls(server_hostname=config.host)
        async with _phase(clock, "smtp_greeting", "EHLO", accumulate=True):
            await client.ehlo()


async def _authenticate(client: aiosmtplib.SMTP, user: str, password: str) -> None:
    if not client.supports_extension("auth"):
        hint = "" if client.get_transport_info("sslcontext") else " (many servers offer AUTH only over TLS)"
        raise AuthFailure(f"server does not offer AUTH{hint}")
    offered = [m.lower() for m in client.server_auth_methods]
    mechanism = next((m for m in AUTH_PREFERENCE if m in offered), None)
    if mechanism is None:
        raise AuthFailure(f"no supported AUTH mechanism offered (server offers: {' '.join(offered)})")
    method = getattr(client, f"auth_{mechanism.replace('-', '')}")
    await method(user, password)


async def _submit(
    client: aiosmtplib.SMTP,
    clock: net.PhaseClock,
    letter: bytes,
    sender: str,
    destination: str,
    before_data: Callable[[], Awaitable[None]] | None,
) -> str:
    async with _phase(clock, "smtp_submit", "MAIL FROM"):
        await client.mail(sender)
    async with _phase(clock, "smtp_submit", "RCPT TO", accumulate=True):
        await client.rcpt(destination)
    if before_data is not None:
        await before_data()
    async with _phase(clock, "smtp_submit", "DATA", accumulate=True):
        response = await client.data(letter)
    return server_text(f"{response.code} {response.message}")


async def _quit(client: aiosmtplib.SMTP) -> None:
    """Say goodbye politely, but never let a slow QUIT delay or fail a probe that already has its answer."""
    try:
        async with asyncio.timeout(2):
            if client.is_connected:
                await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        pass
    finally:
        client.close()


@contextlib.asynccontextmanager
async def _phase(
    clock: net.PhaseClock, name: str, command: str, accumulate: bool = False, hint: str = ""
) -> AsyncIterator[None]:
    """A timed phase whose aiosmtplib errors become probe failures naming the command."""
    async with clock.phase(name, accumulate=accumulate, hint=hint):
        try:
            yield
        except ProbeError:
            raise
        except Exception as exc:
            raise translate_error(exc, command) from None


def translate_error(exc: BaseException, command: str) -> ProbeError:
    """Map aiosmtplib's exception hierarchy onto our failure reasons."""
    tls_cause = _tls_cause(exc)
    if tls_cause is not None:
        return net.tls_failure(tls_cause)
    if isinstance(exc, TimeoutError):
        return ServerTimeout(f"no answer to {command}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return AuthFailure(f"server rejected the credentials: {_reply(exc)}")
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return SMTPRejected("; ".join(f"RCPT {e.recipient} refused: {_reply(e)}" for e in exc.recipients))
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return SMTPRejected(f"RCPT {exc.recipient} refused: {_reply(exc)}")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return SMTPRejected(f"MAIL FROM {exc.sender} refused: {_reply(exc)}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _response_failure(exc, command)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError | aiosmtplib.SMTPConnectError):
        return ProtocolFailure(f"connection closed by the server during {command}")
    return ProtocolFailure(f"{command} failed: {server_text(str(exc))}")


def _response_failure(exc: aiosmtplib.SMTPResponseException, command: str) -> ProbeError:
    if command == "STARTTLS":
        return TLSFailure(f"STARTTLS refused: {_reply(exc)}")
    if 400 <= exc.code < 600:
        return SMTPRejected(f"{command} refused: {_reply(exc)}")
    return ProtocolFailure(f"unexpected reply to {command}: {_reply(exc)}")


def _tls_cause(exc: BaseException | None) -> BaseException | None:
    """aiosmtplib wraps ssl errors in SMTPConnectError: look down the chain for the real one."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, ssl.SSLError | ssl.CertificateError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    # aiosmtplib reports a line that is no SMTP reply at all with code -1: show only the line then.
    return server_text(f"{exc.code} {exc.message}" if exc.code >= 0 else exc.message)


def check_aiosmtplib() -> None:
    """Fail loudly if aiosmtplib lost the private hook the TLS/greeting split relies on.

    Without it the override below is never called: no error, but the wait for the banner silently
    moves from smtp_greeting into smtp_tls. pyproject.toml pins the tested range; this catches an
    install outside it (tests/test_measure.py checks the split itself).
    """
    hook = getattr(aiosmtplib.SMTP, "_create_connection", None)
    if not inspect.iscoroutinefunction(hook) or list(inspect.signature(hook).parameters) != ["self", "timeout"]:
        raise ImportError(
            f"aiosmtplib {aiosmtplib.__version__} has no SMTP._create_connection(self, timeout): "
            "install the version pinned in pyproject.toml"
        )


class _HandshakeTimedSMTP(aiosmtplib.SMTP):
    """Notes when the transport is up (for implicit TLS: the handshake ended); aiosmtplib's connect()
    reports that only together with the banner. Overrides a private method: see check_aiosmtplib."""

    connected_at: float | None = None

    async def _create_connection(self, timeout: float | None) -> Any:  # noqa: ASYNC109 (override)
        loop = self.loop
        self.loop = _LoopWatch(loop, self)  # type: ignore[assignment]
        try:
            return await super()._create_connection(timeout)
        finally:
            self.loop = loop


class _LoopWatch:
    """Passes everything to the real loop; records when create_connection (on our socket, + TLS) finished."""

    def __init__(self, loop: Any, client: _HandshakeTimedSMTP) -> None:
        self._loop = loop
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._loop.create_connection(*args, **kwargs)
        self._client.connected_at = time.monotonic()
        return result


check_aiosmtplib()

"""The one adapter to aiosmtplib's internals, and the one place that maps its exceptions.

The TLS/greeting split overrides the private SMTP._create_connection (see check_aiosmtplib, run
at import: an aiosmtplib without it fails loudly instead of silently moving the banner wait into
smtp_tls); translate_error maps aiosmtplib's exception hierarchy onto the probe's failure reasons.
"""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
from typing import Any

import aiosmtplib
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import MAX_RESPONSE_LENGTH, SMTPProtocol

from exporter.net.tls import tls_failure
from exporter.probe.errors import AuthFailure, ProbeError, ProtocolFailure, ServerTimeout, SMTPRejected, TLSFailure
from exporter.probe.phases import Leg
from exporter.sanitise import server_text
from exporter.transcript import REDACTED, note


def translate_error(exc: BaseException, command: str) -> ProbeError:
    """Map aiosmtplib's exception hierarchy onto our failure reasons."""
    tls_cause = _tls_cause(exc)
    if tls_cause is not None:
        return tls_failure(tls_cause)
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


class HandshakeTimedSMTP(aiosmtplib.SMTP):
    """Notes when the transport is up (for implicit TLS: the handshake ended); aiosmtplib's connect()
    reports that only together with the banner. Overrides a private method: see check_aiosmtplib."""

    connected_at: float | None = None
    _in_auth = False  # between AUTH and its final reply every line we send is a secret

    async def _create_connection(self, timeout: float | None) -> Any:  # noqa: ASYNC109 (override)
        loop = self.loop
        self.loop = _LoopWatch(loop, self)  # type: ignore[assignment]
        try:
            banner = await super()._create_connection(timeout)
        finally:
            self.loop = loop
        _heard(banner)
        return banner

    async def execute_command(self, *args: bytes, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        if args[:1] == (b"AUTH",):
            self._in_auth = True
            note(Leg.SMTP, True, b" ".join(args[:2]) + (f" {REDACTED}".encode() if len(args) > 2 else b""))
        else:
            note(Leg.SMTP, True, REDACTED if self._in_auth else b" ".join(args))
        response = await super().execute_command(*args, **kwargs)
        self._in_auth = self._in_auth and response.code == 334  # 334: the exchange goes on
        _heard(response)
        return response

    async def envelope(self, sender: str, recipient: str, options: list[str]) -> None:
        """MAIL FROM and RCPT TO in one write (RFC 2920 PIPELINING: the caller checks that the
        server offers it), their replies read in order: one round trip instead of two. Raises as
        mail() and rcpt() do; a refusal that came before the connection was lost is the failure."""
        mail = [b"MAIL", b"FROM:" + quote_address(sender).encode(), *(option.encode() for option in options)]
        rcpt = [b"RCPT", b"TO:" + quote_address(recipient).encode()]
        replies, lost = await self._pipelined([mail, rcpt])
        if replies and replies[0].code != 250:
            raise aiosmtplib.SMTPSenderRefused(replies[0].code, replies[0].message, sender)
        if len(replies) > 1 and replies[1].code not in (250, 251):
            raise aiosmtplib.SMTPRecipientRefused(replies[1].code, replies[1].message, recipient)
        if lost is not None:
            raise lost

    async def _pipelined(
        self, commands: list[list[bytes]]
    ) -> tuple[list[aiosmtplib.SMTPResponse], aiosmtplib.SMTPServerDisconnected | None]:
        """The replies to ``commands``, written at once, and why not all came (the connection was lost).

        aiosmtplib reads one reply per command and drops what comes while a reply waits to be picked
        up, so while the replies come in, this reads them itself (with aiosmtplib's parser and its
        limits), and hands the protocol back when they are all there."""
        protocol = self.protocol
        lines = [b" ".join(command) + b"\r\n" for command in commands]
        if protocol is None or protocol._command_lock is None or protocol._response_waiter is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        if any(b"\r" in line[:-2] or b"\n" in line[:-2] for line in lines):
            raise ValueError("Command arg contains a prohibited control character")
        async with protocol._command_lock, asyncio.timeout(self.timeout):
            replies = _Replies(protocol, len(lines))
            protocol.data_received = replies.feed  # type: ignore[method-assign]
            try:
                for line in lines:
                    note(Leg.SMTP, True, line[:-2])
                protocol.write(b"".join(lines))
                lost: asyncio.Future[Any] = protocol._response_waiter  # only connection_lost and EOF settle it now
                await asyncio.wait([replies.done, lost], return_when=asyncio.FIRST_COMPLETED)
                if replies.done.done():
                    return replies.done.result(), None
                return replies.received, _lost(lost)
            finally:
                del protocol.data_received  # aiosmtplib's own again
                protocol._buffer.clear()  # bytes past the replies are no reply to the next command
                replies.done.cancel()

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        note(Leg.SMTP, True, f"DATA ({len(message)} bytes of letter)")
        response = await super().data(message, **kwargs)
        _heard(response)
        return response


def _lost(waiter: asyncio.Future[Any]) -> aiosmtplib.SMTPServerDisconnected:
    exc = waiter.exception()
    return (
        exc
        if isinstance(exc, aiosmtplib.SMTPServerDisconnected)
        else aiosmtplib.SMTPServerDisconnected("Connection lost")
    )


class _Replies:
    """Collects ``count`` replies as their bytes come in."""

    def __init__(self, protocol: SMTPProtocol, count: int) -> None:
        self._protocol = protocol
        self._count = count
        self.received: list[aiosmtplib.SMTPResponse] = []
        self.done: asyncio.Future[list[aiosmtplib.SMTPResponse]] = asyncio.get_running_loop().create_future()

    def feed(self, data: bytes) -> None:
        if self.done.done():
            return
        buffer = self._protocol._buffer
        buffer.extend(data)
        try:
            if len(buffer) > MAX_RESPONSE_LENGTH:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            while len(self.received) < self._count and (reply := self._protocol._read_response_from_buffer()):
                _heard(reply)
                self.received.append(reply)
        except aiosmtplib.SMTPResponseException as exc:
            self.done.set_exception(exc)
            return
        if len(self.received) == self._count:
            self.done.set_result(self.received)


def _heard(response: aiosmtplib.SMTPResponse) -> None:
    note(Leg.SMTP, False, f"{response.code} {response.message}")


class _LoopWatch:
    """Passes everything to the real loop; records when create_connection (on our socket, + TLS) finished."""

    def __init__(self, loop: Any, client: HandshakeTimedSMTP) -> None:
        self._loop = loop
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loop, name)

    async def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._loop.create_connection(*args, **kwargs)
        self._client.connected_at = time.monotonic()
        return result


check_aiosmtplib()

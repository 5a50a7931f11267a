"""Shared transport pieces for every leg: phase timing, TCP connect over resolved addresses, TLS.

We connect sockets ourselves (instead of letting aiosmtplib/aioimaplib resolve and connect) so that
DNS is its own phase with its own resolver, several addresses are tried in order, and TLS still
verifies the configured host name even when a custom DNS mapping sent us to another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from exporter.config.load import TLSOptions
from exporter.probe.errors import ConnectFailure, ProbeError, ServerTimeout, TLSFailure


@dataclass
class PhaseClock:
    """Times named phases and bounds each one by the completion timeout."""

    limit: float
    durations: dict[str, float] = field(default_factory=dict)

    @contextlib.asynccontextmanager
    async def phase(
        self, name: str, on_timeout: type[ProbeError] = ServerTimeout, accumulate: bool = False, hint: str = ""
    ) -> AsyncIterator[None]:
        """Time one phase. ``accumulate`` adds to an earlier run of the same phase (EHLO after STARTTLS);
        otherwise the last run counts: for repeated searches, the one that found the letter."""
        start = time.monotonic()
        earlier = self.durations.get(name, 0.0) if accumulate else 0.0
        try:
            async with asyncio.timeout(self.limit):
                yield
        except TimeoutError:
            raise on_timeout(f"no answer within {self.limit:g}s{hint}", phase=name) from None
        except ProbeError as exc:
            exc.phase = exc.phase or name
            raise
        finally:
            self.durations[name] = earlier + time.monotonic() - start


# A clear-text client on an implicit-TLS port waits for a greeting that never comes: say so.
GREETING_HINT = " (waiting for the greeting: if this port speaks TLS from the start, set security: tls)"


@dataclass(frozen=True)
class Connected:
    sock: socket.socket
    address: str  # the IP address that answered, for the status page


async def connect_any(addresses: Sequence[str], port: int) -> Connected:
    """Connect to the first address that accepts, in order, as a mail client would."""
    if not addresses:
        raise ConnectFailure("no addresses to connect to")
    errors = []
    for address in addresses:
        try:
            return Connected(await _connect_one(address, port), address)
        except OSError as exc:
            # asyncio's message ("Connect call failed ...") hides the errno's meaning: spell it out.
            errors.append(f"{format_address(address, port)}: {os.strerror(exc.errno) if exc.errno else exc}")
    raise ConnectFailure("; ".join(errors))


async def _connect_one(address: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # asyncio disables Nagle only for sockets it made itself (or created with proto IPPROTO_TCP), so
    # a socket we bring along would hold each small write back until the previous one is ACKed:
    # 40 ms of delayed ACK landed in smtp_greeting against Exim. Set it here, for every leg.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def format_address(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@functools.lru_cache(maxsize=64)
def client_context(options: TLSOptions) -> ssl.SSLContext:
    """One context per distinct TLS setting: loading the CA store costs milliseconds each time."""
    context = ssl.create_default_context(cafile=options.ca_file)
    if options.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def tls_failure(exc: BaseException) -> TLSFailure:
    """A readable TLS error: what failed verification, not an OpenSSL error stack."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TLSFailure(f"certificate verification failed: {exc.verify_message}")
    if isinstance(exc, ssl.SSLError):
        return TLSFailure(f"TLS handshake failed: {exc.reason or exc}")
    if isinstance(exc, ConnectionError | EOFError):
        return TLSFailure("connection closed during the TLS handshake")
    return TLSFailure(f"TLS handshake failed: {exc}")


def certificate_not_after(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> float | None:
    """The server certificate's not-after as a Unix time (None when unverified: no parsed cert)."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    not_after = cert.get("notAfter") if cert else None
    return float(ssl.cert_time_to_seconds(not_after)) if isinstance(not_after, str) else None

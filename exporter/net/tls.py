"""TLS for every leg: client contexts (cached per setting), readable handshake failures, certificate dates."""

from __future__ import annotations

import asyncio.sslproto
import functools
import os
import ssl
from dataclasses import dataclass

from exporter.config.model import TLSOptions
from exporter.probe.errors import TLSFailure

# asyncio gives every TLS connection a read buffer of 256 KB, zero-filled (so resident) as the connection
# is made, and reads up to that much at a time. A probe's replies are a few KB, and a persistent session
# keeps its buffer: 1,000 kept sessions would hold 256 MB. One TLS record's worth (16 KB of plain text)
# is enough: a larger reply is read in more passes. (100 tasks keeping both legs' sessions: 65 -> 62 MB
# against 32 KB, the same CPU per probe.)
TLS_READ_BUFFER = 16 * 1024
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER

# A clear-text client on an implicit-TLS port waits for a greeting that never comes: say so.
GREETING_HINT = " (waiting for the greeting: if this port speaks TLS from the start, set security: tls)"


def client_context(options: TLSOptions) -> ssl.SSLContext:
    """One context per distinct TLS setting and CA file content: loading the CA store costs
    milliseconds each time, and a CA file replaced or rewritten in place must be read again."""
    return _context(options, _file_identity(options.ca_file))


def _file_identity(path: str | None) -> tuple[int, int, int, int] | None:
    """What changes when a file is replaced or rewritten: its inode, device, size and mtime."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None  # loading will say what is wrong with it
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _context(options: TLSOptions, identity: tuple[int, int, int, int] | None) -> ssl.SSLContext:
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


@dataclass(frozen=True)
class TLSFacts:
    """What a leg's TLS session was: its protocol version and cipher, and the certificate's expiry."""

    version: str  # as OpenSSL names it: TLSv1.3
    cipher: str  # OpenSSL's name: TLS_AES_256_GCM_SHA384
    not_after: float | None  # Unix time; None when unverified (no parsed certificate)


def tls_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TLSFacts | None:
    """The facts of an established TLS session; None without TLS."""
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert()
    not_after = cert.get("notAfter") if cert else None
    cipher = ssl_object.cipher()
    return TLSFacts(
        version=ssl_object.version() or "unknown",
        cipher=cipher[0] if cipher else "unknown",
        not_after=float(ssl.cert_time_to_seconds(not_after)) if isinstance(not_after, str) else None,
    )

"""TCP connect over resolved addresses, one after the other, as a mail client does.

We connect sockets ourselves (instead of letting aiosmtplib/aioimaplib resolve and connect) so that
DNS is its own phase with its own resolver, several addresses are tried in order, and TLS still
verifies the configured host name even when a custom DNS mapping sent us to another address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.config.fields import join_host_port
from exporter.probe.errors import ConnectFailure

# A polite goodbye (QUIT, LOGOUT) after the probe has its answer is best effort: it never holds a
# probe up for longer than this.
GOODBYE_SECONDS = 2.0


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
            errors.append(f"{join_host_port(address, port)}: {os.strerror(exc.errno) if exc.errno else exc}")
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

"""Host name resolution for the legs: its own phase, so a slow resolver shows as dns, not connect."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from exporter.config import DeviceConfig, TaskConfig
from exporter.errors import DNSFailure


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[str, ...]
    cached: bool = False


class SystemResolver:
    """The operating system's resolver (honours /etc/hosts)."""

    async def resolve(self, host: str) -> Resolution:
        literal = _literal(host)
        if literal is not None:
            return Resolution((literal,), cached=True)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise DNSFailure(f"cannot resolve {host!r}: {exc.strerror}") from None
        return Resolution(tuple(dict.fromkeys(str(info[4][0]) for info in infos)))


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


class DeviceRun:
    """One run of a device's tasks: the scope in which device_cached answers are shared."""

    def __init__(self, device: DeviceConfig) -> None:
        self.device = device
        self._system = SystemResolver()

    def resolver(self, task: TaskConfig) -> Callable[[str], Awaitable[Resolution]]:
        return self._system.resolve

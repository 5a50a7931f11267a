"""A leg's first two phases: resolve its host (its own resolver, its own phase), then connect."""

from __future__ import annotations

from exporter.net.connect import Connected, connect_any
from exporter.net.resolve import Resolve
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import ConnectFailure, DNSFailure
from exporter.probe.phases import CONNECT_PHASE, DNS_PHASE, Leg
from exporter.probe.result import LegResult


async def dial(clock: PhaseClock, resolve: Resolve, leg: Leg, facts: LegResult, host: str, port: int) -> Connected:
    async with clock.phase(DNS_PHASE[leg], on_timeout=DNSFailure):
        resolution = await resolve(host)
    facts.dns_cached = resolution.cached
    async with clock.phase(CONNECT_PHASE[leg], on_timeout=ConnectFailure):
        connected = await connect_any(resolution.addresses, port)
    facts.address = connected.address
    return connected

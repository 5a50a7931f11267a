"""A leg's first two phases: resolve its host (its own resolver, its own phase), then connect; in MX
mode, the destination domain's MX hosts first, each tried in turn."""

from __future__ import annotations

from exporter.net.connect import Connected, connect_any
from exporter.net.resolve import Resolve
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import ConnectFailure, DNSFailure
from exporter.probe.phases import CONNECT_PHASE, DNS_PHASE, Leg, Phase
from exporter.probe.result import LegResult


async def dial(
    clock: PhaseClock, resolve: Resolve, leg: Leg, facts: LegResult, host: str, port: int, accumulate: bool = False
) -> Connected:
    async with clock.phase(DNS_PHASE[leg], on_timeout=DNSFailure, accumulate=accumulate):
        resolution = await resolve(host)
    facts.dns_cached = resolution.cached
    async with clock.phase(CONNECT_PHASE[leg], on_timeout=ConnectFailure, accumulate=accumulate):
        connected = await connect_any(resolution.addresses, port)
    facts.address = connected.address
    return connected


async def dial_mx(
    clock: PhaseClock, resolve: Resolve, facts: LegResult, domain: str, port: int
) -> tuple[str, Connected]:
    """As another domain's server delivers (RFC 5321 5.1): the MX hosts of ``domain`` in preference
    order (no MX records: the domain itself), each resolved and connected to in turn until one
    accepts. Every lookup counts in smtp_dns, every attempt in smtp_connect. The host that answered
    (for its TLS name and the report) and the connection."""
    async with clock.phase(Phase.SMTP_DNS, on_timeout=DNSFailure):
        mx = await resolve.mx(domain)
    failures: list[DNSFailure | ConnectFailure] = []
    for host in mx.addresses or (domain,):
        try:
            connected = await dial(clock, resolve, Leg.SMTP, facts, host, port, accumulate=True)
        except (DNSFailure, ConnectFailure) as exc:
            failures.append(exc)
            continue
        facts.mx_host = host
        return host, connected
    said = "; ".join(f"{host}: {exc.message}" for host, exc in zip(mx.addresses or (domain,), failures, strict=True))
    kind = ConnectFailure if any(isinstance(exc, ConnectFailure) for exc in failures) else DNSFailure
    phase = Phase.SMTP_CONNECT if kind is ConnectFailure else Phase.SMTP_DNS
    raise kind(f"no MX host of {domain} accepted a connection ({said})", phase=phase)

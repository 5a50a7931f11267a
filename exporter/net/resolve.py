"""Host name resolution for the legs: its own phase, so a slow resolver shows as dns, not connect.

Modes (``devices[].dns.mode``, overridable per task with ``tasks[].dns_mode``):

``device_cached`` (default)
    A name is looked up once per device run; every task of the device in that mode reuses the answer.
``non_cached``
    Every connection looks the name up afresh.
``ttl_cached``
    Answers are reused until their TTL runs out (the smallest TTL of the answer chain, CNAMEs
    included), across device runs: the cache lives in a :class:`ResolverCache` that outlives them.
``external``
    Like ``non_cached``, but the configuration must name the DNS servers (``dns.servers``).
``system``
    The operating system's resolver (getaddrinfo: /etc/hosts, nsswitch), never cached by us.

The first four query with dnspython: the ``dns.servers`` when given, else the nameservers of
/etc/resolv.conf. They do not read /etc/hosts; ``localhost`` is answered locally (RFC 6761).
The custom hosts table (``dns.hosts``) wins over every mode.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from exporter.config.fields import join_host_port
from exporter.config.model import DeviceConfig, DNSMode, TaskConfig
from exporter.probe.errors import DNSFailure

Servers = tuple[tuple[str, int], ...]
CacheKey = tuple[Servers, str, str]  # servers, name, "A" (A and AAAA) or "MX"

# RFC 6761 6.3: resolver libraries answer localhost themselves; the system resolver does it via /etc/hosts.
LOCALHOST = ("::1", "127.0.0.1")


@dataclass(frozen=True)
class Resolution:
    """Addresses in the order to try them (for an MX lookup: the MX hosts, in preference order), and
    whether the answer cost this call no DNS query.

    ``cached`` is True when the answer came from the device run's cache, the TTL cache, a query that
    another task had already started for the same name (joined, not repeated), the custom hosts table,
    an IP literal or ``localhost``. So the ``cache="miss"`` lookups counted in the metrics are exactly
    the lookups that went out to a resolver.
    """

    addresses: tuple[str, ...]
    cached: bool = False


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]
    ttl: float  # the smallest TTL across the answer chain, CNAMEs included


def _normalise(host: str) -> str:
    """Host names compare case-insensitively and with or without the root's trailing dot."""
    return host.rstrip(".").lower()


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


# --- caches ------------------------------------------------------------------------------------


class ResolverCache:
    """Answers by (servers, name); concurrent askers for one name share one in-flight query.

    With ``expire=True`` (ttl_cached) an answer is kept until its TTL has passed on ``clock``; with
    ``expire=False`` (one device run's cache) it is kept as long as the cache object. Failures are
    never kept: the next asker tries again, but those already waiting on the failed query share it.
    """

    def __init__(self, expire: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self._expire = expire
        self._clock = clock
        self._answers: dict[CacheKey, tuple[Answer, float]] = {}  # answer, expiry on clock
        self._pending: dict[CacheKey, asyncio.Task[Answer]] = {}

    async def get(self, key: CacheKey, fetch: Callable[[], Coroutine[Any, Any, Answer]]) -> Resolution:
        stored = self._answers.get(key)
        if stored is not None and self._clock() < stored[1]:
            return Resolution(stored[0].addresses, cached=True)
        pending = self._pending.get(key)
        joined = pending is not None
        if pending is None:
            pending = asyncio.create_task(fetch(), name=f"dns {key[2]} {key[1]}")
            self._pending[key] = pending
            pending.add_done_callback(functools.partial(self._settle, key))
        # Shielded: one asker's phase timeout or cancellation must not cancel the query the others wait on.
        answer = await asyncio.shield(pending)
        return Resolution(answer.addresses, cached=joined)

    def _settle(self, key: CacheKey, task: asyncio.Task[Answer]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        # exception() also marks a failure as seen, so a query nobody waits for any more logs nothing.
        if task.cancelled() or task.exception() is not None:
            return
        answer = task.result()
        now = self._clock()
        self._answers = {k: v for k, v in self._answers.items() if v[1] > now}  # drop what has expired
        self._answers[key] = (answer, now + answer.ttl if self._expire else math.inf)


# --- resolvers ---------------------------------------------------------------------------------


class SystemResolver:
    """The operating system's resolver (honours /etc/hosts)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout

    async def resolve(self, host: str) -> Resolution:
        literal = _literal(host)
        if literal is not None:
            return Resolution((literal,), cached=True)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout):
                infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except TimeoutError:
            raise DNSFailure(f"{host}: timed out after {self.timeout:g}s (system resolver)") from None
        except socket.gaierror as exc:
            raise DNSFailure(f"cannot resolve {host!r}: {exc.strerror}") from None
        return Resolution(tuple(dict.fromkeys(str(info[4][0]) for info in infos)))


class DNSResolver:
    """dnspython against the given servers, or against /etc/resolv.conf's when none are given."""

    def __init__(self, servers: Servers = ()) -> None:
        self.servers = servers
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _get(self) -> dns.asyncresolver.Resolver:
        # Built on first use, so a broken /etc/resolv.conf fails a probe (reason dns), not the scheduler.
        if self._resolver is None:
            if not self.servers:
                try:
                    self._resolver = dns.asyncresolver.Resolver()
                except dns.exception.DNSException as exc:
                    raise DNSFailure(f"no usable nameserver in /etc/resolv.conf: {exc}") from None
            else:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                # Nameserver objects, because each server may listen on its own port.
                self._resolver.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in self.servers]
        return self._resolver

    async def lookup(self, host: str, lifetime: float) -> Answer:
        """A and AAAA, queried concurrently; AAAA answers first, then A.

        That is roughly RFC 6724's preference for IPv6 as a mail client applies it, kept simple and
        deterministic: no reordering by reachability. ``lifetime`` bounds the whole lookup.
        """
        resolver = self._get()
        try:
            name = dns.name.from_text(host)
        except dns.exception.DNSException as exc:
            raise DNSFailure(f"{host}: invalid name: {exc}") from None
        results = await asyncio.gather(
            *(resolver.resolve(name, rdtype, raise_on_no_answer=False, lifetime=lifetime) for rdtype in ("AAAA", "A")),
            return_exceptions=True,
        )
        answers = [r for r in results if isinstance(r, dns.resolver.Answer) and r.rrset is not None]
        addresses = tuple(str(rdata.address) for answer in answers for rdata in answer)
        if addresses:
            return Answer(addresses, min(answer.chaining_result.minimum_ttl for answer in answers))
        errors = []
        for result in results:
            if isinstance(result, dns.exception.DNSException):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result  # a bug, not a DNS answer: the probe reports it as unexpected
        raise _failure(host, lifetime, resolver, errors)

    async def lookup_mx(self, domain: str, lifetime: float) -> Answer:
        """The MX hosts of ``domain`` in preference order (equal ones in the server's order, so a probe
        is repeatable); none when it has no MX records (the caller falls back to the domain itself,
        RFC 5321 5.1). A null MX (RFC 7505: the domain takes no mail) is a DNSFailure."""
        resolver = self._get()
        try:
            name = dns.name.from_text(domain)
            answer = await resolver.resolve(name, "MX", raise_on_no_answer=False, lifetime=lifetime)
        except dns.exception.DNSException as exc:
            raise _failure(domain, lifetime, resolver, [exc], "MX") from None
        if answer.rrset is None:
            return Answer((), max(0.0, answer.expiration - time.time()))  # negative caching, as long as DNS says
        records = sorted(answer, key=lambda record: int(record.preference))
        if any(record.exchange == dns.name.root for record in records):
            raise DNSFailure(f"{domain}: null MX (RFC 7505): the domain accepts no mail")
        hosts = tuple(dict.fromkeys(record.exchange.to_text(omit_final_dot=True) for record in records))
        return Answer(hosts, answer.chaining_result.minimum_ttl)


def _failure(
    host: str,
    lifetime: float,
    resolver: dns.asyncresolver.Resolver,
    errors: list[dns.exception.DNSException],
    kind: str = "A/AAAA",
) -> DNSFailure:
    """One readable message for both queries: NXDOMAIN wins, then the first error, then 'no records'."""
    if any(isinstance(error, dns.resolver.NXDOMAIN) for error in errors):
        return DNSFailure(f"{host}: NXDOMAIN")
    if not errors:
        return DNSFailure(f"{host}: no {kind} records")
    error = errors[0]
    if isinstance(error, dns.exception.Timeout):
        servers = ", ".join(_server_text(ns) for ns in resolver.nameservers)
        return DNSFailure(f"{host}: timed out after {lifetime:g}s querying {servers}")
    if isinstance(error, dns.resolver.NoNameservers):
        answers = "; ".join(f"{_server_text(str(e[0]))}: {e[3]}" for e in error.kwargs.get("errors", []))
        return DNSFailure(f"{host}: no server answered ({answers})")
    return DNSFailure(f"{host}: {error}")


def _server_text(nameserver: str | dns.nameserver.Nameserver) -> str:
    """``127.0.0.1:53`` / ``[::1]:53``, as in the config, rather than dnspython's ``Do53:127.0.0.1@53``."""
    text = str(nameserver)
    if text.startswith("Do53:") and "@" in text:
        address, port = text.removeprefix("Do53:").rsplit("@", 1)
        return join_host_port(address, int(port))
    return text


# --- one device run ----------------------------------------------------------------------------


class DeviceRun:
    """One run of a device's tasks: the scope in which device_cached answers are shared.

    ``ttl_cache`` must outlive the run (the scheduler keeps one per device loop) so that ttl_cached
    answers survive into later runs; without one, the run gets a private cache (``--once``).
    """

    def __init__(self, device: DeviceConfig, ttl_cache: ResolverCache | None = None) -> None:
        self.device = device
        self._ttl_cache = ttl_cache if ttl_cache is not None else ResolverCache()
        self._run_cache = ResolverCache(expire=False)
        self._dns = DNSResolver(device.dns.servers)
        self._system = SystemResolver(device.dns.timeout)
        self._hosts: dict[str, tuple[str, ...]] = {}
        for entry in device.dns.hosts:  # several addresses for one name stay in config order
            name = _normalise(entry.name)
            self._hosts[name] = (*self._hosts.get(name, ()), entry.address)

    def resolver(self, task: TaskConfig) -> Resolve:
        # dns.timeout bounds each lookup; without it the dns phase's completion timeout does.
        return Resolve(self, task.dns_mode or self.device.dns.mode, self.device.dns.timeout or task.completion_timeout)

    def fixed(self, host: str, mode: DNSMode) -> Resolution | None:
        """Answers that need no query: IP literals, custom hosts (every mode), localhost (our resolver)."""
        literal = _literal(host)
        if literal is not None:
            return Resolution((literal,), cached=True)
        name = _normalise(host)
        if name in self._hosts:
            return Resolution(self._hosts[name], cached=True)
        if mode is not DNSMode.SYSTEM and (name == "localhost" or name.endswith(".localhost")):
            return Resolution(LOCALHOST, cached=True)
        return None

    async def lookup(self, name: str, mode: DNSMode, lifetime: float, rdtype: str = "A") -> Resolution:
        """A/AAAA (or MX) of ``name`` by the mode's rules; the system mode asks MX of /etc/resolv.conf's
        servers, uncached (getaddrinfo has no MX)."""
        if mode is DNSMode.SYSTEM and rdtype == "A":
            return await self._system.resolve(name)
        key = (self._dns.servers, name, rdtype)

        def fetch() -> Coroutine[Any, Any, Answer]:
            return self._dns.lookup_mx(name, lifetime) if rdtype == "MX" else self._dns.lookup(name, lifetime)

        if mode is DNSMode.DEVICE_CACHED:
            return await self._run_cache.get(key, fetch)
        if mode is DNSMode.TTL_CACHED:
            return await self._ttl_cache.get(key, fetch)
        return Resolution((await fetch()).addresses)  # non_cached, external, system's MX


class Resolve:
    """A task's resolver in its device run: call it for a host's addresses, ``mx`` for a domain's MX hosts."""

    def __init__(self, run: DeviceRun, mode: DNSMode, lifetime: float) -> None:
        self._run = run
        self._mode = mode
        self._lifetime = lifetime

    async def __call__(self, host: str) -> Resolution:
        fixed = self._run.fixed(host, self._mode)
        if fixed is not None:
            return fixed
        return await self._run.lookup(
            host if self._mode is DNSMode.SYSTEM else _normalise(host), self._mode, self._lifetime
        )

    async def mx(self, domain: str) -> Resolution:
        """The MX hosts of ``domain`` (none: it has no MX records). A domain that is a custom host,
        localhost or an IP literal is its own mail host: no query."""
        if self._run.fixed(domain, self._mode) is not None:
            return Resolution((domain,), cached=True)
        return await self._run.lookup(_normalise(domain), self._mode, self._lifetime, "MX")

"""DNS modes, custom hosts and failures, counted at a loopback test DNS server; then full probes
against the real Postfix + Dovecot rig with custom hosts and the test DNS server.

No resolver here ever talks to the system's nameservers: every config names the test server, and
getaddrinfo is replaced by a spy that answers only localhost and IP literals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import dns.rcode
import pytest

from exporter.config.load import parse_config
from exporter.config.model import DeviceConfig, DNSMode
from exporter.letter.token import Signer
from exporter.net.resolve import DeviceRun, Resolution, Resolve, ResolverCache
from exporter.probe.clock import PhaseClock
from exporter.probe.dial import dial
from exporter.probe.errors import DNSFailure, Reason
from exporter.probe.phases import Leg
from exporter.probe.result import ProbeResult
from exporter.probe.roundtrip import run_probe
from tests.dnsserver import DNSServer
from tests.rig import MailRig

DNSPYTHON_MODES = ["device_cached", "non_cached", "ttl_cached", "external"]
ALL_MODES = [mode.value for mode in DNSMode]
USER = "user2"  # the rig user reserved for these tests

# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    """A test DNS server that knows mail.test (A 127.0.0.1, AAAA ::1) and nothing else."""
    dns_server = await DNSServer().start()
    dns_server.add("mail.test", "A", "127.0.0.1", ttl=60)
    dns_server.add("mail.test", "AAAA", "::1", ttl=60)
    yield dns_server
    dns_server.close()


@pytest.fixture
async def other_server() -> AsyncIterator[DNSServer]:
    dns_server = await DNSServer().start()
    yield dns_server
    dns_server.close()


@pytest.fixture(autouse=True)
async def system_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every getaddrinfo host asked for; anything but localhost or a literal fails without a query."""
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo
    calls: list[str] = []

    async def spy(host: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(str(host))
        if host != "localhost" and not _is_literal(host):
            raise socket.gaierror(socket.EAI_NONAME, "test: no real lookups")
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", spy)
    return calls


def _is_literal(host: Any) -> bool:
    try:
        ipaddress.ip_address(str(host))
    except ValueError:
        return False
    return True


def task_dict(name: str, dns_mode: str | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "name": name,
        "destination": "someone@example.test",
        "smtp": {"host": "127.0.0.1:25", "security": "none"},
        "incoming": {"protocol": "imap", "host": "127.0.0.1:143", "security": "none", "user": "u", "password": "p"},
    }
    if dns_mode:
        task["dns_mode"] = dns_mode
    return task


def device_of(dns: dict[str, Any], *tasks: dict[str, Any]) -> DeviceConfig:
    assert dns.get("servers"), "every test resolver must point at a test server"
    config = parse_config({"devices": [{"name": "d", "dns": dns, "tasks": list(tasks) or [task_dict("t")]}]})
    return config.devices[0]


def resolver_of(device: DeviceConfig, cache: ResolverCache | None = None, task: int = 0) -> Resolve:
    return DeviceRun(device, cache).resolver(device.tasks[task])


def queries(server: DNSServer, name: str = "mail.test") -> tuple[int, int]:
    return server.count(name, "A"), server.count(name, "AAAA")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- how many queries each mode sends ----------------------------------------------------------


async def test_device_cached_one_query_per_run(server: DNSServer) -> None:
    device = device_of({"servers": [server.spec]}, *(task_dict(f"t{i}") for i in range(5)))
    assert device.dns.mode is DNSMode.DEVICE_CACHED  # the default
    run = DeviceRun(device, ResolverCache())
    resolvers = [run.resolver(task) for task in device.tasks]
    together = await asyncio.gather(*(resolve("mail.test") for resolve in resolvers))
    one_by_one = [await resolve("mail.test") for resolve in resolvers]
    assert queries(server) == (1, 1)
    assert [r.cached for r in together + one_by_one].count(False) == 1  # only the first paid
    assert {r.addresses for r in together + one_by_one} == {("::1", "127.0.0.1")}  # AAAA first

    next_run = DeviceRun(device, ResolverCache())
    assert await next_run.resolver(device.tasks[0])("mail.test") == Resolution(("::1", "127.0.0.1"), cached=False)
    assert queries(server) == (2, 2)


async def test_non_cached_queries_every_time(server: DNSServer) -> None:
    resolve = resolver_of(device_of({"mode": "non_cached", "servers": [server.spec]}))
    results = [await resolve("mail.test") for _ in range(3)]
    assert queries(server) == (3, 3)
    assert not any(r.cached for r in results)


async def test_ttl_cached_until_the_ttl_passes_across_runs(server: DNSServer) -> None:
    clock = FakeClock()
    cache = ResolverCache(clock=clock)
    device = device_of({"mode": "ttl_cached", "servers": [server.spec]})
    first = await resolver_of(device, cache)("mail.test")
    assert (first.cached, queries(server)) == (False, (1, 1))
    clock.now += 59.5  # the records' TTL is 60 s
    again = await resolver_of(device, cache)("mail.test")  # a new device run: the cache outlives it
    assert (again.cached, queries(server)) == (True, (1, 1))
    clock.now += 1.0
    expired = await resolver_of(device, cache)("mail.test")
    assert (expired.cached, queries(server)) == (False, (2, 2))


async def test_ttl_cached_uses_the_smallest_ttl_of_a_cname_chain(server: DNSServer) -> None:
    server.add("smtp.test", "CNAME", "relay.test.", ttl=300)
    server.add("relay.test", "CNAME", "mail.test.", ttl=5)
    clock = FakeClock()
    resolve = resolver_of(device_of({"mode": "ttl_cached", "servers": [server.spec]}), ResolverCache(clock=clock))
    assert (await resolve("smtp.test")).addresses == ("::1", "127.0.0.1")
    clock.now += 4.9
    assert (await resolve("smtp.test")).cached
    clock.now += 0.2  # past the 5 s CNAME, long before the 60 s addresses
    assert not (await resolve("smtp.test")).cached
    assert queries(server, "smtp.test") == (2, 2)


async def test_task_mode_overrides_device_mode(server: DNSServer) -> None:
    device = device_of({"servers": [server.spec]}, task_dict("cached"), task_dict("fresh", dns_mode="non_cached"))
    run = DeviceRun(device)
    cached, fresh = run.resolver(device.tasks[0]), run.resolver(device.tasks[1])
    for resolve in (cached, cached, fresh, fresh):
        await resolve("mail.test")
    assert queries(server) == (3, 3)


async def test_concurrent_askers_share_one_query_even_if_the_first_gives_up(server: DNSServer) -> None:
    resolve = resolver_of(device_of({"servers": [server.spec]}))
    server.hold()
    first = asyncio.create_task(resolve("mail.test"))
    await _until(lambda: queries(server) == (1, 1), "the first asker's queries")
    second = asyncio.create_task(resolve("mail.test"))
    first.cancel()  # e.g. its phase timed out: the query it started must go on for the second
    server.release()
    assert await second == Resolution(("::1", "127.0.0.1"), cached=True)
    assert first.cancelled()
    assert queries(server) == (1, 1)


async def _until(predicate: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # poll interval, not synchronisation


# --- which servers are asked -------------------------------------------------------------------


async def test_external_asks_the_configured_servers_not_the_system(
    server: DNSServer, system_lookups: list[str]
) -> None:
    server.add("only-here.test", "A", "127.0.0.5")
    resolve = resolver_of(device_of({"mode": "external", "servers": [server.spec]}))
    assert await resolve("only-here.test") == Resolution(("127.0.0.5",))
    assert system_lookups == []
    assert queries(server, "only-here.test") == (1, 1)


async def test_several_servers_on_their_own_ports(server: DNSServer, other_server: DNSServer) -> None:
    other_server.rcode = dns.rcode.REFUSED  # the first server refuses: the second must be asked
    resolve = resolver_of(device_of({"mode": "external", "servers": [other_server.spec, server.spec]}))
    assert (await resolve("mail.test")).addresses == ("::1", "127.0.0.1")
    assert queries(other_server) == (1, 1)
    assert queries(server) == (1, 1)


async def test_system_mode_uses_getaddrinfo_not_the_dns_servers(server: DNSServer, system_lookups: list[str]) -> None:
    resolve = resolver_of(device_of({"mode": "system", "servers": [server.spec]}))
    assert "127.0.0.1" in (await resolve("localhost")).addresses  # from /etc/hosts
    with pytest.raises(DNSFailure):
        await resolve("mail.test")  # only the test server knows it
    assert system_lookups == ["localhost", "mail.test"]
    assert server.total() == 0


# --- answers that need no query ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_custom_hosts_win_over_every_mode(server: DNSServer, system_lookups: list[str], mode: str) -> None:
    hosts = [
        {"address": "127.0.0.2", "name": "Mail.Test."},
        {"address": "::1", "name": "mail.test"},
        {"address": "127.0.0.3", "name": "MAIL.TEST"},
    ]
    resolve = resolver_of(device_of({"mode": mode, "servers": [server.spec], "hosts": hosts}))
    for spelling in ("mail.test", "MAIL.test."):
        assert await resolve(spelling) == Resolution(("127.0.0.2", "::1", "127.0.0.3"), cached=True)
    assert server.total() == 0
    assert system_lookups == []


@pytest.mark.parametrize("mode", ALL_MODES)
async def test_ip_literals_are_not_looked_up(server: DNSServer, system_lookups: list[str], mode: str) -> None:
    resolve = resolver_of(device_of({"mode": mode, "servers": [server.spec]}))
    assert await resolve("::1") == Resolution(("::1",), cached=True)
    assert await resolve("127.0.0.1") == Resolution(("127.0.0.1",), cached=True)
    assert (server.total(), system_lookups) == (0, [])


@pytest.mark.parametrize("mode", DNSPYTHON_MODES)
async def test_localhost_is_answered_without_a_query(server: DNSServer, mode: str) -> None:
    resolve = resolver_of(device_of({"mode": mode, "servers": [server.spec]}))
    assert await resolve("localhost") == Resolution(("::1", "127.0.0.1"), cached=True)
    assert server.total() == 0


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", DNSPYTHON_MODES)
async def test_nxdomain(server: DNSServer, mode: str) -> None:
    resolve = resolver_of(device_of({"mode": mode, "servers": [server.spec]}))
    with pytest.raises(DNSFailure, match=r"^nowhere\.test: NXDOMAIN$"):
        await resolve("nowhere.test")


async def test_a_failure_is_not_cached_for_the_rest_of_the_run(server: DNSServer) -> None:
    resolve = resolver_of(device_of({"servers": [server.spec]}))
    with pytest.raises(DNSFailure, match="NXDOMAIN"):
        await resolve("new.test")
    server.add("new.test", "A", "127.0.0.7")
    assert await resolve("new.test") == Resolution(("127.0.0.7",), cached=False)
    assert queries(server, "new.test") == (2, 2)


async def test_name_without_addresses(server: DNSServer) -> None:
    server.add("mx-only.test", "MX", "10 mail.test.")
    resolve = resolver_of(device_of({"mode": "non_cached", "servers": [server.spec]}))
    with pytest.raises(DNSFailure, match=r"mx-only\.test: no A/AAAA records"):
        await resolve("mx-only.test")


async def test_refused_everywhere(other_server: DNSServer) -> None:
    other_server.rcode = dns.rcode.REFUSED
    resolve = resolver_of(device_of({"mode": "non_cached", "servers": [other_server.spec]}))
    with pytest.raises(DNSFailure) as failure:
        await resolve("mail.test")
    assert failure.value.message == f"mail.test: no server answered ({other_server.spec}: REFUSED)"


async def test_silent_server_fails_within_dns_timeout(server: DNSServer) -> None:
    server.blackhole = True
    device = device_of({"mode": "non_cached", "servers": [server.spec], "timeout": "500ms"})
    result = ProbeResult("d", "t", "token", 0.0)
    # The phase would allow 30 s: the message shows it was dns.timeout that ended the lookup.
    with pytest.raises(DNSFailure) as failure:
        await dial(PhaseClock(30), resolver_of(device), Leg.SMTP, result.smtp, "mail.test", 25)
    assert failure.value.message == f"mail.test: timed out after 0.5s querying {server.spec}"
    assert (failure.value.phase, failure.value.reason) == ("smtp_dns", Reason.DNS)
    assert server.count("mail.test", "A") >= 1


async def test_silent_server_without_dns_timeout_is_bounded_by_the_phase(server: DNSServer) -> None:
    server.blackhole = True
    device = device_of({"servers": [server.spec]}, {**task_dict("t"), "completion_timeout": "1s"})
    result = ProbeResult("d", "t", "token", 0.0)
    with pytest.raises(DNSFailure) as failure:
        await dial(PhaseClock(1), resolver_of(device), Leg.MAILBOX, result.mailbox, "mail.test", 143)
    assert (failure.value.phase, failure.value.reason) == ("mailbox_dns", Reason.DNS)


# --- full probes against the real mail servers ---------------------------------------------------


def rig_task(rig: MailRig, host: str, dns: dict[str, Any]) -> tuple[DeviceConfig, Any]:
    login = {"user": rig.address(USER), "password": rig.password(USER), "ca_file": str(rig.ca_file)}
    config = parse_config(
        {
            "devices": [
                {
                    "name": "dns-e2e",
                    "dns": dns,
                    "tasks": [
                        {
                            "name": "t",
                            "destination": rig.address(USER),
                            "completion_timeout": "10s",
                            "email_timeout": "30s",
                            "smtp": {"host": f"{host}:{rig.ports.submissions}", "security": "tls", **login},
                            "incoming": {
                                "protocol": "imap",
                                "host": f"{host}:{rig.ports.imaps}",
                                "security": "tls",
                                "poll_interval": "100ms",
                                **login,
                            },
                        }
                    ],
                }
            ]
        }
    )
    return config.devices[0], config.devices[0].tasks[0]


async def probe(rig: MailRig, host: str, dns: dict[str, Any]) -> ProbeResult:
    rig.clear_mailbox(USER)
    device, task = rig_task(rig, host, dns)
    return await run_probe(device.name, task, Signer(b"k" * 32), DeviceRun(device).resolver(task))


async def test_custom_host_probe_verifies_the_configured_name(rig: MailRig, server: DNSServer) -> None:
    hosts = [{"address": "127.0.0.1", "name": "mail.test"}]
    result = await probe(rig, "mail.test", {"servers": [server.spec], "hosts": hosts})
    assert result.success, result.error
    assert (result.smtp.address, result.mailbox.address) == ("127.0.0.1", "127.0.0.1")
    assert (result.smtp.dns_cached, result.mailbox.dns_cached) == (True, True)
    assert server.total() == 0


async def test_custom_host_with_a_name_not_in_the_certificate_fails_tls(rig: MailRig, server: DNSServer) -> None:
    hosts = [{"address": "127.0.0.1", "name": "wrong.test"}]
    result = await probe(rig, "wrong.test", {"servers": [server.spec], "hosts": hosts})
    assert result.reason is Reason.TLS, result.error
    assert result.error is not None and "certificate verification failed" in result.error
    assert server.total() == 0


async def test_probe_through_the_test_dns_server(rig: MailRig, server: DNSServer) -> None:
    result = await probe(rig, "mail.test", {"mode": "external", "servers": [server.spec]})
    assert result.success, result.error
    assert result.smtp.address == "::1"  # AAAA first
    assert queries(server) == (2, 2)  # external: each leg asks
    assert (result.smtp.dns_cached, result.mailbox.dns_cached) == (False, False)


async def test_probe_device_cached_shares_one_lookup_between_legs(rig: MailRig, server: DNSServer) -> None:
    result = await probe(rig, "mail.test", {"mode": "device_cached", "servers": [server.spec]})
    assert result.success, result.error
    assert queries(server) == (1, 1)
    assert {result.smtp.dns_cached, result.mailbox.dns_cached} == {False, True}


async def test_custom_host_ipv6(rig: MailRig, server: DNSServer) -> None:
    hosts = [{"address": "::1", "name": "mail.test"}]
    result = await probe(rig, "mail.test", {"servers": [server.spec], "hosts": hosts})
    assert result.success, result.error
    assert (result.smtp.address, result.mailbox.address) == ("::1", "::1")

"""A small authoritative DNS server on 127.0.0.1 (UDP) for tests: the test sets the records and reads
how many queries arrived per (name, type).

Unknown names get NXDOMAIN, known names without the asked type an empty NOERROR answer, CNAMEs are
followed within the server's own records. Switches: ``blackhole`` (count, never answer), ``rcode``
(answer everything with e.g. REFUSED) and ``hold()``/``release()`` (keep answers back until released,
to line up concurrent askers).

    server = await DNSServer().start()
    server.add("mail.test", "A", "127.0.0.1", ttl=60)
    server.add("example.test", "MX", "10 mail.test.")  # MX values as in a zone file; "0 ." is a null MX
    ... resolve against server.address ...
    assert server.count("mail.test", "A") == 1
    server.close()

TXT values are zone-file text too (quoted strings); ``txt()`` makes them from plain text, split
into strings of at most 255 characters as a DKIM key needs. ``replace()`` swaps all records of one
name at once, so a concurrent query never sees the name half changed. A synchronous caller (a rig
of server processes) runs the server on a thread of its own with ``DNSThread``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

MAX_CHAIN = 8  # a CNAME loop in the test's own records must not hang the server
TXT_CHUNK = 255  # the longest character-string of a TXT record (RFC 1035 3.3.14)
THREAD_TIMEOUT = 10.0


@dataclass(frozen=True)
class Record:
    rdtype: str  # "A", "AAAA", "CNAME", "MX", ...
    value: str
    ttl: int


def _name(text: str) -> str:
    return text.rstrip(".").lower()


def txt(text: str) -> str:
    """A TXT record's value in zone-file form: ``text`` as quoted strings of at most 255 characters."""
    chunks = [text[i : i + TXT_CHUNK] for i in range(0, len(text), TXT_CHUNK)] or [""]
    return " ".join('"' + chunk.replace("\\", "\\\\").replace('"', '\\"') + '"' for chunk in chunks)


class DNSServer:
    def __init__(self) -> None:
        self.records: dict[str, list[Record]] = {}
        self.queries: Counter[tuple[str, str]] = Counter()
        self.last_query: dict[str, float] = {}  # name -> time.time() of its latest query
        self.blackhole = False
        self.rcode: dns.rcode.Rcode | None = None
        self._held: list[tuple[bytes, tuple[str, int]]] | None = None
        self._transport: asyncio.DatagramTransport | None = None

    # --- control -------------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str, ttl: int = 300) -> None:
        self.records.setdefault(_name(name), []).append(Record(rdtype.upper(), value, ttl))

    def remove(self, name: str) -> None:
        self.records.pop(_name(name), None)

    def replace(self, name: str, records: list[Record]) -> None:
        """All records of ``name`` at once (none: the name is gone); safe from another thread."""
        if records:
            self.records[_name(name)] = list(records)
        else:
            self.remove(name)

    def count(self, name: str, rdtype: str) -> int:
        return self.queries[(_name(name), rdtype.upper())]

    def total(self) -> int:
        return sum(self.queries.values())

    def hold(self) -> None:
        """Keep answers back until release(): queries are still counted on arrival."""
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for wire, addr in held:
            self._send(wire, addr)

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> DNSServer:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=("127.0.0.1", 0))
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self._transport is not None, "start() first"
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    @property
    def spec(self) -> str:
        """The server as the config's ``dns.servers`` entry: ``127.0.0.1:port``."""
        host, port = self.address
        return f"{host}:{port}"

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # --- answering -----------------------------------------------------------------------------

    def received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # not a DNS message: a real server drops it too
            return
        if not query.question:
            return
        question = query.question[0]
        name = _name(question.name.to_text())
        self.queries[(name, dns.rdatatype.to_text(question.rdtype))] += 1
        self.last_query[name] = time.time()
        if self.blackhole:
            return
        wire = self.answer(query).to_wire()
        if self._held is not None:
            self._held.append((wire, addr))
        else:
            self._send(wire, addr)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if self.rcode is not None:
            response.set_rcode(self.rcode)
            return response
        question = query.question[0]
        qtype = dns.rdatatype.to_text(question.rdtype)
        name = _name(question.name.to_text())
        for _ in range(MAX_CHAIN):
            records = self.records.get(name)
            if records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            cname = [r for r in records if r.rdtype == "CNAME"]
            if cname and qtype != "CNAME":
                response.answer.append(_rrset(name, cname))
                name = _name(cname[0].value)
                continue
            matching = [r for r in records if r.rdtype == qtype]
            if matching:
                response.answer.append(_rrset(name, matching))
            break
        return response

    def _send(self, wire: bytes, addr: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(wire, addr)


def _rrset(name: str, records: list[Record]) -> dns.rrset.RRset:
    ttl = min(r.ttl for r in records)  # one RRset has one TTL
    return dns.rrset.from_text(f"{name}.", ttl, "IN", records[0].rdtype, *(r.value for r in records))


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.received(data, addr)


class DNSThread:
    """A DNSServer answering on an event loop of its own thread, for synchronous code.

    ``start()`` returns the server; its add/replace/remove may be called from any thread.
    """

    def __init__(self) -> None:
        self.server = DNSServer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dns-server", daemon=True)

    def start(self) -> DNSServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(THREAD_TIMEOUT)
        return self.server

    def stop(self) -> None:
        """Close the socket, end the loop and its thread. Idempotent."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.server.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(THREAD_TIMEOUT)
        self._loop.close()

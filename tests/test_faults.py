"""Faults a monitor meets over months, each ending with the right reason and a useful message, within
its timeout, and recovering by itself once the fault ends (docs/faults.md is the table of them).

Real faults run against the rig's Postfix/Dovecot; faults real servers cannot produce on demand run
against small hostile servers on loopback (tests/hostile.py), with the other leg at the real rig, as
full probes. Every probe is wrapped in a deadline (never a timing assertion): it must end whatever the
server does. Recovery means: the same task, unchanged, succeeds once the server behaves again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import imaplib
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.net.resolve import DeviceRun
from exporter.probe.errors import Reason
from exporter.probe.result import ProbeResult
from exporter.probe.roundtrip import run_probe
from exporter.probe.watch import Mailbox
from tests.dnsserver import DNSServer
from tests.hostile import Handler, HostileServer, Peer, Switch, drip, proxy, serve, tarpit
from tests.rig import DOVEADM, MailRig, _pid_alive, _processes, free_ports
from tests.tasks import MAILBOX_LEGS, SIGNER, SMTP_LEGS, FreshUsers, config_of, task_dict

DEADLINE = 30.0  # generous bound on any one probe: it must end, however the server behaves
SETTLE = 10.0  # how long leaked tasks, threads and descriptors get to go away


# --- running probes ------------------------------------------------------------------------------


async def probe(task: dict[str, Any], mailbox: Mailbox | None = None, **device: Any) -> ProbeResult:
    """One probe as the scheduler runs it, under a deadline; ``device`` adds device settings (dns)."""
    config = config_of(task, **device)
    dev, task_config = config.tasks()[0]
    run = run_probe(dev.name, task_config, SIGNER, DeviceRun(dev).resolver(task_config), mailbox)
    return await asyncio.wait_for(run, DEADLINE)


def mailbox_of(task: dict[str, Any]) -> Mailbox:
    """A task's mailbox state kept across probes, as the scheduler keeps it (late letters)."""
    return Mailbox(config_of(task).tasks()[0][1].incoming, SIGNER)


def took(result: ProbeResult) -> float:
    return result.finished - result.started


def report(fault: str, result: ProbeResult) -> None:
    """One line per fault for docs/faults.md (visible with pytest -s)."""
    print(f"\n[fault] {fault}: reason={result.reason} in {took(result):.2f}s: {result.error}")


def probe_letters(rig: MailRig, user: str) -> list[str]:
    return [p.name for p in rig.messages(user) if b"X-Mail-Roundtrip-Probe" in p.read_bytes()]


def holds_token(rig: MailRig, user: str, token: str) -> bool:
    return any(token.encode() in p.read_bytes() for p in rig.messages(user))


async def until(predicate: Callable[[], Any], what: str, within_seconds: float = 15.0, every: float = 0.02) -> Any:
    """Poll ``predicate`` (plain or async) every ``every`` seconds until it is truthy; a deadline, not a sleep."""
    deadline = time.monotonic() + within_seconds
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {within_seconds:g}s waiting for {what}"
        await asyncio.sleep(every)


# --- scripted servers ----------------------------------------------------------------------------

# A step that ends the conversation its own way (hang up, garbage, ...); gets the peer and the tag.
Action = Callable[[Peer, bytes], Awaitable[None]]

SMTP_REPLIES = {
    b"EHLO": b"250-hostile.test\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
    b"HELO": b"250 hostile.test\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
}


def smtp_server(
    actions: dict[bytes, Action],
    banner: bytes = b"220 hostile.test ESMTP\r\n",
    data_reply: bytes = b"250 2.0.0 Ok: queued as HOSTILE\r\n",
    ehlo: bytes = SMTP_REPLIES[b"EHLO"],
) -> Handler:
    """An SMTP server that answers like a real one, except for the commands in ``actions``."""

    async def handler(peer: Peer) -> None:
        await peer.send(banner)
        while line := await peer.line():
            verb = line.split(b" ", 1)[0].upper()
            if verb in actions:
                await actions[verb](peer, b"")
                return
            if verb == b"QUIT":
                await peer.send(b"221 2.0.0 Bye\r\n")
                return
            if verb == b"DATA":
                await peer.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                while await peer.line() != b".":
                    pass
                await peer.send(data_reply)
                continue
            reply = ehlo if verb == b"EHLO" else SMTP_REPLIES.get(verb, b"502 5.5.2 Error: command not recognized\r\n")
            await peer.send(reply)

    return handler


# A server that offers PIPELINING (RFC 2920): the probe sends MAIL FROM and RCPT TO in one write.
PIPELINING = b"250-hostile.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


IMAP_UNTAGGED = {
    b"CAPABILITY": b"* CAPABILITY IMAP4rev1 STARTTLS UIDPLUS\r\n",
    b"SELECT": b"* 1 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n",
    b"UID SEARCH": b"* SEARCH 7\r\n",
    b"LOGOUT": b"* BYE logging out\r\n",
}


def imap_server(actions: dict[bytes, Action], greeting: bytes = b"* OK hostile IMAP4rev1 ready\r\n") -> Handler:
    """An IMAP server that lets anyone in and finds letter 7 for every search, except for ``actions``."""

    async def handler(peer: Peer) -> None:
        await peer.send(greeting)
        while line := await peer.line():
            tag, _, rest = line.partition(b" ")
            words = rest.upper().split(b" ")
            verb = b" ".join(words[:2]) if words[0] == b"UID" else words[0]
            if verb in actions:
                await actions[verb](peer, tag)
                return
            await peer.send(IMAP_UNTAGGED.get(verb, b"") + tag + b" OK " + verb + b" done\r\n")
            if verb == b"LOGOUT":
                return

    return handler


def replies(text: bytes, then: Action | None = None) -> Action:
    """Send ``text`` (``TAG`` is replaced by the command's tag), then hang up, or go on with ``then``."""

    async def action(peer: Peer, tag: bytes) -> None:
        await peer.send(text.replace(b"TAG", tag))
        if then is not None:
            await then(peer, tag)

    return action


def says(text: bytes) -> Handler:
    """A server that says ``text`` and hangs up."""

    async def handler(peer: Peer) -> None:
        await peer.send(text)

    return handler


async def listens(peer: Peer, tag: bytes) -> None:
    """Keep the connection open until the client hangs up."""
    await peer.until_eof()


async def reads_a_line(peer: Peer, tag: bytes) -> None:
    await peer.line()


async def garbage_for_hello(peer: Peer, tag: bytes) -> None:
    """Answer the client's TLS ClientHello with clear text (bytes sent before the hello would be
    discarded by the client as a possible STARTTLS injection, which is not this fault)."""
    await peer.reader.read(1)
    await peer.send(b"this is not a TLS handshake\r\n" * 20)
    await peer.until_eof()


PARTIAL_FETCH = (
    b'* 1 FETCH (UID 7 INTERNALDATE "26-Nov-2025 12:00:00 +0000" BODY[HEADER.FIELDS '
    b"(X-MAIL-ROUNDTRIP-PROBE SUBJECT MESSAGE-ID)] {400}\r\nX-Mail-Roundtrip-Probe: mrt-"
)


# --- the hostile faults --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A misbehaving server on one leg of an otherwise real task, and what the probe must say."""

    name: str
    kind: str  # the leg's kind in tests.tasks (security, and which rig port "fixed" means)
    handler: Handler
    reason: Reason
    text: str  # must appear in the error message
    phase: str
    completion: str = "1s"

    @property
    def leg(self) -> str:
        return "smtp" if self.kind in SMTP_LEGS else "incoming"

    def real_port(self, rig: MailRig) -> int:
        attribute = SMTP_LEGS[self.kind][0] if self.leg == "smtp" else MAILBOX_LEGS[self.kind][1]
        return int(getattr(rig.ports, attribute))


NO_ANSWER = "no answer within"
CLOSED = "connection closed by the server during"
FAULTS = [
    Fault("smtp-tarpit", "smtp-plain", tarpit, Reason.TIMEOUT, NO_ANSWER, "smtp_greeting"),
    Fault("smtps-tarpit", "submissions-tls-auth", tarpit, Reason.TIMEOUT, NO_ANSWER, "smtp_tls"),
    Fault(
        "smtp-drip",
        "smtp-plain",
        drip(b"220 hostile.test ESMTP, very slowly\r\n"),
        Reason.TIMEOUT,
        NO_ANSWER,
        "smtp_greeting",
        completion="2s",
    ),
    Fault(
        "smtp-banner-554",
        "smtp-plain",
        smtp_server({}, banner=b"554 5.3.2 No SMTP service here\r\n"),
        Reason.SMTP_REJECTED,
        "554 5.3.2 No SMTP service here",
        "smtp_greeting",
    ),
    Fault(
        "smtp-banner-garbage",
        "smtp-plain",
        smtp_server({}, banner=b"HTTP/1.1 400 Bad Request\r\n"),
        Reason.PROTOCOL,
        "unexpected reply to the greeting: Malformed SMTP response line: HTTP/1.1 400",
        "smtp_greeting",
    ),
    Fault(
        "smtp-drop-mid-data",
        "smtp-plain",
        smtp_server({b"DATA": replies(b"354 End data with <CR><LF>.<CR><LF>\r\n", reads_a_line)}),
        Reason.PROTOCOL,
        f"{CLOSED} DATA",
        "smtp_submit",
    ),
    Fault(
        "smtp-rcpt-451",
        "smtp-plain",
        smtp_server({b"RCPT": replies(b"451 4.3.0 Try again later\r\n", listens)}),
        Reason.SMTP_REJECTED,
        "451 4.3.0 Try again later",
        "smtp_submit",
    ),
    Fault(
        "smtp-pipelined-rcpt-550",
        "smtp-plain",
        smtp_server({b"RCPT": replies(b"550 5.1.1 No such user\r\n", listens)}, ehlo=PIPELINING),
        Reason.SMTP_REJECTED,
        "550 5.1.1 No such user",
        "smtp_submit",
    ),
    Fault(
        "smtp-pipelined-mail-553",
        "smtp-plain",
        smtp_server({b"MAIL": replies(b"553 5.7.1 Sender refused\r\n", reads_a_line)}, ehlo=PIPELINING),
        Reason.SMTP_REJECTED,
        "553 5.7.1 Sender refused",
        "smtp_submit",
    ),
    Fault(
        "smtp-pipelined-drop",
        "smtp-plain",
        smtp_server({b"MAIL": replies(b"250 2.1.0 Ok\r\n", reads_a_line)}, ehlo=PIPELINING),
        Reason.PROTOCOL,
        f"{CLOSED} MAIL FROM and RCPT TO",
        "smtp_submit",
    ),
    Fault(
        "smtp-pipelined-garbage",
        "smtp-plain",
        smtp_server({b"RCPT": replies(b"xyz not a reply\r\n", listens)}, ehlo=PIPELINING),
        Reason.PROTOCOL,
        "Malformed SMTP response line: xyz",
        "smtp_submit",
    ),
    Fault(
        "smtp-starttls-454",
        "smtp-starttls",
        smtp_server({b"STARTTLS": replies(b"454 4.7.0 TLS not available\r\n", listens)}),
        Reason.TLS,
        "STARTTLS refused: 454 4.7.0 TLS not available",
        "smtp_tls",
    ),
    Fault(
        "smtp-starttls-garbage",
        "smtp-starttls",
        smtp_server({b"STARTTLS": replies(b"220 2.0.0 Ready to start TLS\r\n", garbage_for_hello)}),
        Reason.TLS,
        "TLS handshake failed",
        "smtp_tls",
    ),
    Fault("imap-tarpit", "imap-plain", tarpit, Reason.TIMEOUT, NO_ANSWER, "mailbox_login"),
    Fault("imaps-tarpit", "imaps", tarpit, Reason.TIMEOUT, NO_ANSWER, "mailbox_tls"),
    Fault(
        "imap-drip",
        "imap-plain",
        drip(b"* OK hostile IMAP4rev1 ready, very slowly\r\n"),
        Reason.TIMEOUT,
        NO_ANSWER,
        "mailbox_login",
        completion="2s",
    ),
    Fault(
        "imap-bye-greeting",
        "imap-plain",
        says(b"* BYE Too many connections from your address\r\n"),
        Reason.MAILBOX,
        "server refused the session: * BYE Too many connections",
        "mailbox_login",
    ),
    Fault(
        "imap-garbage-greeting",
        "imap-plain",
        smtp_server({}),  # an SMTP server on the IMAP port
        Reason.PROTOCOL,
        "not an IMAP greeting: 220 hostile.test ESMTP",
        "mailbox_login",
    ),
    Fault(
        "imap-bye-mid-session",
        "imap-plain",
        imap_server({b"UID SEARCH": replies(b"* BYE Server shutting down.\r\n")}),
        Reason.PROTOCOL,
        f"{CLOSED} UID SEARCH (* BYE Server shutting down.)",
        "mailbox_search",
    ),
    Fault(
        "imap-drop-mid-fetch",
        "imap-plain",
        imap_server({b"UID FETCH": replies(PARTIAL_FETCH)}),
        Reason.PROTOCOL,
        f"{CLOSED} UID FETCH",
        "mailbox_search",
    ),
    Fault(
        "imap-starttls-no",
        "imap-starttls",
        imap_server({b"STARTTLS": replies(b"TAG NO [UNAVAILABLE] TLS not available\r\n", listens)}),
        Reason.TLS,
        "STARTTLS refused",
        "mailbox_tls",
    ),
    Fault(
        "imap-starttls-garbage",
        "imap-starttls",
        imap_server({b"STARTTLS": replies(b"TAG OK Begin TLS negotiation now\r\n", garbage_for_hello)}),
        Reason.TLS,
        "TLS handshake failed",
        "mailbox_tls",
    ),
    Fault("pop3-tarpit", "pop3-plain", tarpit, Reason.TIMEOUT, NO_ANSWER, "mailbox_login"),
    Fault(
        "pop3-drip",
        "pop3-plain",
        drip(b"+OK hostile POP3 ready, very slowly\r\n"),
        Reason.TIMEOUT,
        NO_ANSWER,
        "mailbox_login",
        completion="2s",
    ),
]


async def test_pipelined_replies_arriving_byte_by_byte(rig: MailRig, fresh_user: str) -> None:
    """Postfix offers PIPELINING: MAIL FROM and RCPT TO go out in one write, and their replies are
    read whole however they come in (here a byte per TCP write, through a proxy)."""
    async with serve(proxy("127.0.0.1", rig.ports.smtp, trickle=True)) as server:
        task = task_dict(rig, fresh_user, smtp="smtp-plain", mailbox="imaps", name="trickle")
        task["smtp"]["host"] = f"127.0.0.1:{server.port}"
        result = await probe(task)
    assert result.success, result.error
    assert result.transcript is not None
    smtp = [(line.sent, line.text) for line in result.transcript.lines if line.leg == "smtp"]
    start = next(i for i, (sent, text) in enumerate(smtp) if sent and text.startswith("MAIL FROM"))
    said = smtp[start : start + 4]
    assert [sent for sent, _ in said] == [True, True, False, False], said
    assert said[1][1].startswith("RCPT TO") and said[2][1].startswith("250") and said[3][1].startswith("250")


def fault_task(rig: MailRig, user: str, fault: Fault, port: int) -> dict[str, Any]:
    """A real task whose ``fault.leg`` goes to ``port`` on 127.0.0.1 (the certificates name that address)."""
    if fault.leg == "smtp":
        task = task_dict(rig, user, smtp=fault.kind, mailbox="imaps", name=fault.name)
    else:
        task = task_dict(rig, user, smtp="smtp-starttls", mailbox=fault.kind, name=fault.name)
    task.update(completion_timeout=fault.completion, email_timeout="5s")
    task[fault.leg]["host"] = f"127.0.0.1:{port}"
    return task


def check(fault: Fault, result: ProbeResult) -> None:
    assert result.reason is fault.reason, result.error
    assert result.error is not None and result.error.startswith(f"{fault.phase}: "), result.error
    assert fault.text in result.error, result.error


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
async def test_hostile_server(rig: MailRig, fresh_user: str, fault: Fault) -> None:
    """The fault ends the probe with its reason; once the server behaves (here: passes through to the
    real one), the same task succeeds and cleans up any letter the failed probe left behind."""
    switch = Switch(fault.handler)
    async with serve(switch) as server:
        task = fault_task(rig, fresh_user, fault, server.port)
        mailbox = mailbox_of(task)
        failed = await probe(task, mailbox)
        report(fault.name, failed)
        check(fault, failed)
        if failed.sent:  # the letter went to the real mailbox: wait for it, so recovery must clean it up
            await until(lambda: holds_token(rig, fresh_user, failed.token), "the failed probe's letter")
        switch.handler = proxy("127.0.0.1", fault.real_port(rig))
        recovered = await probe(task, mailbox)
        assert recovered.success, recovered.error
    assert mailbox.late == {}
    assert probe_letters(rig, fresh_user) == []


# --- nothing left behind -------------------------------------------------------------------------


def resources() -> tuple[int, int, int]:
    """(asyncio tasks but this one, threads, open file descriptors) of this process."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    return len(others), threading.active_count(), len(os.listdir("/proc/self/fd"))


def within(now: tuple[int, ...], baseline: tuple[int, ...]) -> bool:
    return all(a <= b for a, b in zip(now, baseline, strict=True))


async def settled(baseline: tuple[int, int, int]) -> tuple[int, int, int]:
    """Poll until tasks, threads and descriptors are back at most at ``baseline``; the last count."""
    deadline = time.monotonic() + SETTLE
    while True:
        current = resources()
        if within(current, baseline) or time.monotonic() > deadline:
            return current
        await asyncio.sleep(0.05)


def dns_task(rig: MailRig, user: str, server: DNSServer) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task whose SMTP host is a name only ``server`` can resolve (the rig's certificates carry it)."""
    task = task_dict(rig, user, smtp="smtp-starttls", mailbox="imaps", name="dns", completion_timeout="5s")
    task["smtp"]["host"] = f"{rig.hostname}:{rig.ports.smtp}"
    return task, {"dns": {"mode": "external", "servers": [server.spec], "timeout": "1s"}}


async def test_all_hostile_faults_at_once_leave_nothing_behind(rig: MailRig, fresh_user: str) -> None:
    """Every hostile fault at the same time (and a DNS server that never answers): each still gets its
    reason, and afterwards no task, thread or file descriptor is left over."""
    baseline = resources()
    dns_server = await DNSServer().start()
    dns_server.blackhole = True
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers = [await stack.enter_async_context(serve(fault.handler)) for fault in FAULTS]
            task, device = dns_task(rig, fresh_user, dns_server)
            probes = [probe(fault_task(rig, fresh_user, f, s.port)) for f, s in zip(FAULTS, servers, strict=True)]
            *results, dns_result = await asyncio.gather(*probes, probe(task, **device))
    finally:
        dns_server.close()
    for fault, result in zip(FAULTS, results, strict=True):
        check(fault, result)
    assert dns_result.reason is Reason.DNS, dns_result.error
    after = await settled(baseline)
    assert within(after, baseline), f"(tasks, threads, fds) before {baseline}, after {after}"


# --- DNS -----------------------------------------------------------------------------------------


async def test_dns_server_never_answers(rig: MailRig, fresh_user: str) -> None:
    server = await DNSServer().start()
    try:
        server.blackhole = True
        task, device = dns_task(rig, fresh_user, server)
        failed = await probe(task, **device)
        report("dns-black-hole", failed)
        assert failed.reason is Reason.DNS, failed.error
        assert failed.error == f"smtp_dns: {rig.hostname}: timed out after 1s querying {server.spec}"
        assert server.count(rig.hostname, "A") >= 1
        server.blackhole = False  # the fault ends: the server answers again
        server.add(rig.hostname, "A", "127.0.0.1")
        recovered = await probe(task, **device)
        assert recovered.success, recovered.error
    finally:
        server.close()


# --- the real servers ----------------------------------------------------------------------------


@pytest.fixture
def user(rig: MailRig, fresh_user: str) -> Iterator[str]:
    """A mailbox of this test alone, and the rig as it was afterwards (servers up, queue released):
    a letter a failed test leaves, even one still held in the queue, lands where no other test looks."""
    yield fresh_user
    rig.start_smtp()
    rig.start_imap_pop3()
    rig.release()


def retry_now(rig: MailRig) -> bool:
    """Ask Postfix to retry its deferred mail now; False, so that a poll goes on."""
    rig.flush()
    return False


async def recovers(rig: MailRig, user: str, task: dict[str, Any], mailbox: Mailbox, failed: ProbeResult) -> None:
    """The fault has ended: the same task succeeds and deletes the letter the failed probe left, if any."""
    if failed.sent:  # after an outage Postfix retries on its own schedule: ask it to retry now
        await until(lambda: holds_token(rig, user, failed.token) or retry_now(rig), "the failed letter", every=0.25)
    recovered = await probe(task, mailbox)
    assert recovered.success, recovered.error
    assert mailbox.late == {}


# Real-server faults end at once (a refused connection, a closed socket); the timeout only has to be
# long enough for a Postfix just restarted by the previous test to greet us (seen to take over 2 s once).
REAL_SERVER_TIMEOUT = "10s"


async def test_smtp_server_down(rig: MailRig, user: str) -> None:
    task = task_dict(rig, user, name="smtp-down", completion_timeout=REAL_SERVER_TIMEOUT)
    rig.stop_smtp()
    try:
        failed = await probe(task)
    finally:
        rig.start_smtp()
    report("smtp-down", failed)
    assert failed.reason is Reason.CONNECT, failed.error
    assert failed.error is not None and failed.error.startswith("smtp_connect: ") and "refused" in failed.error
    await recovers(rig, user, task, mailbox_of(task), failed)
    assert probe_letters(rig, user) == []


async def test_smtp_restart_while_the_letter_waits(rig: MailRig, user: str) -> None:
    """Postfix stops and starts again while the probe waits for its held letter: nothing is lost."""
    task = task_dict(rig, user, name="smtp-restart", completion_timeout=REAL_SERVER_TIMEOUT, email_timeout="20s")
    rig.hold()
    running = asyncio.create_task(probe(task))
    await asyncio.to_thread(rig.wait_for, rig.queue_ids, 10, "the probe letter in the queue")
    await asyncio.to_thread(rig.stop_smtp)
    await asyncio.to_thread(rig.start_smtp)
    await asyncio.to_thread(rig.release)
    # A letter the stopped Postfix was handling may be "still being delivered" when the new one first
    # looks at it, and then waits for its next retry: ask for retries until the queue is empty.
    await until(lambda: not rig.queue_ids() or retry_now(rig), "Postfix to deliver the held letter", every=0.25)
    result = await running
    report("smtp-restart-while-waiting", result)
    assert result.success, result.error
    assert probe_letters(rig, user) == []


@pytest.mark.parametrize("kind", ["imaps", "pop3s"])
async def test_mailbox_server_down(rig: MailRig, user: str, kind: str) -> None:
    task = task_dict(
        rig, user, smtp="smtp-starttls", mailbox=kind, name=f"{kind}-down", completion_timeout=REAL_SERVER_TIMEOUT
    )
    mailbox = mailbox_of(task)
    rig.stop_imap_pop3()
    try:
        failed = await probe(task, mailbox)
    finally:
        rig.start_imap_pop3()
    report(f"{kind}-down", failed)
    assert failed.reason is Reason.CONNECT, failed.error
    assert failed.error is not None and failed.error.startswith("mailbox_connect: ") and "refused" in failed.error
    # The mailbox could not be opened, so the SMTP session ended before DATA: no letter to pile up.
    assert not failed.sent and failed.smtp_reply is None
    assert rig.queue_ids() == []
    await recovers(rig, user, task, mailbox, failed)
    assert probe_letters(rig, user) == []


def stop_dovecot_like_systemd(rig: MailRig) -> None:
    """Stop Dovecot as a service manager does, open sessions included: rig.stop_imap_pop3 alone stops
    the master, and a logged-in IMAP session lives on. SIGTERM to the session processes first (their
    master reaps them), then the rig's own stop."""
    assert rig._dovecot is not None
    group = rig._dovecot.pid  # Dovecot's master leads its own process group
    sessions = [pid for pid, comm, _, pgrp in _processes() if pgrp == group and comm in ("imap", "pop3")]
    for pid in sessions:
        # A POP3 session between two looks may end by itself after the list was read: that is fine.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    rig.wait_for(lambda: not any(_pid_alive(pid) for pid in sessions), 10, "the mail sessions to end")
    rig.stop_imap_pop3()


@dataclass
class WatchedMailbox(Mailbox):
    """Counts the sessions the probe opened: the first one means it is now waiting for the letter."""

    sessions: int = 0

    async def open(self, *args: Any, **kwargs: Any) -> Any:
        session = await super().open(*args, **kwargs)
        self.sessions += 1
        return session


# IMAP is in IDLE when the server goes. POP3 logs in again for each look: the look may find Dovecot
# refusing new sessions (connect), gone in the TLS handshake (tls; a loaded machine makes that window
# wide), closing the session (protocol), or answering a command of a session it already ends with
# "-ERR [SYS/TEMP] Server shutting down." (mailbox). All are true.
STOP_REASONS = {"imaps": {Reason.PROTOCOL}, "pop3s": {Reason.CONNECT, Reason.TLS, Reason.PROTOCOL, Reason.MAILBOX}}


@pytest.mark.parametrize("kind", list(STOP_REASONS))
async def test_dovecot_stops_while_the_probe_waits(rig: MailRig, user: str, kind: str) -> None:
    task = task_dict(
        rig,
        user,
        smtp="smtp-starttls",
        mailbox=kind,
        name=f"{kind}-stops",
        completion_timeout=REAL_SERVER_TIMEOUT,
        email_timeout="20s",
    )
    waiting = copy.deepcopy(task)
    if kind == "imaps":  # IDLE for the whole wait: the server's goodbye is what the probe sees
        waiting["incoming"]["poll_interval"] = "1m"
    mailbox = WatchedMailbox(mailbox_of(task).config, SIGNER)
    rig.hold()
    running = asyncio.create_task(probe(waiting, mailbox))
    await asyncio.to_thread(rig.wait_for, rig.queue_ids, 10, "the probe letter in the queue")
    await until(lambda: mailbox.sessions, "the probe to look into the mailbox")
    await asyncio.to_thread(stop_dovecot_like_systemd, rig)
    failed = await running
    report(f"{kind}-stops-while-waiting", failed)
    assert failed.reason in STOP_REASONS[kind], failed.error
    await asyncio.to_thread(rig.start_imap_pop3)
    await asyncio.to_thread(rig.release)
    await recovers(rig, user, task, mailbox, failed)
    assert probe_letters(rig, user) == []


EXPIRED_LEGS = {  # the leg with the certificate under test, and a clear-text other leg
    "smtp": {"smtp": "submission-starttls-auth", "mailbox": "imap-plain"},
    "imaps": {"smtp": "smtp-plain", "mailbox": "imaps"},
    "pop3s": {"smtp": "smtp-plain", "mailbox": "pop3s"},
}


async def test_expired_certificate(rig: MailRig, user: str) -> None:
    """Every TLS port presents an expired certificate: each leg fails with tls, saying so; with the
    good certificate back the same tasks succeed and clean up what the mailbox legs left."""
    tasks = {leg: task_dict(rig, user, name=f"expired-{leg}", **kinds) for leg, kinds in EXPIRED_LEGS.items()}
    mailboxes = {leg: mailbox_of(task) for leg, task in tasks.items()}
    rig.use_server_cert("expired")
    try:
        failures = {leg: await probe(task, mailboxes[leg]) for leg, task in tasks.items()}
    finally:
        rig.use_server_cert("good")
    for leg, failed in failures.items():
        report(f"expired-certificate-{leg}", failed)
        assert failed.reason is Reason.TLS, failed.error
        phase = "smtp_tls" if leg == "smtp" else "mailbox_tls"
        assert failed.error == f"{phase}: certificate verification failed: certificate has expired"
    for leg, task in tasks.items():
        await recovers(rig, user, task, mailboxes[leg], failures[leg])
    assert probe_letters(rig, user) == []


# --- a full mailbox --------------------------------------------------------------------------------

QUOTA_USER = "ft-q"
FILLER = b"From: big@example.test\r\nSubject: a big letter\r\n\r\n" + b"x" * 20_000 + b"\r\n"


def limit_storage(rig: MailRig, user: str, storage: str) -> None:
    """Dovecot's quota plugin for this user only, as userdb extra fields in the rig's passwd-file.

    The rig has no switch for it, so this edits the rig's files (not tests/rig.py): a "userdb_"
    prefix makes a field a userdb one; a reload gives a fresh auth process that reads the file.
    """
    address = rig.address(user)
    fields = f"userdb_mail_plugins=quota userdb_quota=maildir userdb_quota_rule=*:storage={storage}"
    passwd: Path = rig._passwd_file
    lines = passwd.read_text().splitlines()
    passwd.write_text("".join(f"{line}{fields}\n" if line.startswith(f"{address}:") else f"{line}\n" for line in lines))
    rig._doveadm("reload")
    lookup = [DOVEADM, "-c", str(rig._dovecot_conf), "user", address]
    rig.wait_for(
        lambda: "quota_rule" in subprocess.run(lookup, capture_output=True, text=True, check=False).stdout,
        10,
        f"Dovecot to know the quota of {address}",
    )


@pytest.fixture(scope="module")
def quota_user(rig: MailRig) -> str:
    rig.add_users([QUOTA_USER])
    limit_storage(rig, QUOTA_USER, "16K")
    return QUOTA_USER


def make_room(rig: MailRig, user: str) -> None:
    """What the mailbox's owner does: delete letters over IMAP, so the quota plugin counts it."""
    with imaplib.IMAP4(rig.host, rig.ports.imap, timeout=10) as imap:
        imap.login(rig.address(user), rig.password(user))
        imap.select("INBOX")
        imap.store("1:*", "+FLAGS", r"(\Deleted)")
        imap.expunge()


async def test_mailbox_over_quota(rig: MailRig, quota_user: str) -> None:
    """Postfix takes the letter, Dovecot's LMTP refuses it (552 quota exceeded) and Postfix bounces it:
    all the exporter can see is a letter that never arrives."""
    rig.clear_mailbox(quota_user)
    rig.deliver_raw(quota_user, FILLER)  # 20 KB in a 16 KB mailbox
    task = task_dict(rig, quota_user, smtp="smtp-starttls", name="over-quota", email_timeout="2s")
    failed = await probe(task)
    report("over-quota", failed)
    assert failed.reason is Reason.DELIVERY_TIMEOUT, failed.error
    assert failed.sent and failed.smtp_reply is not None
    queue_id = failed.smtp_reply.rsplit(" ", 1)[-1]
    bounced = re.compile(rf"{queue_id}: to=<{rig.address(quota_user)}>.*status=bounced.*552 5\.2\.2.*Quota exceeded")
    await until(lambda: bounced.search(rig.logs(200)), "Postfix to log the bounce")
    await asyncio.to_thread(make_room, rig, quota_user)  # the fault ends
    recovered = await probe(task)
    assert recovered.success, recovered.error
    assert probe_letters(rig, quota_user) == []


# --- the exporter keeps serving --------------------------------------------------------------------


@dataclass
class Scraper:
    url: str

    async def get(self, path: str) -> tuple[int, str]:
        def fetch() -> tuple[int, str]:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status), response.read().decode()

        return await asyncio.to_thread(fetch)

    async def values(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = await self.get("/metrics")
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    async def value(self, name: str, task: str, **labels: str) -> float | None:
        return (await self.values()).get((name, tuple(sorted({"device": "rig", "task": task, **labels}.items()))))


async def answers(scraper: Scraper) -> bool:
    try:
        return (await scraper.get("/-/ready"))[0] == 200
    except OSError:
        return False


async def test_exporter_keeps_serving_while_a_server_tarpits(
    rig: MailRig, fresh_users: FreshUsers, tmp_path: Path
) -> None:
    """The exporter as a process: one task's SMTP server accepts and never speaks, the other task is
    healthy. Scrapes are answered while a probe is stuck, the healthy task keeps succeeding, the stuck
    one fails with reason timeout; once the server works again (here: passes through to Postfix), the
    same task succeeds, without a reload."""
    switch = Switch(tarpit)
    async with serve(switch) as server:
        stuck = task_dict(rig, fresh_users.take(), smtp="smtp-starttls", name="tarpit", completion_timeout="2s")
        stuck["smtp"]["host"] = f"127.0.0.1:{server.port}"
        config = tmp_path / "config.yml"
        tasks = [task_dict(rig, fresh_users.take(), name="healthy"), stuck]
        config.write_text(yaml.safe_dump({"devices": [{"name": "rig", "interval": "1s", "tasks": tasks}]}))
        port = free_ports(1)[0]
        log = tmp_path / "exporter.log"
        with log.open("w") as output:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--signing.key-file",
                str(tmp_path / "key"),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        try:
            await serves_through_the_fault(Scraper(f"http://127.0.0.1:{port}"), server, switch, rig)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 15) == 0, log.read_text()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def serves_through_the_fault(scraper: Scraper, server: HostileServer, switch: Switch, rig: MailRig) -> None:
    await until(lambda: answers(scraper), "the exporter to answer /-/ready", every=0.1)

    async def scraped_while_stuck() -> bool:
        if not server.busy:
            return False
        status, _ = await scraper.get("/metrics")
        stuck = await scraper.value("mail_roundtrip_probes_in_flight", "tarpit")
        return status == 200 and stuck == 1 and server.busy > 0  # the tarpit held a probe all along

    await until(scraped_while_stuck, "a scrape answered while the tarpit holds a probe", every=0.1)
    await until(
        lambda: scraper.value("mail_roundtrip_probe_failures_total", "tarpit", reason="timeout"),
        "the stuck task to fail with reason timeout",
        every=0.1,
    )
    _, page = await scraper.get("/")
    assert "smtp_greeting: no answer within 2s" in page
    healthy = await scraper.value("mail_roundtrip_probes_total", "healthy") or 0
    await until(lambda: healthy_after(scraper, healthy + 2), "the healthy task to go on succeeding", every=0.1)
    switch.handler = proxy("127.0.0.1", rig.ports.smtp)  # the fault ends
    await until(
        lambda: scraper.value("mail_roundtrip_last_success_timestamp_seconds", "tarpit"),
        "the task to recover",
        every=0.1,
    )
    # Probes stuck before the fix still end in timeouts; after them every probe succeeds.
    await until(lambda: scraper.value("mail_roundtrip_probe_success", "tarpit"), "success to stay", every=0.1)


async def healthy_after(scraper: Scraper, probes: float) -> bool:
    values = await scraper.values()
    labels = (("device", "rig"), ("task", "healthy"))
    failures = sum(
        v
        for (name, lab), v in values.items()
        if name == "mail_roundtrip_probe_failures_total" and ("task", "healthy") in lab
    )
    return (
        values.get(("mail_roundtrip_probes_total", labels), 0) >= probes
        and failures == 0
        and values.get(("mail_roundtrip_probe_success", labels)) == 1
    )


# --- server text is data ---------------------------------------------------------------------------

# Everything a server can put in a line to fool a reader: terminal escapes (clear screen, set the
# window title), a bare CR (overwrites the line on a terminal), NUL, Unicode line and paragraph
# separators and a right-to-left override, and a forged report header.
FORGED = b"== forged/task: OK"
HOSTILE_TEXT = (
    b"\x1b[2J\x1b]0;owned\x07 bare\rCR "
    + FORGED
    + b" NUL\x00 LS\xe2\x80\xa8"
    + FORGED
    + b" PS\xe2\x80\xa9 RLO\xe2\x80\xaeKO :ksat/degrof ==\xe2\x80\xac"
)
# A reply of 150 lines, 24 KB (aiosmtplib takes up to 32 KB): the report must stay short.
LONG_REPLY = b"".join(b"554-5.7.1 " + b"x" * 150 + b"\r\n" for _ in range(150)) + b"554 5.7.1 refused\r\n"


def multiline(code: bytes, text: bytes) -> bytes:
    """An SMTP reply spreading ``text`` and a forged header over three lines."""
    return code + b"-2.0.0 " + text + b"\r\n" + code + b"-" + FORGED + b"\r\n" + code + b" 2.0.0 " + text + b"\r\n"


def pop3_refuses_pass(reply: bytes) -> Handler:
    async def handler(peer: Peer) -> None:
        await peer.send(b"+OK hostile POP3 ready\r\n")
        while line := await peer.line():
            if line.upper().startswith(b"PASS"):
                await peer.send(reply)
                return
            await peer.send(b"+OK\r\n")

    return handler


@dataclass(frozen=True)
class Says:
    """A task whose ``kind`` leg is a hostile server (the other leg is the real rig) and its reason."""

    name: str
    kind: str
    handler: Handler
    reason: Reason


SAYS = [
    Says("smtp-banner", "smtp-plain", smtp_server({}, banner=multiline(b"554", HOSTILE_TEXT)), Reason.SMTP_REJECTED),
    # Accepted, so the letter never reaches the (real) mailbox: the reply shows as "smtp reply" and in
    # the delivery timeout's message.
    Says(
        "smtp-data-reply",
        "smtp-plain",
        smtp_server({}, data_reply=multiline(b"250", HOSTILE_TEXT)),
        Reason.DELIVERY_TIMEOUT,
    ),
    Says("smtp-data-long", "smtp-plain", smtp_server({}, data_reply=LONG_REPLY), Reason.SMTP_REJECTED),
    Says("imap-greeting", "imap-plain", says(b"* BYE " + HOSTILE_TEXT + b"\r\n"), Reason.MAILBOX),
    Says(
        "imap-login",
        "imap-plain",
        imap_server({b"LOGIN": replies(b"TAG NO " + HOSTILE_TEXT + b"\r\n", listens)}),
        Reason.AUTH,
    ),
    Says("pop3-greeting", "pop3-plain", says(b"-ERR " + HOSTILE_TEXT + b"\r\n"), Reason.MAILBOX),
    Says("pop3-pass", "pop3-plain", pop3_refuses_pass(b"-ERR " + HOSTILE_TEXT + b"\r\n"), Reason.AUTH),
]


async def run_once(config: dict[str, Any], tmp_path: Path) -> tuple[int, str, str]:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--once",
        "--config.file",
        str(path),
        "--signing.key-file",
        str(tmp_path / "key"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_once_report_shows_server_text_as_data(rig: MailRig, fresh_user: str, tmp_path: Path) -> None:
    """Hostile text in an SMTP banner and DATA reply, an IMAP and a POP3 error: the --once report has
    exactly one header line per task, no control character, and bounded lines; the text is still there
    (flattened) for the admin to read."""
    async with contextlib.AsyncExitStack() as stack:
        tasks = []
        for case in SAYS:
            server = await stack.enter_async_context(serve(case.handler))
            leg = "smtp" if case.kind in SMTP_LEGS else "incoming"
            kinds = (
                {"smtp": case.kind, "mailbox": "imap-plain"}
                if leg == "smtp"
                else {"smtp": "smtp-plain", "mailbox": case.kind}
            )
            task = task_dict(rig, fresh_user, name=case.name, completion_timeout="5s", email_timeout="1s", **kinds)
            task[leg]["host"] = f"127.0.0.1:{server.port}"
            tasks.append(task)
        code, stdout, stderr = await run_once({"devices": [{"name": "rig", "tasks": tasks}]}, tmp_path)
    assert code == 3, stdout + stderr
    headers = [line for line in stdout.splitlines() if line.startswith("==")]
    assert headers == [f"== rig/{case.name}: FAILED ({case.reason})" for case in SAYS], stdout
    for output in (stdout, stderr):
        assert all(c.isprintable() or c == "\n" for c in output), ascii(output)
    assert max(len(line) for line in stdout.splitlines()) < 1100
    for case in SAYS:
        report = stdout.split(f"== rig/{case.name}: ", 1)[1].split("\n\n", 1)[0]
        assert ("x" * 150 if case.name == "smtp-data-long" else "bare CR == forged/task: OK NUL? LS") in report
    assert "smtp reply: 250 2.0.0 ?[2J?]0;owned? bare CR" in stdout

"""What a probe said to its servers and heard back, redacted: kept for the console, logged at debug.

Every probe records one (the console shows the last probe's, the last failed probe's and a Probe
now's; ``--log.level debug`` logs each line as it comes). The protocol clients note each command and
reply with ``note``; the probe in progress is found through a context variable (the clients' tasks and
callbacks inherit it), so no leg has to pass a transcript around. Passwords and AUTH arguments are
redacted by the client that sends them (it knows which argument is secret), and a password a server
echoes is hidden here; every line is server text to us and goes through the sanitiser. Letters'
contents are never noted (other people's mail): a client notes only their size. The one exception
is our own probe letter's header, which the exporter wrote itself (``note_letter``).
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import NamedTuple

from exporter.config.model import Secret
from exporter.probe.phases import Leg
from exporter.sanitise import server_text

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
# A probe's conversation is ~30 lines; a POP3 probe that waits logs in again at every look. The
# start (connect, TLS, login, the letter sent) and the end (the last looks, the error) are what a
# reader needs; what lies between is counted, not kept, so a transcript costs a few KB at most.
HEAD_LINES = 200
TAIL_LINES = 100
LOG_LINES = 500  # at debug: a server that talks on and on cannot flood the log either
LINE_LIMIT = 300


class Line(NamedTuple):
    """One command or reply. Plain values only (the leg by its name): a tuple of those is not tracked
    by the garbage collector, and each task keeps two transcripts of ~60 lines."""

    at: float  # monotonic seconds since the probe began
    leg: str  # Leg's value
    sent: bool  # True: we said it; False: the server did
    text: str  # sanitised and redacted


def _debug_logging() -> bool:
    return log.isEnabledFor(logging.DEBUG)


@dataclass
class Transcript:
    device: str
    task: str
    started: float = field(default_factory=time.monotonic)
    head: list[Line] = field(default_factory=list)
    tail: deque[Line] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    cut: int = 0  # lines dropped between head and tail
    letter: tuple[str, ...] = ()  # our probe letter's header lines, as sent
    hide: tuple[Secret, ...] = field(default=(), repr=False)  # the task's passwords, should a server echo one
    logged: int = field(default=0, repr=False)
    logging: bool = field(default_factory=_debug_logging, repr=False)
    # Once the probe has ended (seal): its lines as (times, flags, texts joined by newlines: a line is
    # one line of server_text, so it holds none), and how many of them are the head.
    sealed: tuple[bytes, bytes, str, int] | None = field(default=None, repr=False)

    def add(self, leg: Leg, sent: bool, text: str | bytes) -> None:
        if self.sealed is not None:
            return  # the probe has ended: a late line of a closing connection is not part of it
        hidden = [secret.reveal() for secret in self.hide]
        line = Line(time.monotonic() - self.started, leg.value, sent, server_text(text, LINE_LIMIT, hidden))
        if len(self.head) < HEAD_LINES:
            self.head.append(line)
        else:
            self.cut += len(self.tail) == TAIL_LINES
            self.tail.append(line)
        if self.logging and self.logged < LOG_LINES:
            self.logged += 1
            fields = {"device": self.device, "task": self.task, "leg": leg.value, "dir": ">" if sent else "<"}
            log.debug("protocol", extra={**fields, "line": line.text})

    @property
    def lines(self) -> list[Line]:
        """Every line kept, in order (the ``cut`` ones were between the head and the tail)."""
        if self.sealed is None:
            return [*self.head, *self.tail]
        times, flags, texts, _ = self.sealed
        return (
            [
                Line(at, _LEGS[flag >> 1], bool(flag & 1), text)
                for at, flag, text in zip(memoryview(times).cast("d"), flags, texts.split("\n"), strict=True)
            ]
            if flags
            else []
        )

    def seal(self) -> None:
        """The probe has ended: keep its lines compactly. A task keeps two transcripts for the console
        (the last probe's and the last failure's): ~60 lines took 16 KB as Line tuples, ~7 KB so."""
        if self.sealed is not None:
            return
        lines = self.lines
        times = struct.pack(f"{len(lines)}d", *(line.at for line in lines))
        flags = bytes(_LEGS.index(line.leg) << 1 | line.sent for line in lines)
        self.sealed = (times, flags, "\n".join(line.text for line in lines), len(self.head))
        self.head, self.tail = [], deque(maxlen=TAIL_LINES)

    def parts(self) -> tuple[list[Line], list[Line]]:
        """The first lines and the last ones (the ``cut`` ones were between them)."""
        lines = self.lines
        head = self.sealed[3] if self.sealed is not None else len(self.head)
        return lines[:head], lines[head:]

    def text(self) -> str:
        """The transcript as plain text, one line per command or reply (``/probe?debug=true``)."""
        head, tail = self.parts()
        out = [_plain(line) for line in head]
        if self.cut:
            out.append(f"         ... {self.cut} lines not kept ...")
        out += [_plain(line) for line in tail]
        if self.letter:
            out += ["", "Header of the probe letter sent:", *(f"  {header}" for header in self.letter)]
        return "\n".join(out) + "\n"


_LEGS = tuple(leg.value for leg in Leg)


def _plain(line: Line) -> str:
    return f"{line.at:8.3f}s {line.leg:<7} {'>' if line.sent else '<'} {line.text}"


_current: ContextVar[Transcript | None] = ContextVar("transcript", default=None)


@contextlib.contextmanager
def recording(device: str, task: str, hide: Sequence[Secret | None] = ()) -> Iterator[Transcript]:
    """The probe's transcript while it runs. ``hide``: the task's passwords (kept as Secrets)."""
    transcript = Transcript(device, task, hide=tuple(secret for secret in hide if secret is not None))
    token = _current.set(transcript)
    try:
        yield transcript
    finally:
        _current.reset(token)
        transcript.seal()


def note(leg: Leg, sent: bool, text: str | bytes) -> None:
    """Add a line to the transcript of the probe in progress, if one is being recorded."""
    transcript = _current.get()
    if transcript is not None:
        transcript.add(leg, sent, text)


def note_letter(letter: bytes) -> None:
    """Keep the header of the probe letter being sent (ours: letter.compose wrote it; never a body)."""
    transcript = _current.get()
    if transcript is not None:
        header = letter.split(b"\r\n\r\n", 1)[0].decode("ascii", "replace")
        transcript.letter = tuple(server_text(line, LINE_LIMIT) for line in header.split("\r\n"))


def recording_now() -> bool:
    return _current.get() is not None

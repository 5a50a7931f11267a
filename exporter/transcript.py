"""What a probe said to its servers and heard back, redacted: logged at --log.level debug.

The protocol clients note each command and reply with ``note``; the probe in progress is found
through a context variable (the clients' tasks and callbacks inherit it), so no leg has to pass a
transcript around. Passwords and AUTH arguments are redacted by the client that sends them (it
knows which argument is secret); every line is server text to us and goes through the sanitiser.
Letters' contents are never noted (other people's mail): a client notes only their size.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from exporter.probe.phases import Leg
from exporter.sanitise import server_text

log = logging.getLogger(__name__)

REDACTED = "<redacted>"
MAX_LINES = 500  # a probe's conversation is ~30 lines; a server that talks on and on is cut short
LINE_LIMIT = 300


@dataclass(frozen=True)
class Line:
    at: float  # monotonic seconds since the probe began
    leg: Leg
    sent: bool  # True: we said it; False: the server did
    text: str  # sanitised and redacted


@dataclass
class Transcript:
    device: str
    task: str
    started: float = field(default_factory=time.monotonic)
    lines: list[Line] = field(default_factory=list)
    cut: int = 0  # lines not kept past MAX_LINES

    def add(self, leg: Leg, sent: bool, text: str | bytes) -> None:
        if len(self.lines) >= MAX_LINES:
            self.cut += 1
            return
        line = Line(time.monotonic() - self.started, leg, sent, server_text(text, LINE_LIMIT))
        self.lines.append(line)
        log.debug(
            "protocol",
            extra={
                "device": self.device,
                "task": self.task,
                "leg": leg.value,
                "dir": ">" if sent else "<",
                "line": line.text,
            },
        )


_current: ContextVar[Transcript | None] = ContextVar("transcript", default=None)


@contextlib.contextmanager
def recording(device: str, task: str) -> Iterator[Transcript | None]:
    """The probe's transcript while it runs: only when someone reads it (today: debug logging)."""
    transcript = Transcript(device, task) if log.isEnabledFor(logging.DEBUG) else None
    token = _current.set(transcript)
    try:
        yield transcript
    finally:
        _current.reset(token)


def note(leg: Leg, sent: bool, text: str | bytes) -> None:
    """Add a line to the transcript of the probe in progress, if one is being recorded (cheap if not)."""
    transcript = _current.get()
    if transcript is not None:
        transcript.add(leg, sent, text)


def recording_now() -> bool:
    return _current.get() is not None

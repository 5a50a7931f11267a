"""The letter's way from the SMTP server that accepted it to the mailbox, from its Received fields.

Each server on the way puts a Received field on top (RFC 5321 4.4), so read bottom-up they are the
hops in order, each with the time that server took the letter by its own clock. A hop's delay is its
time minus the previous hop's: a queue, a filter or a retry on the way. The clocks are the servers'
(they may differ by more than a delay) and the dates have whole seconds: README says how to read them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.letter.fields import field_date, uncommented
from exporter.sanitise import server_text

HOPS_READ = 30  # Received fields looked at (Postfix refuses a letter after 50 hops)
HOST_LIMIT = 100
_CLAUSE = {name: re.compile(rf"(?:^|\s){name}\s+([^\s;]+)", re.IGNORECASE) for name in ("from", "by", "with")}


@dataclass(frozen=True, slots=True)
class Hop:
    by: str  # the server that took the letter (its Received "by"), printable; "" if it did not say
    sender: str  # where from (its "from" clause); "" if absent
    protocol: str  # "with": ESMTPS, LMTP, ...
    at: float | None  # Unix time, by that server's clock; None if its date is missing or bad
    delay: float | None  # at minus the previous hop's at; None for the first hop or without dates


def hops(received: Sequence[str]) -> tuple[Hop, ...]:
    """The hops of the letter's Received field values (as they stand in the letter, topmost first),
    oldest first. Only the newest HOPS_READ, which end at the mailbox, are read."""
    hops_out: list[Hop] = []
    for text in reversed(received[:HOPS_READ]):
        clauses, _, date = uncommented(text).rpartition(";")
        at = field_date(date)
        before = hops_out[-1].at if hops_out else None
        delay = at - before if at is not None and before is not None else None
        hops_out.append(Hop(_clause(clauses, "by"), _clause(clauses, "from"), _clause(clauses, "with"), at, delay))
    return tuple(hops_out)


def slowest(path: Sequence[Hop]) -> Hop | None:
    """The hop with the longest delay (None when fewer than two hops have dates)."""
    timed = [hop for hop in path if hop.delay is not None]
    return max(timed, key=lambda hop: hop.delay or 0.0) if timed else None


def transit(path: Sequence[Hop]) -> float | None:
    """First hop to last, by the servers' clocks."""
    times = [hop.at for hop in path if hop.at is not None]
    return times[-1] - times[0] if len(times) >= 2 else None


def _clause(text: str, name: str) -> str:
    match = _CLAUSE[name].search(text)
    return server_text(match.group(1), HOST_LIMIT) if match else ""

"""Where and how the probe letter arrived: the folder it was filed in, what the receiving side's
authentication checks said, the spam score it was given and the hops it took. Read from the header
block of the letter as the mailbox holds it; everything in it is hostile input (see letter.fields)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from enum import StrEnum

from exporter.letter.authresults import Method, authentication_results
from exporter.letter.fields import field_values
from exporter.letter.hops import Hop, hops, slowest, transit
from exporter.timefmt import utc_time

ARRIVAL_HEADER_BYTES = 64 * 1024  # how much of the letter's header block is read
SPAM_SCORE_LIMIT = 1e6
_NUMBER = r"([-+]?[0-9]{1,7}(?:\.[0-9]{1,6})?)"
# Spam scores as filters write them, most specific first: rspamd's milter headers, then SpamAssassin's.
_SPAM_SCORES = (
    ("X-Spamd-Result", re.compile(rf"\[\s*{_NUMBER}\s*/")),  # default: False [1.20 / 15.00]; ...
    ("X-Rspamd-Score", re.compile(rf"^\s*{_NUMBER}")),
    ("X-Spam-Status", re.compile(rf"\bscore={_NUMBER}", re.IGNORECASE)),  # No, score=-0.1 required=5.0
    ("X-Spam-Score", re.compile(rf"^\s*{_NUMBER}")),
)


class Placement(StrEnum):
    """Which folder the letter was found in (metric label values)."""

    INBOX = "inbox"  # the configured mailbox
    JUNK = "junk"  # the folder a spam filter files into


@dataclass(frozen=True, slots=True)
class Arrival:
    placement: Placement
    authentication: tuple[tuple[Method, str], ...] = ()  # (method, result), only methods reported
    spam_score: float | None = None
    hops: tuple[Hop, ...] = ()

    def authentication_text(self) -> str:
        """``spf=pass dkim=pass dmarc=pass``, or why there is nothing to show."""
        return " ".join(f"{method}={result}" for method, result in self.authentication) or "none reported"

    def hops_summary(self) -> str:
        """How many hops, the slowest and the whole transit, by the servers' clocks."""
        hop, whole = slowest(self.hops), transit(self.hops)
        parts = [f"{len(self.hops)} Received"]
        if hop is not None and hop.delay is not None:
            parts.append(f"slowest {hop.delay:+.0f} s to {hop.by or '?'}")
        if whole is not None:
            parts.append(f"transit {whole:.0f} s (servers' clocks)")
        return ", ".join(parts)


def hop_text(hop: Hop) -> str:
    """One hop as people read it: ``mx.test (ESMTPS from submit.test) 2026-12-06 10:00:01Z +1 s``."""
    said = " ".join(part for part in (hop.protocol, f"from {hop.sender}" if hop.sender else "") if part)
    at = f" {utc_time(hop.at)}" if hop.at is not None else ""
    delay = f" {hop.delay:+.0f} s" if hop.delay is not None else ""
    return f"{hop.by or '?'}{f' ({said})' if said else ''}{at}{delay}"


def read_arrival(headers: bytes | None, placement: Placement, authserv_ids: Collection[str]) -> Arrival:
    """What the header block (None: it could not be read) says of how the letter arrived."""
    if headers is None:
        return Arrival(placement)
    letter = BytesHeaderParser(policy=compat32).parsebytes(headers[:ARRIVAL_HEADER_BYTES])
    results = authentication_results(field_values(letter, "Authentication-Results"), authserv_ids)
    return Arrival(
        placement,
        authentication=tuple((method, results[method]) for method in Method if method in results),
        spam_score=spam_score(letter),
        hops=hops(field_values(letter, "Received")),
    )


def spam_score(letter: Message) -> float | None:
    """The score the topmost spam filter field gives (None without one)."""
    for name, pattern in _SPAM_SCORES:
        values = field_values(letter, name)
        match = pattern.search(values[0]) if values else None
        if match is not None:
            score = float(match.group(1))
            return score if math.isfinite(score) and abs(score) <= SPAM_SCORE_LIMIT else None
    return None

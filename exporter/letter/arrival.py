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
from exporter.letter.fields import FIELD_LIMIT
from exporter.letter.hops import Hop, hops

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


def read_arrival(headers: bytes | None, placement: Placement, authserv_ids: Collection[str]) -> Arrival:
    """What the header block (None: it could not be read) says of how the letter arrived."""
    if headers is None:
        return Arrival(placement)
    letter = BytesHeaderParser(policy=compat32).parsebytes(headers[:ARRIVAL_HEADER_BYTES])
    results = authentication_results(_values(letter, "Authentication-Results"), authserv_ids)
    return Arrival(
        placement,
        authentication=tuple((method, results[method]) for method in Method if method in results),
        spam_score=spam_score(letter),
        hops=hops(_values(letter, "Received")),
    )


def spam_score(letter: Message) -> float | None:
    """The score the topmost spam filter field gives (None without one)."""
    for name, pattern in _SPAM_SCORES:
        values = _values(letter, name)
        match = pattern.search(values[0]) if values else None
        if match is not None:
            score = float(match.group(1))
            return score if math.isfinite(score) and abs(score) <= SPAM_SCORE_LIMIT else None
    return None


def _values(letter: Message, name: str) -> list[str]:
    """The field's values, topmost first, unfolded, each cut at FIELD_LIMIT."""
    return [" ".join(str(value)[:FIELD_LIMIT].split()) for value in letter.get_all(name) or []]

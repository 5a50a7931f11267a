"""Authentication-Results (RFC 8601): what the receiving side's checks (SPF, DKIM, DMARC, ARC) said
of the probe letter.

Anyone can write an Authentication-Results field into a letter, and every hop may add one; only the
receiving side's own are worth believing (RFC 8601 section 5): the topmost field, or, when the task
names its servers' authserv-ids, every field carrying one of those. Fields further down were written
by hops the letter passed before, or by the sender.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from enum import StrEnum

from exporter.letter.fields import split_outside_quotes, uncommented, unquoted


class Method(StrEnum):
    SPF = "spf"
    DKIM = "dkim"
    DMARC = "dmarc"
    ARC = "arc"


# The result values of RFC 8601's registry (section 2.7); metric label values, so a fixed set.
RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror", "policy")
# Older names some servers still write (RFC 5451 for SPF's "hardfail"; RFC 7001's upper-case spelling).
_ALIASES = {"hardfail": "fail"}
_METHODS = frozenset(method.value for method in Method)
FIELDS_READ = 20  # Authentication-Results fields looked at: a letter carries one per hop
_METHOD_SPEC = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9_.-]{0,63})\s*(?:/\s*[0-9]{1,9}\s*)?=\s*([A-Za-z0-9_-]{1,32})")


def authentication_results(fields: Sequence[str], authserv_ids: Collection[str]) -> dict[Method, str]:
    """The results per method of the trusted ``fields`` (the letter's Authentication-Results values,
    topmost first). Where a method has several results (a letter with two DKIM signatures), one
    ``pass`` is enough: a signature of a list or forwarder that failed does not undo the one that
    held. Unknown methods and results outside the registry are left out."""
    wanted = {authserv_id.lower() for authserv_id in authserv_ids}
    found: dict[Method, str] = {}
    for position, text in enumerate(fields[:FIELDS_READ]):
        authserv_id, results = parse_field(text)
        trusted = authserv_id.lower() in wanted if wanted else position == 0
        for method, result in results if trusted else ():
            if method not in found or result == "pass":
                found[method] = result
    return found


def parse_field(text: str) -> tuple[str, list[tuple[Method, str]]]:
    """One field's authserv-id and its (method, result) pairs, in order."""
    head, *resinfos = split_outside_quotes(uncommented(text), ";")
    words = head.split()
    authserv_id = unquoted(words[0]) if words else ""
    pairs = []
    for resinfo in resinfos:
        match = _METHOD_SPEC.match(resinfo)
        if match is None:
            continue
        method, result = match.group(1).lower(), match.group(2).lower()
        result = _ALIASES.get(result, result)
        if method in _METHODS and result in RESULTS:
            pairs.append((Method(method), result))
    return authserv_id, pairs

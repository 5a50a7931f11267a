"""The folders of an IMAP account as LIST shows them, and the special uses (RFC 6154) among them:
the \\Trash a Gmail letter must be expunged from, the \\Junk a spam filter files letters into."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from exporter.clients.imap4 import Reply

# A LIST response without its "* LIST" (as Reply gives it): (attributes) delimiter name
_LIST = re.compile(rb'^\(([^)]*)\) (?:NIL|"(?:[^"\\]|\\.)*"|\S+) (.+)$', re.IGNORECASE)
_QUOTED = re.compile(rb'^"((?:[^"\\]|\\.)*)"$')
_LITERAL = re.compile(rb"^\{\d+\}$")


def listed(reply: Reply) -> Iterator[tuple[set[bytes], str]]:
    """(attributes in lower case, name) of each mailbox in a LIST reply (quoted, atom or literal name)."""
    for line, after in reply.pairs:
        match = _LIST.match(line)
        if match is None:
            continue
        name = match.group(2).strip()
        if _LITERAL.match(name):
            name = after
        elif quoted := _QUOTED.match(name):
            name = re.sub(rb"\\(.)", rb"\1", quoted.group(1))
        yield set(match.group(1).lower().split()), name.decode("utf-8", "replace")  # modified UTF-7 is ASCII


def special_use(reply: Reply, attribute: str) -> str | None:
    """The name of the mailbox whose LIST attributes hold ``attribute`` (``\\Trash``, ``\\Junk``)."""
    wanted = attribute.lower().encode()
    return next((name for attributes, name in listed(reply) if wanted in attributes), None)


def first_listed(reply: Reply, names: Sequence[str]) -> str | None:
    """The first of ``names`` that the LIST reply shows (exactly: mailbox names are case-sensitive)."""
    present = {name for _, name in listed(reply)}
    return next((name for name in names if name in present), None)

"""Reading header fields servers add to a letter (RFC 5322 comments, dates): shared by the parsers
of Authentication-Results and Received. Mailbox content is hostile: every function here is total
(bad input gives None or less text, never an exception) and linear in the input."""

from __future__ import annotations

import math
from datetime import UTC
from email.message import Message
from email.utils import parsedate_to_datetime

FIELD_LIMIT = 8 * 1024  # one field's value: a trace field is a few hundred bytes


def uncommented(text: str) -> str:
    """``text`` with its comments (nested parentheses, RFC 5322 3.2.2) made one space each, and
    quoted strings kept as they are (a parenthesis inside quotes is not a comment)."""
    out: list[str] = []
    depth, quoted, escaped = 0, False, False
    for char in text[:FIELD_LIMIT]:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(char)
            continue
        if char == "\\" and (quoted or depth):
            escaped = True
            if depth == 0:
                out.append(char)
        elif depth == 0 and char == '"':
            quoted = not quoted
            out.append(char)
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")" and depth:
            depth -= 1
            if depth == 0:
                out.append(" ")
        elif depth == 0:
            out.append(char)
    return "".join(out)


def split_outside_quotes(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` where it is not inside a quoted string."""
    parts: list[str] = []
    current: list[str] = []
    quoted, escaped = False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def unquoted(value: str) -> str:
    """A token or quoted-string value as its plain text."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        out, escaped = [], False
        for char in value[1:-1]:
            if char == "\\" and not escaped:
                escaped = True
                continue
            out.append(char)
            escaped = False
        return "".join(out)
    return value


def field_date(text: str) -> float | None:
    """An RFC 5322 date (as after the ``;`` of a Received field) as Unix time; a zone of ``-0000``
    (unknown) is taken as UTC, not as our local time."""
    try:
        when = parsedate_to_datetime(" ".join(uncommented(text).split()))
        stamp = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return stamp if math.isfinite(stamp) else None


def field_values(headers: Message, name: str) -> list[str]:
    """Every value of field ``name``, topmost first, each cut at FIELD_LIMIT, unfolded, with runs of
    blanks made one space."""
    return [" ".join(str(value)[:FIELD_LIMIT].split()) for value in headers.get_all(name) or []]

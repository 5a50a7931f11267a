"""Server text is data: the one sanitiser for everything a server (or anyone outside) sent us.

Errors, logs, the status page and the --once report all show such text only through server_text.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

SERVER_TEXT_LIMIT = 300  # how much of one server reply an error message quotes


MESSAGE_LIMIT = 1000  # a whole error message: our words around at most a few quoted replies


HIDDEN = "********"


def server_text(raw: str | bytes, limit: int = SERVER_TEXT_LIMIT, hide: Collection[str] = ()) -> str:
    """Text a server (or anything outside our control) sent, made safe for every output: one line,
    printable, bounded, without our secrets. The one sanitiser: errors, replies and reports use it.

    Each run of whitespace (CR, LF, tab, U+2028, U+2029 ...) becomes one space, so the text can never
    start a line of its own (a forged "== task: OK" report line); every other character that is not
    printable (ESC, NUL and the other controls, bidi overrides such as U+202E, invisible format
    characters) becomes "?", so it cannot drive a terminal or reorder what a reader sees. Longer than
    ``limit`` it is cut and ends in "...". The ``hide`` strings (a password the server may echo) are
    replaced before the text is flattened and again after (so neither can rebuild one), and before it
    is cut, so no part of one survives.
    """
    text = _hidden(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw, hide)
    flat = " ".join(text.split())
    if not flat.isprintable():  # the common line is printable already: no pass over each character
        flat = "".join(c if c.isprintable() else "?" for c in flat)
    clean = _hidden(flat, hide)
    return clean if len(clean) <= limit else clean[:limit] + "..."


def _hidden(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, HIDDEN)
    return text

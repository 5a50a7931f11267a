"""The junk folder of an IMAP account: the folder with the \\Junk special use (RFC 6154), else the
first of the task's ``junk_folders`` names the account has. Looked for once per JUNK_LOOKUP_EVERY
per mailbox (a LIST of every folder is not free), and again after it could not be opened."""

from __future__ import annotations

import re
import time

from exporter.clients.imap4 import Imap4Client, Reply
from exporter.config.model import IncomingConfig
from exporter.legs.folders import first_listed, special_use
from exporter.legs.memo import JunkMemo, LetterMemo

JUNK_LOOKUP_EVERY = 600.0
_STATUS_ITEMS = "(UIDNEXT UIDVALIDITY)"
_STATUS_VALUE = re.compile(rb"\b(UIDNEXT|UIDVALIDITY) (\d+)", re.IGNORECASE)


async def junk_memo(client: Imap4Client, config: IncomingConfig, memo: LetterMemo) -> JunkMemo | None:
    """The junk folder to search besides the configured mailbox (None: no check, or no such folder)."""
    if not config.junk_folders:
        return None
    junk = memo.junk
    if junk is None or time.monotonic() - junk.found_at >= JUNK_LOOKUP_EVERY:
        name = await _look_up(client, config.junk_folders)
        letters = junk.letters if junk is not None and junk.name == name else LetterMemo()
        junk = memo.junk = JunkMemo(name, time.monotonic(), letters)
    return junk if junk.name is not None and junk.name != config.mailbox else None


async def _look_up(client: Imap4Client, names: tuple[str, ...]) -> str | None:
    """None also when LIST fails: the junk check is an extra, the round trip does not depend on it."""
    reply = await client.list_special_use()
    name = special_use(reply, "\\Junk") if reply.ok else None
    if name is not None or not reply.ok:
        return name
    if client.lists_special_use_only:
        reply = await client.list_all()
    return first_listed(reply, names) if reply.ok else None


async def junk_state(client: Imap4Client, name: str) -> tuple[bytes, ...]:
    """What STATUS says of the folder's UIDNEXT and UIDVALIDITY: unchanged, no letter came in."""
    return folder_state((await client.status(name, _STATUS_ITEMS)).require(f"STATUS {name!r}"))


def folder_state(reply: Reply) -> tuple[bytes, ...]:
    """UIDNEXT and UIDVALIDITY from a STATUS reply, or from the response codes of EXAMINE."""
    values = {match.group(1).upper(): match.group(2) for line in reply.lines for match in _STATUS_VALUE.finditer(line)}
    return tuple(b"%s %s" % item for item in sorted(values.items()))

"""Deleting where a delete is only a label: move the letters to the \\Trash folder, expunge them there.

Gmail takes ``STORE \\Deleted`` + ``EXPUNGE`` in INBOX as "remove the INBOX label": the letter stays in
All Mail for ever. Only a letter expunged from the folder with the ``\\Trash`` special use (RFC 6154)
is gone. So, with ``cleanup: trash`` or on a server that says it is Gmail (X-GM-EXT-1), probe letters
are moved there (RFC 6851 MOVE where offered, else COPY, then ``\\Deleted`` and UID EXPUNGE of exactly
those UIDs where UIDPLUS exists; never a plain EXPUNGE), and expunged there by the UIDs the server
gave them (COPYUID, RFC 4315). Without COPYUID the server did not say which they are, so they stay
in the Trash (which Gmail empties after 30 days) rather than anything else being touched.
"""

from __future__ import annotations

import re

from exporter.clients.imap4 import Imap4Client
from exporter.config.model import Cleanup

GMAIL = "X-GM-EXT-1"
_COPYUID = re.compile(rb"\[COPYUID \d+ [0-9:,]+ ([0-9:,]+)\]", re.IGNORECASE)


def cleanup_of(configured: Cleanup | None, capabilities: set[str]) -> Cleanup:
    """The configured cleanup, else trash on Gmail and delete everywhere else."""
    if configured is not None:
        return configured
    return Cleanup.TRASH if GMAIL in capabilities else Cleanup.DELETE


async def move_to_trash(client: Imap4Client, uid_set: str, mailbox: str, trash: str) -> None:
    """Move the letters ``uid_set`` of ``mailbox`` (selected) to ``trash``, expunge them there, and
    select ``mailbox`` again (the session goes on reading it)."""
    uidplus = "UIDPLUS" in client.capabilities
    if "MOVE" in client.capabilities:
        moved = (await client.uid_move(uid_set, trash)).require("UID MOVE")
    else:
        moved = (await client.uid_copy(uid_set, trash)).require("UID COPY")
        (await client.uid_store(uid_set, r"(\Deleted)")).require("UID STORE")
        if uidplus:  # without it the originals stay flagged: a plain EXPUNGE could take others' letters
            (await client.uid_expunge(uid_set)).require("UID EXPUNGE")
    copied = next((match.group(1).decode() for line in moved.lines if (match := _COPYUID.search(line))), None)
    if copied is None or not uidplus:
        return
    (await client.select(trash)).require(f"SELECT {trash!r}")
    (await client.uid_store(copied, r"(\Deleted)")).require(f"UID STORE in {trash!r}")
    (await client.uid_expunge(copied)).require(f"UID EXPUNGE in {trash!r}")
    (await client.select(mailbox)).require(f"SELECT {mailbox!r}")

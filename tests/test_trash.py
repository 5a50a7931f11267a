"""Gmail's delete semantics against Dovecot: a folder Trash with the \\Trash special use, users whose IMAP
says X-GM-EXT-1 (Dovecot's imap_capability, per user), probe letters moved there with MOVE and expunged
there by the UIDs COPYUID gave them, nothing else touched."""

from __future__ import annotations

import imaplib
import itertools
import logging
import re
from pathlib import Path

import pytest

from exporter.clients.imap4 import reply_of
from exporter.legs.folders import special_use
from exporter.probe.errors import Reason
from exporter.probe.phases import Phase
from tests.rig import MailRig
from tests.tasks import probe_once, task_dict

GMAIL = "userdb_imap_capability=+X-GM-EXT-1"
FOREIGN = b"From: someone@example.test\r\nSubject: binned by its reader\r\nMessage-ID: <t@example.test>\r\n\r\nHi\r\n"
_names = itertools.count(1)


def user_with_trash(rig: MailRig, gmail: bool, trash: bool = True) -> str:
    """A new user (Gmail-like or not) whose Trash holds a letter its reader flagged \\Deleted there."""
    user = f"trash-{next(_names)}{'-gm' if gmail else ''}"
    rig.add_users([user], userdb_fields=GMAIL if gmail else "")
    if trash:
        with imaplib.IMAP4(rig.host, rig.ports.imap) as imap:
            imap.login(rig.address(user), rig.password(user))
            assert imap.create("Trash")[0] == "OK"
            assert imap.append("Trash", r"(\Deleted)", None, FOREIGN)[0] == "OK"
            imap.logout()
    return user


def letters(rig: MailRig, user: str, folder: str = "") -> list[Path]:
    """The message files of INBOX (or of ``folder``: ".Trash")."""
    found: list[Path] = []
    for sub in ("new", "cur"):
        directory = rig.maildir(user) / folder / sub
        found += [path for path in directory.iterdir() if not path.name.startswith(".")] if directory.is_dir() else []
    return found


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the probe sent to the mailbox (the debug transcript)."""
    return [
        str(getattr(record, "line", ""))
        for record in caplog.records
        if record.getMessage() == "protocol"
        and getattr(record, "leg", "") == "mailbox"
        and getattr(record, "dir", "") == ">"
    ]


@pytest.mark.parametrize(("gmail", "cleanup"), [(True, None), (False, "trash")], ids=["x-gm-ext-1", "cleanup-trash"])
async def test_letters_go_through_the_trash(
    rig: MailRig, caplog: pytest.LogCaptureFixture, gmail: bool, cleanup: str | None
) -> None:
    user = user_with_trash(rig, gmail)
    caplog.set_level(logging.DEBUG, logger="exporter.transcript")
    task = task_dict(rig, user, mailbox="imaps")
    if cleanup is not None:
        task["incoming"]["cleanup"] = cleanup
    result = await probe_once(task)
    assert result.success, result.error
    assert letters(rig, user) == []  # gone from INBOX
    (binned,) = letters(rig, user, ".Trash")  # and from the Trash: only the reader's letter is left
    assert b"binned by its reader" in binned.read_bytes()
    commands = [line.partition(" ")[2] for line in said(caplog)]  # without the tags
    # The last LIST looks for the Trash (the first ones, at the first look, for a junk folder).
    listed = max(at for at, command in enumerate(commands) if command == 'LIST (SPECIAL-USE) "" "*"')
    moved, select, store, expunge, back = commands[listed + 1 : listed + 6]
    copied = re.fullmatch(r"UID STORE (\d+) \+FLAGS.SILENT \(\\Deleted\)", store)  # the UID COPYUID named
    assert re.fullmatch(r'UID MOVE \d+ "Trash"', moved) and select == 'SELECT "Trash"', commands
    assert copied and expunge == f"UID EXPUNGE {copied.group(1)}" and back == 'SELECT "INBOX"', commands
    assert not any(command == "EXPUNGE" for command in commands)  # never a plain EXPUNGE


async def test_cleanup_delete_overrides_gmail(rig: MailRig, caplog: pytest.LogCaptureFixture) -> None:
    user = user_with_trash(rig, gmail=True)
    caplog.set_level(logging.DEBUG, logger="exporter.transcript")
    task = task_dict(rig, user, mailbox="imaps")
    task["incoming"]["cleanup"] = "delete"
    task["incoming"]["junk_folders"] = []  # no LIST for a junk folder either
    result = await probe_once(task)
    assert result.success, result.error
    assert letters(rig, user) == [] and len(letters(rig, user, ".Trash")) == 1
    assert not any(" UID MOVE " in line or " LIST " in line for line in said(caplog))


async def test_without_a_trash_folder_the_letter_stays(rig: MailRig) -> None:
    user = user_with_trash(rig, gmail=True, trash=False)
    result = await probe_once(task_dict(rig, user, mailbox="imaps"))
    assert result.reason is Reason.MAILBOX and result.failed_phase is Phase.MAILBOX_DELETE, result.error
    assert "no folder has the \\Trash special use" in (result.error or "")
    assert len(letters(rig, user)) == 1


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([b'(\\HasNoChildren) "/" "INBOX"', b'(\\HasNoChildren \\Trash) "/" "[Gmail]/Trash"'], "[Gmail]/Trash"),
        ([b"(\\Trash) NIL Bin"], "Bin"),
        ([b'(\\Trash) "." "Pa\\"per \\\\ bin"'], 'Pa"per \\ bin'),
        ([b'(\\Trash) "/" {5}', bytearray(b"Trash")], "Trash"),  # a literal name
        ([b'(\\Junk) "." "Spam"', b'(\\HasNoChildren \\TrashCan) "." x'], None),
        ([b"garbage", b"(\\Trash"], None),
    ],
)
def test_the_trash_folder_in_a_list_reply(lines: list[bytes | bytearray], expected: str | None) -> None:
    assert special_use(reply_of(True, [*lines, b"List completed"]), "\\Trash") == expected

"""The junk folder by name, on the real Dovecot of tests/rig.py, whose folders have no \\Junk special
use: the first of ``junk_folders`` the account has is searched, only when a letter came in there, and
only our letter is deleted from it. (The \\Junk special use and a real spam filter: test_mailpath_probe.)"""

from __future__ import annotations

import imaplib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.legs.mailbox import MailboxSession
from exporter.letter.arrival import Placement
from exporter.letter.compose import build_letter
from exporter.net.resolve import DeviceRun
from exporter.probe.clock import PhaseClock
from exporter.probe.errors import MailboxFailure
from exporter.probe.result import ProbeResult
from exporter.probe.watch import Mailbox
from exporter.transcript import Transcript, recording
from tests.rig import MailRig
from tests.tasks import SIGNER, config_of, task_dict
from tests.test_trash import FOREIGN, letters

_names = itertools.count(1)
IMAPLIB_TIMEOUT = 30  # a test that loses its way with the server fails, it does not hang


def user_with_folder(rig: MailRig, folder: str, *raw: bytes) -> str:
    user = f"junk-{next(_names)}"
    rig.add_users([user])
    with imaplib.IMAP4(rig.host, rig.ports.imap, timeout=IMAPLIB_TIMEOUT) as imap:
        imap.login(rig.address(user), rig.password(user))
        assert imap.create(f'"{folder}"')[0] == "OK"  # imaplib sends names as they are: quoted here
        imap.logout()
    for letter in raw:
        append(rig, user, folder, letter)
    return user


def append(rig: MailRig, user: str, folder: str, raw: bytes) -> None:
    with imaplib.IMAP4(rig.host, rig.ports.imap, timeout=IMAPLIB_TIMEOUT) as imap:
        imap.login(rig.address(user), rig.password(user))
        assert imap.append(f'"{folder}"', None, None, raw)[0] == "OK"
        imap.logout()


def probe_letter() -> tuple[str, bytes]:
    token = SIGNER.new_token()
    return token.value, build_letter(token, "monitor@example.test", "probe@example.test", "dev", "task")


@pytest.fixture
async def sessions() -> AsyncIterator[list[MailboxSession]]:
    opened: list[MailboxSession] = []
    yield opened
    for session in opened:
        await session.close()


async def open_session(
    rig: MailRig, user: str, opened: list[MailboxSession], mailbox: Mailbox | None = None, **incoming: Any
) -> tuple[MailboxSession, Mailbox]:
    """A session as a probe opens it (``mailbox``: the task's, kept across probes, else a new one)."""
    task = task_dict(rig, user, mailbox="imaps")
    task["incoming"].update(incoming)
    device, config = config_of(task).tasks()[0]
    result = ProbeResult(device.name, config.name, "x", 0.0)
    mailbox = mailbox or Mailbox(config.incoming, SIGNER)
    session = await mailbox.open(PhaseClock(10), DeviceRun(device).resolver(config), result)
    opened.append(session)
    return session, mailbox


async def test_the_first_listed_name_is_searched_and_only_our_letter_leaves_it(
    rig: MailRig, sessions: list[MailboxSession]
) -> None:
    token, raw = probe_letter()
    user = user_with_folder(rig, "Spam", FOREIGN, raw)
    session, _ = await open_session(rig, user, sessions)  # the default names: "Spam" is among them
    found = await session.find([token])
    assert [(letter.token.value, letter.placement) for letter in found] == [(token, Placement.JUNK)]
    headers = await session.header_block(found[0])
    assert headers is not None and f"X-Mail-Roundtrip-Probe: {token}".encode() in headers
    await session.delete(found)
    assert await session.find([token]) == []  # and the mailbox itself is selected again: searches go on
    (kept,) = letters(rig, user, ".Spam")
    assert kept.read_bytes().replace(b"\r\n", b"\n") == FOREIGN.replace(b"\r\n", b"\n")


def sent(transcript: Transcript, command: str) -> int:
    """How often the session sent ``command`` to the mailbox server."""
    lines = transcript.lines
    return sum(1 for line in lines if line.sent and line.text.partition(" ")[2].startswith(command + " "))


async def test_the_junk_folder_is_searched_again_only_when_a_letter_came_in(
    rig: MailRig, sessions: list[MailboxSession]
) -> None:
    token, raw = probe_letter()
    user = user_with_folder(rig, "Junk E-mail", FOREIGN)
    with recording("d", "t") as transcript:
        session, _ = await open_session(rig, user, sessions, junk_folders=["Junk E-mail"])
        assert await session.find([token]) == [] and sent(transcript, "EXAMINE") == 1, transcript.text()
        assert await session.find([token]) == [] and sent(transcript, "EXAMINE") == 1  # STATUS: nothing came in
        assert sent(transcript, "STATUS") == 1
        append(rig, user, "Junk E-mail", raw)
        found = await session.find([token])
    assert [letter.placement for letter in found] == [Placement.JUNK] and sent(transcript, "EXAMINE") == 2


async def test_no_junk_folder_of_these_names_means_no_junk_search(rig: MailRig, sessions: list[MailboxSession]) -> None:
    token, raw = probe_letter()
    user = user_with_folder(rig, "Spam", raw)
    with recording("d", "t") as transcript:
        session, _ = await open_session(rig, user, sessions, junk_folders=["Junk"])
        assert await session.find([token]) == []
    assert sent(transcript, "LIST") == 2 and sent(transcript, "UID SEARCH") == 1, transcript.text()
    assert sent(transcript, "EXAMINE") == 0 and sent(transcript, "STATUS") == 0
    assert len(letters(rig, user, ".Spam")) == 1


async def test_a_junk_folder_made_anew_since_the_search_is_not_touched(
    rig: MailRig, sessions: list[MailboxSession]
) -> None:
    """Found at UID 1 of "Spam"; then someone deletes the folder and makes it anew with another letter,
    also at UID 1. Deleting UID 1 now would take the wrong letter: UIDVALIDITY says so, nothing goes."""
    token, raw = probe_letter()
    user = user_with_folder(rig, "Spam", raw)
    session, _ = await open_session(rig, user, sessions)
    found = await session.find([token])
    assert [letter.placement for letter in found] == [Placement.JUNK]
    with imaplib.IMAP4(rig.host, rig.ports.imap, timeout=IMAPLIB_TIMEOUT) as imap:
        imap.login(rig.address(user), rig.password(user))
        assert imap.delete('"Spam"')[0] == "OK" and imap.create('"Spam"')[0] == "OK"
        imap.logout()
    append(rig, user, "Spam", FOREIGN)
    with pytest.raises(MailboxFailure, match="changed"):
        await session.delete(found)
    await session.close()

    assert len(letters(rig, user, ".Spam")) == 1


async def test_a_kept_session_left_outside_its_mailbox_is_not_kept(
    rig: MailRig, sessions: list[MailboxSession]
) -> None:
    """persistent: true. A failure in the junk folder leaves the session there (or nowhere, after a
    failed EXAMINE): the next probe must not search what it takes for the inbox. It logs in anew."""
    token, raw = probe_letter()
    user = user_with_folder(rig, "Spam", raw)
    first, mailbox = await open_session(rig, user, sessions, persistent=True)
    assert [letter.placement for letter in await first.find([token])] == [Placement.JUNK]
    with imaplib.IMAP4(rig.host, rig.ports.imap, timeout=IMAPLIB_TIMEOUT) as imap:
        imap.login(rig.address(user), rig.password(user))
        assert imap.delete('"Spam"')[0] == "OK"  # gone between the lookup and the search
        imap.logout()
    with pytest.raises(MailboxFailure, match="EXAMINE 'Spam'"):
        await first.find([probe_letter()[0]])  # another probe's token: the folder is searched again
    await first.close()  # handed back to the task's keeper
    with recording("d", "t") as transcript:
        second, _ = await open_session(rig, user, sessions, mailbox)
        assert await second.find([token]) == []
    await second.close()
    await mailbox.close()  # the task's keeper logs the kept session out
    assert sent(transcript, "LOGIN") == 1 and sent(transcript, "SELECT") == 1, transcript.text()

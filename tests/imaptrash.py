"""FakeImap with a second folder, "Trash" (\\Trash in LIST), and UID COPY / UID MOVE into it: the
trash path's fallbacks (no MOVE, no UIDPLUS) that Dovecot, which has both, cannot show."""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.hostile import Peer
from tests.imapfake import Command, FakeImap, FakeLetter, _atom, _uid_set

LIST = b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n'


@dataclass
class FakeImapWithTrash(FakeImap):
    """``letters`` is the selected folder: ``inbox`` or ``trash`` (one client at a time)."""

    trash: list[FakeLetter] = field(default_factory=list)
    inbox: list[FakeLetter] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inbox = self.letters

    async def _answer(self, peer: Peer, tag: bytes, command: Command) -> bool:
        if command.name == "LIST":
            await peer.send(LIST + tag + b" OK List completed\r\n")
            return True
        if command.name == "SELECT":
            self.letters = self.trash if _atom(command.args[0]) == "Trash" else self.inbox
        if command.name in ("UID COPY", "UID MOVE"):
            await peer.send(self._copy(command, tag))
            return True
        return await super()._answer(peer, tag, command)

    def _copy(self, command: Command, tag: bytes) -> bytes:
        """Copy (or move) letters to the Trash under new UIDs; COPYUID says which, where UIDPLUS is."""
        wanted = _uid_set(_atom(command.args[0]))
        pairs = []
        for letter in [letter for letter in self.letters if letter.uid in wanted]:
            copy = FakeLetter(letter.raw, self._uid_next, letter.internaldate, set(letter.flags))
            self._uid_next += 1
            self.trash.append(copy)
            pairs.append((letter.uid, copy.uid))
        untagged = b""
        if command.name == "UID MOVE":
            for number in range(len(self.letters), 0, -1):
                if self.letters[number - 1].uid in wanted:
                    del self.letters[number - 1]
                    untagged += b"* %d EXPUNGE\r\n" % number
        code = b""
        if "UIDPLUS" in self.capabilities and pairs:
            source = ",".join(str(old) for old, _ in pairs).encode()
            code = b"[COPYUID 1 " + source + b" " + ",".join(str(new) for _, new in pairs).encode() + b"] "
        return untagged + tag + b" OK " + code + command.name.encode() + b" completed\r\n"

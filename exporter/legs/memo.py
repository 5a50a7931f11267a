"""What earlier sessions of one mailbox learnt about its letters, so no letter's headers are read twice."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from exporter.letter.recognise import Recognised

# What a letter memo may hold; past it the oldest entries are forgotten (read again, if ever needed).
MEMO_LIMIT = 50_000


@dataclass
class LetterMemo:
    """What earlier sessions of one mailbox learnt about its letters, by stable reference (IMAP UID,
    POP3 UIDL), so that no letter's headers are read twice: ``None`` for a letter that is not ours
    (not recognised, or too big or odd to be one of ours), what it is for a letter of ours (or a
    bounce of one) that was not wanted yet (another probe's, or too young to sweep). ``validity``
    is IMAP's UIDVALIDITY: UIDs under another one mean other letters."""

    letters: dict[str, Recognised | None] = field(default_factory=dict)
    validity: str | None = None
    junk: JunkMemo | None = None  # IMAP: the account's junk folder, once looked for (legs.junk)

    def __contains__(self, ref: str) -> bool:
        return ref in self.letters

    def ours(self, ref: str) -> Recognised | None:
        return self.letters.get(ref)

    def remember(self, ref: str, ours: Recognised | None) -> None:
        self.letters[ref] = ours
        if len(self.letters) > MEMO_LIMIT:
            for old in list(self.letters)[: MEMO_LIMIT // 10]:
                del self.letters[old]

    def forget(self, refs: Collection[str]) -> None:
        for ref in refs:
            self.letters.pop(ref, None)

    def keep_only(self, refs: Collection[str]) -> None:
        """Forget letters that are gone, so the memo stays as small as the mailbox."""
        self.letters = {ref: ours for ref, ours in self.letters.items() if ref in refs}

    def renew(self, validity: str | None) -> None:
        if validity != self.validity:
            self.letters.clear()
            self.validity = validity


@dataclass
class JunkMemo:
    """What earlier sessions learnt of the account's junk folder: its name (None: it has none), when
    that was found (monotonic time), and its letters (UIDs there are the junk folder's own)."""

    name: str | None
    found_at: float
    letters: LetterMemo = field(default_factory=LetterMemo)

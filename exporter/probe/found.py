"""What the letters a search found are to the probe that found them: pure, so that what a search
means can be tested (and extended: junk placement, header checks) without a mailbox."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from exporter.legs.mailbox import FoundLetter
from exporter.letter.token import Token
from exporter.probe.errors import SMTPRejected
from exporter.probe.phases import Phase


@dataclass(frozen=True)
class SortedLetters:
    """Letters a search found, by what they are to the probe that found them. Pure, so that what
    a search means can be tested (and extended) without a mailbox."""

    mine: list[FoundLetter]
    late: list[FoundLetter]  # of earlier probes that gave up waiting for them
    swept: list[FoundLetter]  # leftovers, found only because they are old
    bounces: list[FoundLetter]  # a bounce proves a letter will not arrive, never that it did

    @property
    def to_delete(self) -> list[FoundLetter]:
        return [*self.mine, *self.late, *self.swept, *self.bounces]

    def raise_if_bounced(self, token: Token) -> None:
        """End the probe when ``token``'s letter bounced: a rejection, only later than in the SMTP session."""
        own = next((bounce for bounce in self.bounces if bounce.token.value == token.value), None)
        if own is not None:
            raise SMTPRejected(f"the letter bounced: {own.bounce}", phase=Phase.MAILBOX_SEARCH)


def sort_found(found: Sequence[FoundLetter], token: str | None, late: Collection[str]) -> SortedLetters:
    """``token``: the probe's own (None when only late letters and leftovers are looked for)."""
    letters = [letter for letter in found if letter.bounce is None]
    mine = [letter for letter in letters if letter.token.value == token]
    late_ones = [letter for letter in letters if letter not in mine and letter.token.value in late]
    swept = [letter for letter in letters if letter not in mine and letter not in late_ones]
    return SortedLetters(mine, late_ones, swept, [letter for letter in found if letter.bounce is not None])

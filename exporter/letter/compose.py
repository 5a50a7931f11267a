"""The probe letter as it is sent. The token travels in a dedicated header, the Subject and the
Message-ID, since servers differ in which headers they can search."""

from __future__ import annotations

from email.utils import formatdate

from exporter.config.model import SpamTest
from exporter.letter.token import Token

HEADER = "X-Mail-Roundtrip-Probe"
SUBJECT_PREFIX = "[mail-roundtrip-exporter] test letter"
_MESSAGE_ID_DOMAIN = "mail-roundtrip-exporter.invalid"


# GTUBE (the Generic Test for Unsolicited Bulk Email) and rspamd's variant that asks for its "add
# header" action (rspamd.com/doc/gtube_patterns.html): test patterns, harmless, known to every filter.
SPAM_TEST_PATTERNS = {
    SpamTest.GTUBE: "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X",
    SpamTest.GTUBE_ADD_HEADER: "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X",
}


def build_letter(
    token: Token, sender: str, destination: str, device: str, task: str, spam_test: SpamTest | None = None
) -> bytes:
    """The probe letter, ready for DATA.

    Written out directly rather than with email.message: every value is ASCII without CR/LF (the
    config loader checks addresses and names), and the email package costs more CPU than the rest
    of a probe's own work put together.
    """
    headers = (
        f"From: {sender}",
        f"To: {destination}",
        f"Subject: {subject(token)}",
        f"Date: {formatdate(token.created, localtime=False)}",
        f"Message-ID: {message_id(token)}",
        f"{HEADER}: {token.value}",
        "Auto-Submitted: auto-generated",
        "X-Auto-Response-Suppress: All",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    )
    body: tuple[str, ...] = (
        "This is an automated test letter from mail-roundtrip-exporter, a monitor that checks",
        "that e-mail sent through the SMTP server arrives in this mailbox.",
        "",
        f"Device: {device}",
        f"Task: {task}",
        f"Token: {token.value}",
        "",
        "The monitor deletes this letter itself when it finds it. If you see it, the monitor",
        "missed it (it was late, or the monitor stopped); it is safe to delete.",
    )
    if spam_test is not None:  # the filter sees it in the body, as it would in real spam
        body += (
            "",
            "This letter tests the spam filter on purpose, with this test pattern:",
            SPAM_TEST_PATTERNS[spam_test],
        )
    return "\r\n".join((*headers, "", *body, "")).encode("ascii", errors="replace")


def subject(token: Token) -> str:
    return f"{SUBJECT_PREFIX} {token.value}"


def message_id(token: Token) -> str:
    return f"<{token.value}@{_MESSAGE_ID_DOMAIN}>"

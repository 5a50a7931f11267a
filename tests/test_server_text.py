"""Server text is data: the one sanitiser (exporter.sanitise.server_text) and every output that shows
server text (the --once report, logs, the status page) keep it on its line and free of controls.

The end-to-end case (hostile servers, the real rig, ``--once`` as a process) is in test_faults.py;
here each output gets text that did NOT pass the sanitiser first, so each must be safe by itself.
"""

from __future__ import annotations

import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from exporter.exposition.stats import TaskStats
from exporter.logs import JSONFormatter, LogfmtFormatter
from exporter.probe.errors import ProtocolFailure, Reason
from exporter.probe.phases import Phase
from exporter.probe.result import LegResult, ProbeResult
from exporter.report import render_report
from exporter.sanitise import HIDDEN, MESSAGE_LIMIT, SERVER_TEXT_LIMIT, server_text
from exporter.web.console.overview import Overview
from exporter.web.paths import Prefix

FORGED = "\r\n== forged/task: OK\n"
# ESC sequences, bare CR, NUL, DEL, C1 NEL, line/paragraph separators, bidi overrides, zero width.
HOSTILE = "\x1b[2J\x1b]0;owned\x07 bare\rCR NUL\x00 DEL\x7f NEL\x85 LS\u2028PS\u2029 RLO\u202eKO\u202c ZW\u200b"


def safe_line(text: str) -> bool:
    return all(c.isprintable() for c in text)


@given(st.text() | st.binary(), st.integers(min_value=1, max_value=400))
def test_any_text_becomes_one_bounded_printable_line(raw: str | bytes, limit: int) -> None:
    clean = server_text(raw, limit)
    assert safe_line(clean)
    assert len(clean) <= limit + len("...")
    assert clean == clean.strip() and "  " not in clean


@given(st.text(), st.text(alphabet=st.characters(codec="utf-8"), min_size=1), st.text())
def test_a_hidden_secret_never_shows(before: str, secret: str, after: str) -> None:
    assert secret not in server_text(before + secret + after, MESSAGE_LIMIT, hide=[secret]) or secret in HIDDEN


def test_examples() -> None:
    assert server_text(b"550 5.1.1 <x@y>:\r\n   user unknown\x00\x1b[0m") == "550 5.1.1 <x@y>: user unknown??[0m"
    assert server_text("a\u2028b\u2029c\rd") == "a b c d"
    assert server_text("right\u202eleft") == "right?left"
    assert server_text(b"\xff\xfe") == "\ufffd\ufffd"  # undecodable bytes are shown as such
    assert server_text("x" * 1000) == "x" * SERVER_TEXT_LIMIT + "..."
    assert server_text("-ERR bad password hunter2", hide=["hunter2"]) == f"-ERR bad password {HIDDEN}"


def test_every_error_message_is_sanitised() -> None:
    """Whichever path builds a message (a library's exception text, a forgotten server_text call)."""
    error = ProtocolFailure(f"unexpected reply: {HOSTILE}{FORGED}", phase=Phase.MAILBOX_LOGIN)
    assert safe_line(str(error)) and str(error).startswith("mailbox_login: unexpected reply: ?[2J")


def result_with(text: str) -> ProbeResult:
    """A result carrying raw hostile text, as if the source had not sanitised it."""
    return ProbeResult(
        device="rig",
        task="t",
        token="mrt-x",
        started=0.0,
        reason=Reason.PROTOCOL,
        error=text,
        smtp_reply=text,
        smtp=LegResult(address=text),
        mailbox=LegResult(address=text),
    )


def test_report_keeps_server_text_on_its_lines() -> None:
    report = render_report([result_with(HOSTILE + FORGED + "x" * 5000), result_with(FORGED)])
    assert [line for line in report.splitlines() if line.startswith("==")] == [
        "== rig/t: FAILED (protocol)",
        "== rig/t: FAILED (protocol)",
    ]
    assert all(safe_line(line) and len(line) < MESSAGE_LIMIT + 50 for line in report.splitlines())


def log_line(formatter: logging.Formatter, value: str) -> str:
    record = logging.LogRecord("exporter.probe", logging.INFO, __file__, 1, "probe finished", None, None)
    record.error = value
    return formatter.format(record)


def test_logs_escape_what_they_quote() -> None:
    """Both formats: one line, printable, and the value reads back exactly (escaped, not altered)."""
    for value in (HOSTILE + FORGED, "\x1b[31mred\rgreen", "a\u2028b", "rlo\u202e"):  # some without spaces
        for formatter in (LogfmtFormatter(), JSONFormatter()):
            line = log_line(formatter, value)
            assert safe_line(line), (formatter, ascii(line))
        logfmt = log_line(LogfmtFormatter(), value)
        assert json.loads(logfmt.split(" error=", 1)[1]) == value
        assert json.loads(log_line(JSONFormatter(), value))["error"] == value


def test_status_page_row_is_sanitised() -> None:
    stats = TaskStats(device="rig", task="t", interval=60.0, email_timeout=60.0, last=result_with(HOSTILE + FORGED))
    row = Overview(Prefix(), "/metrics")._make_row(stats).html
    assert safe_line(row) and "\u202e" not in row and "== forged/task: OK" in row
    assert "?[2J?]0;owned? bare CR" in row

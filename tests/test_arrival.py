"""Where and how the letter arrived, read from its header block: Authentication-Results (only the
receiving side's), the spam score, the Received hops; the keys that steer it; its metrics. Pure: the
real servers that write these fields are in tests/test_mailpath_probe.py."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import pytest
import yaml

from exporter.clients.imap4 import reply_of
from exporter.config.dump import dump_config
from exporter.config.load import parse_config
from exporter.config.model import DEFAULT_JUNK_FOLDERS, MAX_NAMES, SpamTest
from exporter.exposition.render import render_tasks
from exporter.exposition.stats import TaskStats
from exporter.legs.folders import first_listed, special_use
from exporter.letter.arrival import Arrival, Placement, hop_text, read_arrival
from exporter.letter.authresults import Method, authentication_results, parse_field
from exporter.letter.compose import SPAM_TEST_PATTERNS, build_letter
from exporter.letter.fields import FIELD_LIMIT, uncommented
from exporter.letter.hops import HOPS_READ, hops, slowest, transit
from exporter.letter.token import Signer
from exporter.probe.errors import Reason
from exporter.probe.result import ProbeResult
from exporter.report import render_report
from exporter.web.console.task import facts
from tests.tasks import config_of
from tests.test_config import error_of, minimal

RSPAMD = (
    "mx.example.test; dkim=pass header.d=example.test header.s=test header.b=Xyz; "
    "spf=pass (mx.example.test: domain of probe@example.test designates 127.0.0.1 as permitted sender) "
    "smtp.mailfrom=probe@example.test; dmarc=pass (policy=reject) header.from=example.test"
)


def test_rspamd_results_are_read() -> None:
    assert authentication_results([RSPAMD], ()) == {Method.DKIM: "pass", Method.SPF: "pass", Method.DMARC: "pass"}


def test_only_the_topmost_field_is_trusted_without_authserv_ids() -> None:
    """A field further down was written by an earlier hop, or by the sender: a forged pass is not believed."""
    forged = "mx.example.test; dkim=pass; spf=pass; dmarc=pass"
    assert authentication_results(["mx.example.test; dkim=fail; spf=softfail", forged], ()) == {
        Method.DKIM: "fail",
        Method.SPF: "softfail",
    }


def test_authserv_ids_choose_the_fields() -> None:
    fields = ["relay.other.test; dkim=fail", "MX.example.test 1; dkim=pass; arc=none", "forger.test; dmarc=pass"]
    assert authentication_results(fields, ["mx.example.test"]) == {Method.DKIM: "pass", Method.ARC: "none"}
    assert authentication_results(fields, ["nobody.test"]) == {}


def test_one_pass_is_enough_for_a_method() -> None:
    """Two DKIM signatures (ours and a list's): the one that held is what counts."""
    assert authentication_results(["mx; dkim=fail header.d=list.test; dkim=pass header.d=example.test"], ()) == {
        Method.DKIM: "pass"
    }
    assert authentication_results(["mx; dkim=temperror; dkim=fail"], ()) == {Method.DKIM: "temperror"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mx; none", ("mx", [])),
        ('"quoted;id" ; spf=pass', ("quoted;id", [(Method.SPF, "pass")])),
        ("mx (comment; dkim=fail) ; spf = pass", ("mx", [(Method.SPF, "pass")])),
        ("mx; dkim/1=PASS", ("mx", [(Method.DKIM, "pass")])),
        ("mx; spf=hardfail", ("mx", [(Method.SPF, "fail")])),  # RFC 5451's name
        ("mx; spf=maybe; iprev=pass; x-custom=pass; dmarc=bestguesspass", ("mx", [])),  # outside the registry
        ('mx; dkim=pass reason="a ; b" header.d=x; spf=fail', ("mx", [(Method.DKIM, "pass"), (Method.SPF, "fail")])),
        ("mx; spf=pass (unclosed comment; dkim=fail", ("mx", [(Method.SPF, "pass")])),
        ("", ("", [])),
    ],
)
def test_fields_parse(text: str, expected: tuple[str, list[tuple[Method, str]]]) -> None:
    assert parse_field(text) == expected


def test_comments_nest_and_quotes_protect_parentheses() -> None:
    assert " ".join(uncommented('a (b (c) d) e "f (g)" h (i \\) j) k').split()) == 'a e "f (g)" h k'


def test_hostile_fields_stay_bounded() -> None:
    """Megabytes of nesting, semicolons and quotes: linear, cut at FIELD_LIMIT, never an exception."""
    for text in ("(" * 1_000_000, ";" * 1_000_000, '"' * 1_000_000, "mx; " + "spf=pass; " * 100_000):
        authentication_results([text] * 50, ())
        hops([text] * 50)
    assert len(uncommented("x" * (FIELD_LIMIT * 4))) == FIELD_LIMIT


RECEIVED = [
    "from mx.example.test by mail.example.test with LMTP id abc; Sun, 06 Dec 2026 10:00:04 +0000",
    "from submit.example.test (submit.example.test [127.0.0.1]) by mx.example.test (Postfix) with ESMTPS id "
    "4A; Sun, 06 Dec 2026 10:00:01 +0000 (UTC)",
    "from [127.0.0.1] (localhost [127.0.0.1]) by submit.example.test (Postfix) with ESMTPSA id 3B\r\n"
    "\tfor <probe@example.test>; Sun, 06 Dec 2026 11:00:00 +0100 (CET)",
]


def test_hops_are_read_bottom_up_with_their_delays() -> None:
    path = hops(RECEIVED)
    assert [(hop.by, hop.sender, hop.protocol, hop.delay) for hop in path] == [
        ("submit.example.test", "[127.0.0.1]", "ESMTPSA", None),
        ("mx.example.test", "submit.example.test", "ESMTPS", 1.0),
        ("mail.example.test", "mx.example.test", "LMTP", 3.0),
    ]
    hop = slowest(path)
    assert hop is not None and hop.by == "mail.example.test"
    assert transit(path) == 4.0
    assert hop_text(path[1]) == "mx.example.test (ESMTPS from submit.example.test) 2026-12-06 10:00:01Z +1 s"


def test_hops_without_dates_or_clauses() -> None:
    path = hops(["by only.test; not a date", "garbage", "from a.test; Sun, 06 Dec 2026 10:00:00 -0000"])
    assert [(hop.by, hop.at is None, hop.delay) for hop in path] == [
        ("", False, None),
        ("", True, None),
        ("only.test", True, None),
    ]
    assert slowest(path) is None and transit(path) is None


def test_clock_skew_shows_as_a_negative_delay() -> None:
    """The servers' clocks differ: a later hop may look earlier. Shown as it is, never hidden."""
    path = hops(["by b.test; Sun, 06 Dec 2026 10:00:00 +0000", "by a.test; Sun, 06 Dec 2026 10:00:02 +0000"])
    assert path[1].delay == -2.0


def test_only_the_newest_hops_are_read() -> None:
    many = [f"by h{n}.test; Sun, 06 Dec 2026 10:00:00 +0000" for n in range(100)]
    path = hops(many)
    assert len(path) == HOPS_READ and path[-1].by == "h0.test"  # the topmost (last) hop is kept


def test_host_names_are_sanitised() -> None:
    (hop,) = hops(["from evil\u202e.test by \x1b[31mred; Sun, 06 Dec 2026 10:00:00 +0000"])
    assert hop.by.isprintable() and hop.sender.isprintable()


def header_block(*fields: str) -> bytes:
    return ("".join(f"{field}\r\n" for field in fields) + "Subject: x\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("field", "score"),
    [
        ("X-Spamd-Result: default: False [-0.10 / 15.00]; DMARC_POLICY_ALLOW(-0.50)[example.test,reject]", -0.1),
        ("X-Rspamd-Score: 6.5", 6.5),
        ("X-Spam-Status: No, score=-0.1 required=5.0 tests=ALL_TRUSTED autolearn=ham", -0.1),
        ("X-Spam-Status: Yes, score=1000 required=5.0", 1000.0),
        ("X-Spam-Score: 3", 3.0),
        ("X-Spam-Score: 99999999999999999999", None),  # not a number a filter writes
        ("X-Spam-Score: nan", None),
        ("X-Spam-Flag: YES", None),
    ],
)
def test_spam_scores(field: str, score: float | None) -> None:
    assert read_arrival(header_block(field), Placement.INBOX, ()).spam_score == score


def test_a_whole_header_block() -> None:
    block = header_block(
        f"Received: {RECEIVED[0]}",
        f"Authentication-Results: {RSPAMD}",
        "X-Rspamd-Score: 1.2",
        f"Received: {RECEIVED[1]}",
        "Authentication-Results: forged.test; dkim=fail",
        f"Received: {RECEIVED[2]}",
    )
    arrival = read_arrival(block, Placement.JUNK, ())
    assert arrival.placement is Placement.JUNK and arrival.spam_score == 1.2 and len(arrival.hops) == 3
    assert arrival.authentication_text() == "spf=pass dkim=pass dmarc=pass"
    assert arrival.hops_summary() == "3 Received, slowest +3 s to mail.example.test, transit 4 s (servers' clocks)"
    assert read_arrival(None, Placement.INBOX, ()) == Arrival(Placement.INBOX)
    assert read_arrival(b"\xff\xfe\x00garbage", Placement.INBOX, ()).authentication_text() == "none reported"


def test_junk_folder_from_a_list_reply() -> None:
    special = reply_of(True, [b'(\\HasNoChildren) "." INBOX', b'(\\HasNoChildren \\Junk) "." "Junk E-mail"', b"done"])
    assert special_use(special, "\\Junk") == "Junk E-mail"
    plain = reply_of(True, [b'(\\HasNoChildren) "/" INBOX', b'(\\HasNoChildren) "/" "[Gmail]/Spam"', b"done"])
    assert special_use(plain, "\\Junk") is None
    assert first_listed(plain, DEFAULT_JUNK_FOLDERS) == "[Gmail]/Spam"
    assert first_listed(plain, ("spam", "Junk")) is None  # names are case-sensitive


def incoming(**keys: Any) -> dict[str, Any]:
    return minimal(incoming={"protocol": "imap", "host": "imap.example.test", "user": "u", "password": "p", **keys})


def test_arrival_keys() -> None:
    defaults = config_of(incoming()["devices"][0]["tasks"][0]).tasks()[0][1].incoming
    assert defaults.junk_folders == DEFAULT_JUNK_FOLDERS and defaults.junk_is_failure and defaults.authserv_ids == ()
    task = incoming(junk_folders=[], junk_is_failure=False, authserv_ids=["mx.example.test"])["devices"][0]["tasks"][0]
    configured = config_of(task).tasks()[0][1].incoming
    assert (configured.junk_folders, configured.junk_is_failure, configured.authserv_ids) == (
        (),
        False,
        ("mx.example.test",),
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"junk_folders": "Junk"}, "incoming.junk_folders: must be a list, got a string"),
        ({"junk_folders": ["ok"] * (MAX_NAMES + 1)}, f"incoming.junk_folders: at most {MAX_NAMES} entries"),
        ({"junk_folders": ["a\x07b"]}, "incoming.junk_folders: 'a\\x07b' contains a control character"),
        ({"authserv_ids": ["mx example"]}, "incoming.authserv_ids: 'mx example' is not an authserv-id"),
        ({"junk_is_failure": "maybe"}, "incoming.junk_is_failure: "),
    ],
)
def test_bad_arrival_keys(keys: dict[str, Any], expected: str) -> None:
    assert expected in error_of(incoming(**keys))


def test_pop3_has_no_junk_folder() -> None:
    data = minimal(
        incoming={"protocol": "pop3", "host": "pop.example.test", "user": "u", "password": "p", "junk_folders": ["J"]}
    )
    assert "POP3 sees only the INBOX, no junk folder; remove junk_folders" in error_of(data)


def found(placement: Placement, **result: Any) -> ProbeResult:
    now = time.time()
    arrival = read_arrival(
        header_block(*(f"Received: {text}" for text in RECEIVED), f"Authentication-Results: {RSPAMD}"), placement, ()
    )
    return ProbeResult("d", "t", "x", now - 1, arrival=arrival, delivery_seconds=0.5, finished=now, **result)


def test_metrics_and_report() -> None:
    stats = TaskStats("d", "t", 60.0, 600.0)
    stats.record(found(Placement.JUNK, reason=Reason.JUNK, error="mailbox_search: in the junk folder"))
    stats.record(ProbeResult("d", "t", "y", time.time(), reason=Reason.DELIVERY_TIMEOUT, finished=time.time()))
    text = render_tasks([stats], openmetrics=False)
    for line in (
        'mail_roundtrip_letter_placement{device="d",task="t",placement="junk"} 1',
        'mail_roundtrip_letter_placement{device="d",task="t",placement="inbox"} 0',
        'mail_roundtrip_authentication_result{device="d",task="t",method="dmarc",result="pass"} 1',
        'mail_roundtrip_received_hops{device="d",task="t"} 3',
        'mail_roundtrip_slowest_hop_seconds{device="d",task="t"} 3.0',
        'mail_roundtrip_probe_failures_total{device="d",task="t",reason="junk"} 1',
    ):
        assert line in text.splitlines(), line  # the last found letter's, after a failed probe too
    assert "mail_roundtrip_spam_score{" not in text  # no filter gave one
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    report = render_report([found(Placement.INBOX, success=True)])
    assert "   placement: inbox" in report and "   authentication: spf=pass dkim=pass dmarc=pass" in report
    assert "     3. mail.example.test (LMTP from mx.example.test) 2026-12-06 10:00:04Z +3 s" in report


def test_keys_show_in_the_config_dump_and_load_back() -> None:
    task = incoming(junk_folders=["Spam"], junk_is_failure=False, authserv_ids=["mx.example.test"])["devices"][0]
    task["tasks"][0]["spam_test"] = "gtube_add_header"
    config = parse_config({"devices": [task]})
    shown = dump_config(config)
    assert "spam_test: gtube_add_header" in shown and "junk_is_failure: false" in shown
    assert dump_config(parse_config(yaml.safe_load(shown))) == shown  # (the password shows as <secret>)
    pop3 = minimal(incoming={"protocol": "pop3", "host": "pop.example.test", "user": "u", "password": "p"})
    assert "junk_folders" not in dump_config(parse_config(pop3))  # POP3 has no junk folder


def test_spam_test_puts_the_pattern_in_the_body() -> None:
    token = Signer(b"k" * 32).new_token()
    plain = build_letter(token, "a@example.test", "b@example.test", "d", "t")
    marked = build_letter(token, "a@example.test", "b@example.test", "d", "t", SpamTest.GTUBE_ADD_HEADER)
    assert b"GTUBE" not in plain
    assert marked.endswith(SPAM_TEST_PATTERNS[SpamTest.GTUBE_ADD_HEADER].encode() + b"\r\n")
    assert marked.split(b"\r\n\r\n")[0] == plain.split(b"\r\n\r\n")[0]  # the same headers: still ours


def test_the_task_page_shows_where_and_how_it_arrived() -> None:
    result = found(Placement.JUNK, reason=Reason.JUNK)
    shown = dict(facts(result))
    assert ">junk<" in shown["Placement"] and "spf=pass dkim=pass dmarc=pass" in shown["Authentication"]
    assert shown["Hops"].count("<li>") == 3 and "mail.example.test (LMTP from mx.example.test)" in shown["Hops"]
    hostile = read_arrival(
        header_block("Received: from <script>x by <b>y; Sun, 06 Dec 2026 10:00:00 +0000"), Placement.INBOX, ()
    )
    assert "<script>" not in dict(facts(ProbeResult("d", "t", "x", 0.0, arrival=hostile)))["Hops"]

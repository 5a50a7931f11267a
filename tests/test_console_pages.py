"""The console's pages and endpoints in process, without a browser or a mail server: made-up probe
histories (tests/console_data.py) through the real aiohttp app. The browser tests against the real rig
are tests/test_console_browser.py."""

from __future__ import annotations

import dataclasses
import gc
import json
import re
import time
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from exporter import cli
from exporter.config.load import parse_config
from exporter.config.model import Secret
from exporter.letter.arrival import Placement, read_arrival
from exporter.probe.clock import PhaseClock
from exporter.probe.history import ProbeHistory, pack, unpack
from exporter.probe.phases import Leg, Phase
from exporter.service import Exporter
from exporter.transcript import HEAD_LINES, TAIL_LINES, Transcript, note, note_letter, recording
from exporter.web.app import make_app
from exporter.web.console.markup import CSP
from exporter.web.console.probe_now import ProbeNowGate, Refused
from exporter.web.console.svg import LABEL_WIDTH, waterfall
from exporter.web.paths import Prefix, parse_prefix
from tests.console_data import exporter_of, exporter_with, fill, result
from tests.rig import free_ports
from tests.tasks import unreachable_task

SCRIPT = '<script>document.title="owned"</script>'


def _failing(exporter: Exporter, key: tuple[str, str], error: str = "") -> None:
    exporter.scheduler.runners[key].stats.record(result(*key, success=False, finished=time.time(), error=error))


async def test_overview_lists_failing_tasks_first_with_reason_and_counts() -> None:
    exporter = exporter_with(12, devices=3)
    fill(exporter, 3, failing_every=0)  # all succeed
    _failing(exporter, ("dev2", "t2-3"))
    async with TestClient(TestServer(make_app(exporter))) as client:
        response = await client.get("/")
        page = await response.text()
    assert response.status == 200 and response.headers["Content-Security-Policy"] == CSP
    rows = re.findall(r'<tr (?:hidden )?class="(\w*)" data-search="([^"]*)"', page)
    assert rows[0] == ("failing", "dev2 t2-3 auth smtp-t2-3.example.test imap.example.test 192.0.2.1 192.0.2.2")
    assert [css for css, _ in rows[1:]] == [""] * 11
    assert re.search(r"<dt>failing</dt><dd>1</dd>", page) and re.search(r"<dt>tasks</dt><dd>12</dd>", page)
    assert "server rejected the credentials" in page and 'id="reload-failed"' not in page


async def test_filter_and_banner_and_escaping() -> None:
    exporter = exporter_with(6, devices=2)
    fill(exporter, 2)
    _failing(exporter, ("dev1", "t1-1"), error=f"smtp_greeting: refused: 554 {SCRIPT}\r\n== forged")
    exporter.reload_status.error, exporter.reload_status.failed_at = f"config.yml: bad {SCRIPT}", time.time()
    async with TestClient(TestServer(make_app(exporter))) as client:
        page = await (await client.get("/", params={"q": "T1-"})).text()
        task_page = await (await client.get("/task/dev1/t1-1")).text()
    shown = re.findall(r'<tr class="\w*" data-search="(\S+)', page)
    assert shown and all(device == "dev1" for device in shown) and page.count("<tr hidden") == 3
    assert 'value="T1-"' in page and "3 of 6 shown" in page
    assert 'id="reload-failed"' in page and "config.yml: bad" in page
    for text in (page, task_page):
        assert "<script>document" not in text and "&lt;script&gt;document.title=&quot;owned&quot;" in text
        assert "\r" not in text.split("<body", 1)[1].replace("\n", "")


async def test_task_page_shows_waterfall_sparkline_facts_and_transcripts() -> None:
    exporter = exporter_with(2, devices=1)
    fill(exporter, 4, failing_every=1)  # task 0 fails its last two
    async with TestClient(TestServer(make_app(exporter))) as client:
        page = await (await client.get("/task/dev0/t0-0")).text()
        missing = await client.get("/task/dev0/nope")
    assert missing.status == 404
    assert page.count('<svg class="waterfall"') == 4 and '<svg class="sparkline"' in page
    for phase in ("smtp_dns", "smtp_tls", "smtp_auth", "mailbox_login"):
        assert f">{phase}</text>" in page
    assert "wait for the letter" in page  # the successful ones waited for their letter
    assert "250 2.0.0 Ok: queued as 4Xy1Z2" in page and "TLSv1.3" in page and "certificate expires" in page
    assert "Transcript of the last failed probe" in page and "AUTH PLAIN &lt;redacted&gt;" in page


def test_waterfall_draws_the_real_start_offsets() -> None:
    drawn = waterfall(result("d", "t", success=True, finished=time.time()))
    bars = dict(re.findall(r'<text class="label" x="0" y="\d+">(\w+)</text><rect class="\w+" x="([\d.]+)"', drawn))
    # The mailbox leg's TLS (from 3 ms) starts before SMTP's (from 7 ms): the legs overlap, as they ran.
    assert LABEL_WIDTH <= float(bars["mailbox_tls"]) < float(bars["smtp_tls"]) < float(bars["smtp_submit"])
    assert float(bars["smtp_dns"]) == LABEL_WIDTH


async def test_phase_clock_notes_when_each_phase_ran() -> None:
    clock = PhaseClock(5.0)
    async with clock.phase(Phase.SMTP_GREETING):
        pass
    async with clock.phase(Phase.MAILBOX_SEARCH):
        pass
    async with clock.phase(Phase.SMTP_GREETING, accumulate=True):
        pass
    async with clock.phase(Phase.MAILBOX_SEARCH):  # the last search counts, as in the durations
        pass
    phases = [span.phase for span in clock.spans]
    assert phases == [Phase.SMTP_GREETING, Phase.SMTP_GREETING, Phase.MAILBOX_SEARCH]
    assert all(span.start >= 0 and span.seconds >= 0 for span in clock.spans)
    starts = [span.start for span in clock.spans]
    assert starts == sorted(starts)


def test_history_is_bounded_and_keeps_the_last_failure_with_its_transcript() -> None:
    history = ProbeHistory(limit=3)
    now = time.time()
    history.add(result("d", "t", success=False, finished=now - 50))
    first_failure = now - 50 - 0.2
    for n in range(4):
        history.add(result("d", "t", success=False, finished=now - 40 + n))
    assert len(history) == 3 and history.failing_since == first_failure
    assert history.last_failure is not None and history.last_failure.transcript is not None
    assert all(kept.transcript is None for kept in history.newest_first())  # no transcript per kept probe
    history.add(result("d", "t", success=True, finished=now))
    assert history.failing_since is None and next(history.newest_first()).success


@pytest.mark.parametrize("success", [True, False])
def test_a_kept_probe_is_the_probe_without_its_transcript(success: bool) -> None:
    made = result("d", "t", success=success, finished=time.time())
    made.server_delivery_seconds, made.swept, made.smtp.tls = -0.5, 2, None
    made.arrival = read_arrival(ARRIVED, Placement.JUNK, ())  # where and how it arrived is kept too
    assert made.arrival.hops and made.arrival.authentication
    assert unpack(pack(made)) == dataclasses.replace(made, transcript=None)
    packed = pack(made)
    for _ in range(4):  # each collection untracks one more level of tuples of plain values
        gc.collect()
    assert not gc.is_tracked(packed)  # kept probes cost a full garbage collection nothing


ARRIVED = (
    b"Received: from mx.test by imap.test with LMTP; Sun, 06 Dec 2026 10:00:02 +0000\r\n"
    b"Authentication-Results: mx.test; spf=pass; dkim=none; dmarc=fail\r\n"
    b"X-Rspamd-Score: 7.5\r\n"
    b"Received: from [127.0.0.1] by mail.test with ESMTPSA; Sun, 06 Dec 2026 10:00:00 +0000\r\n\r\n"
)


def test_transcript_keeps_head_and_tail_hides_echoed_passwords_and_our_letter_header() -> None:
    with recording("d", "t", hide=(Secret("s3cret-pw"), None)) as transcript:
        for n in range(HEAD_LINES + TAIL_LINES + 50):
            note(Leg.MAILBOX, False, f"line {n} echo s3cret-pw")
        note_letter(b"From: a@b\r\nSubject: [mail-roundtrip-exporter] test letter\r\n\r\nbody text\r\n")
    lines = transcript.lines
    assert len(lines) == HEAD_LINES + TAIL_LINES and transcript.cut == 50
    assert lines[0].text.startswith("line 0 ") and lines[-1].text.startswith(f"line {HEAD_LINES + TAIL_LINES + 49} ")
    text = transcript.text()
    assert "s3cret-pw" not in text and "********" in text and "50 lines not kept" in text
    assert transcript.letter == ("From: a@b", "Subject: [mail-roundtrip-exporter] test letter")
    assert "body text" not in text
    assert isinstance(Transcript("d", "t").lines, list)


def test_probe_now_gate_one_at_a_time_and_a_few_per_minute() -> None:
    now = [1000.0]
    gate = ProbeNowGate(per_minute=2, clock=lambda: now[0])
    key = ("d", "t")
    gate.claim(key)
    with pytest.raises(Refused) as running:
        gate.claim(key)
    assert running.value.status == 429
    gate.claim(("d", "other"))  # another task is not held up
    gate.release(key)
    gate.claim(key)
    gate.release(key)
    with pytest.raises(Refused) as busy:
        gate.claim(key)
    assert busy.value.status == 429 and busy.value.retry_after == 60
    now[0] += 61
    gate.claim(key)


async def test_probe_endpoint_refuses_what_it_cannot_or_may_not_run() -> None:
    exporter = exporter_with(2, devices=1)
    async with TestClient(TestServer(make_app(exporter))) as client:
        assert (await client.get("/probe")).status == 400
        assert (await client.get("/probe", params={"device": "dev0", "task": "nope"})).status == 404
        cross = await client.post("/task/dev0/t0-0/probe", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status == 403
        foreign = await client.get(
            "/probe", params={"device": "dev0", "task": "t0-0"}, headers={"Origin": "http://evil.example"}
        )
        assert foreign.status == 403
    assert all(runner.stats.probes == 0 and not runner.probes for runner in exporter.scheduler.runners.values())


async def test_probe_endpoint_answers_json_and_debug_text() -> None:
    """A task whose servers (on loopback) refuse at once: the probe fails fast with reason connect."""
    port = free_ports(1)[0]
    exporter = exporter_of(parse_config({"devices": [{"name": "dev0", "tasks": [unreachable_task(port, "t0-0")]}]}))
    async with TestClient(TestServer(make_app(exporter))) as client:
        response = await client.post("/probe", params={"device": "dev0", "task": "t0-0"})
        answer = json.loads(await response.text())
        debug = await (await client.get("/probe", params={"device": "dev0", "task": "t0-0", "debug": "true"})).text()
    assert response.status == 200 and answer["success"] is False and answer["reason"] == "connect"
    assert answer["device"] == "dev0" and "phases" in answer and "timeline" in answer
    assert debug.startswith("Transcript of the probe:") and "== dev0/t0-0: FAILED" in debug
    assert exporter.scheduler.runners[("dev0", "t0-0")].stats.probes == 2  # counted like every probe


async def test_route_prefix_and_external_url() -> None:
    exporter = exporter_with(2, devices=1)
    fill(exporter, 1)
    app = make_app(exporter, prefix=parse_prefix(None, "https://example.test/mail/"))
    async with TestClient(TestServer(app)) as client:
        page = await (await client.get("/mail/")).text()
        assert (await client.get("/")).status == 404
        redirect = await client.get("/mail", allow_redirects=False)
        assert redirect.status == 302 and redirect.headers["Location"] == "/mail/"
        assert (await client.get("/mail/static/console.css")).status == 200
        assert (await client.get("/mail/task/dev0/t0-0")).status == 200
        assert (await client.get("/mail/metrics")).status == 200
    links = re.findall(r'(?:href|src|action)="([^"]+)"', page)
    assert links and all(link.startswith("/mail/") for link in links), links
    # The proxy strips the prefix: routes at /, links with it.
    assert parse_prefix("/", "http://proxy.test/mail") == Prefix("", "/mail")
    assert parse_prefix("/x/", None) == Prefix("/x", "/x")


@pytest.mark.parametrize(
    "flags",
    [
        ["--history.limit", "0"],
        ["--history.limit", "many"],
        ["--web.external-url", "example.test/mail"],
        ["--web.route-prefix", "mail"],
        ["--web.route-prefix", "/a b"],
    ],
)
def test_bad_console_flags_are_usage_errors(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"devices": [{"name": "d", "tasks": [unreachable_task(free_ports(1)[0])]}]}))
    with pytest.raises(SystemExit) as exit_info:
        code = cli.main(["--config.file", str(config), "--signing.key-file", str(tmp_path / "key"), *flags])
        raise SystemExit(code)
    assert exit_info.value.code == cli.EXIT_USAGE
    assert capsys.readouterr().err.count("\n") >= 1


async def test_overview_at_a_thousand_tasks_reuses_unchanged_rows() -> None:
    """Speed is the benchmark's (scripts/console_benchmark.py); here: a row is made again only when its
    task changed."""
    exporter = exporter_with(1000)
    fill(exporter, 2)
    async with TestClient(TestServer(make_app(exporter))) as client:
        first = await (await client.get("/")).text()
        _failing(exporter, ("dev3", "t3-7"), error="changed")
        second = await (await client.get("/")).text()
    assert first.count("<tr ") == second.count("<tr ") == 1000
    assert "changed" in second and "changed" not in first


def test_a_finished_transcript_is_kept_compactly_with_every_line() -> None:
    with recording("d", "t") as transcript:
        for n in range(HEAD_LINES + TAIL_LINES + 5):
            note(Leg.SMTP if n % 2 else Leg.MAILBOX, n % 3 == 0, f"line {n}\twith  blanks")
        during = (list(transcript.lines), transcript.text(), transcript.parts())
    assert transcript.sealed is not None and not transcript.head and not transcript.tail
    assert (transcript.lines, transcript.text(), transcript.parts()) == during
    transcript.add(Leg.SMTP, False, "* BYE after the probe ended")  # a closing connection's last word
    assert transcript.lines == during[0]

"""Config and mail content are untrusted: property tests show only the documented errors come out."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.clients.imap4 import reply_of
from exporter.clients.pop3 import Pop3Client
from exporter.config.load import load_config, parse_config
from exporter.config.model import ConfigError
from exporter.legs.imap import fetch_responses, internaldate
from exporter.legs.pop3 import received_time
from exporter.letter.recognise import is_delivery_report, recognise
from exporter.probe.errors import ProbeError
from tests.tasks import SIGNER

KEYS = [
    "devices",
    "name",
    "interval",
    "tasks",
    "dns",
    "mode",
    "servers",
    "hosts",
    "address",
    "timeout",
    "destination",
    "sender",
    "smtp",
    "incoming",
    "host",
    "port",
    "security",
    "ssl",
    "user",
    "password",
    "password_env",
    "password_file",
    "protocol",
    "mailbox",
    "poll_interval",
    "completion_timeout",
    "email_timeout",
    "max_in_flight",
    "dns_mode",
    "ca_file",
    "insecure_skip_verify",
    "bogus",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "imap",
            "pop3",
            "tls",
            "starttls",
            "none",
            "10m",
            "90s",
            "0s",
            "127.0.0.1",
            "[::1]:25",
            "a@b.test",
            "on",
            "off",
            "-1",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(VALUES)
def test_config_loader_raises_only_config_errors(data: Any) -> None:
    try:
        parse_config(data, "fuzz.yml")
    except ConfigError as exc:
        assert str(exc).startswith("fuzz.yml: ") and "\n" not in str(exc)


YAML_PIECES = [
    b"&a [",
    b"*a",
    b"]",
    b"<<: ",
    b"{",
    b"}",
    b"- ",
    b"\n  ",
    b"\xe9",
    b"\x00",
    b"devices:",
    b"1" * 50,
    b"!!int",
]
FILE_CONTENT = (
    st.text(max_size=300).map(str.encode)
    | st.binary(max_size=300)
    | st.lists(st.sampled_from(YAML_PIECES), max_size=40).map(b"".join)
)


@FUZZ
@given(FILE_CONTENT)
def test_config_file_content_raises_only_config_errors(tmp_path_factory: Any, content: bytes) -> None:
    path: Path = tmp_path_factory.mktemp("fuzz") / "config.yml"
    path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)


def test_python_tags_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("devices: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_config(path)


class _Sink:
    """The write side of a fake connection: accepts everything."""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


async def _pop3_conversation(reply: bytes) -> None:
    reader = asyncio.StreamReader(limit=1024)
    reader.feed_data(reply)
    reader.feed_eof()
    client = Pop3Client(reader, _Sink())  # type: ignore[arg-type]
    await client.greeting()
    await client.multiline("UIDL", limit=4096, max_lines=100)
    await client.multiline("TOP", "1", "0", limit=4096, max_lines=100)
    await client.simple("DELE", "1")


@FUZZ
@given(
    st.binary(max_size=2000)
    | st.lists(
        st.sampled_from(
            [
                b"+OK hi\r\n",
                b"-ERR no\r\n",
                b".\r\n",
                b"..x\r\n",
                b"1 abc\r\n",
                b"+OK\n",
                b"\r\n",
                b"x" * 1500 + b"\r\n",
                b"\x00\xff\r\n",
                b"Subject: mrt-1\r\n",
            ]
        ),
        max_size=30,
    ).map(b"".join)
)
def test_pop3_replies_raise_only_probe_errors(reply: bytes) -> None:
    with contextlib.suppress(ProbeError):
        asyncio.run(_pop3_conversation(reply))


@FUZZ
@given(st.lists(st.binary(max_size=200) | st.builds(bytearray, st.binary(max_size=200)), max_size=8))
def test_imap_fetch_parser_never_raises(lines: list[bytes | bytearray]) -> None:
    for _, (line, headers) in fetch_responses(reply_of(True, lines)):
        internaldate(line)
        recognise(SIGNER, headers)


@FUZZ
@given(st.binary(max_size=3000))
def test_header_parsers_never_raise(raw: bytes) -> None:
    recognise(SIGNER, raw)
    recognise(SIGNER, b"Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" + raw)
    is_delivery_report(raw)
    received_time(raw)
    internaldate(b'1 FETCH (INTERNALDATE "' + raw[:60] + b'")')


@FUZZ
@given(st.text(max_size=500))
def test_signature_check_never_raises(text: str) -> None:
    assert SIGNER.exact(text) is None or SIGNER.exact(text).value == text.strip()  # type: ignore[union-attr]

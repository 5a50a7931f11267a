"""Log output in logfmt (the Prometheus ecosystem's default) or JSON, one line per record."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    fields.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
    if record.exc_info:
        fields["exc"] = logging.Formatter().formatException(record.exc_info)
    return fields


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _fields(record).items())


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_fields(record), default=str)


def _logfmt_value(value: Any) -> str:
    text = "" if value is None else str(value)
    # Bare only if plainly printable: anything else (CR, ESC, U+2028, U+202E ...) is quoted, and
    # json.dumps writes it as a \u escape, so no value can break the line or drive a terminal.
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text)


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aioimaplib logs every line it sends at debug, LOGIN included; it masks the raw password, but
    # not its quoted form when the password holds a quote or backslash. Its chatter never reaches our
    # output, whatever --log.level says.
    for noisy in ("aioimaplib", "aiosmtplib", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

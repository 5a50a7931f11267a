"""Reading one mapping of a YAML document field by field: the Node reader and its converters.

Used for the exporter's config and for --web.config.file. Every error names the file, the path to
the field (``devices[0].tasks[1].incoming.port``) and what is wrong, in one line; a value quoted in
an error is cut short (``shown``). Unknown keys are errors: a typo must not fall back to a default.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import reprlib
import socket
import ssl
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from exporter import files
from exporter.config.model import (
    MAX_ADDRESS,
    MAX_CERTIFICATE_FILE_BYTES,
    MAX_HELO_NAME,
    MAX_IN_FLIGHT_LIMIT,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_MAILBOX,
    MAX_PASSWORD,
    MAX_TEXT,
    MAX_USER,
    RESERVED_LABELS,
    ConfigError,
    Labels,
)

T = TypeVar("T")
E = TypeVar("E", bound=StrEnum)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+$")
_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\.?$")
FALLBACK_HELO_NAME = "mail-roundtrip-exporter.localhost"  # when the machine has no FQDN


class Node:
    """A mapping being read, remembering its path so errors can name the field."""

    def __init__(self, data: object, path: str, source: str) -> None:
        self.path = path
        self.source = source
        if not isinstance(data, Mapping):
            raise self.error(f"must be a mapping, got {kind_of(data)}")
        self.data: Mapping[str, object] = data
        self.used: set[str] = set()

    def error(self, message: str, key: str | None = None) -> ConfigError:
        where = self.child_path(key) if key is not None else self.path
        return ConfigError(f"{self.source}: {where or '<top level>'}: {message}")

    def child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, convert: Callable[[object], T], default: T) -> T:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return convert(self.data[key])
        except ValueError as exc:
            raise self.error(str(exc), key) from None

    def require(self, key: str, convert: Callable[[object], T]) -> T:
        if key not in self.data or self.data[key] is None:
            raise self.error("is required", key)
        value: T = self.get(key, convert, None)  # type: ignore[assignment]
        return value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def child(self, key: str) -> Node:
        self.used.add(key)
        return Node(self.data.get(key) or {}, self.child_path(key), self.source)

    def values(self, key: str) -> list[object]:
        """A list of plain values (each checked by the caller), empty when absent."""
        self.used.add(key)
        items = self.data.get(key) or []
        if not isinstance(items, list):
            raise self.error(f"must be a list, got {kind_of(items)}", key)
        return items

    def children(self, key: str) -> list[Node]:
        items = self.values(key)
        return [Node(item, f"{self.child_path(key)}[{i}]", self.source) for i, item in enumerate(items)]

    def finish(self) -> None:
        unknown = sorted(set(map(str, self.data)) - self.used)
        if unknown:
            raise self.error(f"unknown key {shown(unknown[0])}", None)


def kind_of(value: object) -> str:
    return {list: "a list", dict: "a mapping", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def as_string(value: object) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise ValueError(f"must be a string, got {kind_of(value)}")
    text = str(value)
    if any(c in text for c in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return _at_most(text, MAX_TEXT)


def _at_most(text: str, limit: int) -> str:
    if len(text) > limit:
        raise ValueError(f"must be at most {limit} characters, got {len(text)}")
    return text


def as_name(value: object) -> str:
    text = as_string(value)
    if not _NAME.match(text):
        raise ValueError(f"{shown(text)} is not a valid name (letters, digits, '_', '.', '-'; at most 63)")
    return text


def as_address(value: object) -> str:
    text = _at_most(as_string(value), MAX_ADDRESS)
    if not _ADDRESS.match(text):
        raise ValueError(f"{shown(text)} is not an e-mail address")
    return text


def as_user(value: object) -> str:
    text = _at_most(as_string(value), MAX_USER)
    if not text:
        raise ValueError("must not be empty")
    return text


def as_mailbox(value: object) -> str:
    """An IMAP folder name: sent inside a quoted string, where control characters have no place."""
    text = _at_most(as_string(value), MAX_MAILBOX)
    if not text.strip():
        raise ValueError("must not be empty")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise ValueError(f"{shown(text)} contains a control character")
    return text


def as_authserv_id(value: object) -> str:
    """An authserv-id (RFC 8601: usually the receiving host's name): printable ASCII without blanks."""
    text = _at_most(as_string(value), MAX_HELO_NAME)
    if not text or not all("!" <= c <= "~" for c in text):
        raise ValueError(f"{shown(text)} is not an authserv-id (printable ASCII without blanks)")
    return text


def list_of(convert: Callable[[object], T], limit: int) -> Callable[[object], tuple[T, ...]]:
    """A list of at most ``limit`` values, each converted; an empty list is allowed (it turns off)."""

    def converted(value: object) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise ValueError(f"must be a list, got {kind_of(value)}")
        if len(value) > limit:
            raise ValueError(f"at most {limit} entries, got {len(value)}")
        return tuple(convert(item) for item in value)

    return converted


def as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"on", "off", "yes", "no", "true", "false"}:
        return value.lower() in {"on", "yes", "true"}
    raise ValueError(f"must be true/false (or on/off), got {shown(value)}")


def as_in_flight(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IN_FLIGHT_LIMIT:
        raise ValueError(f"must be an integer 1..{MAX_IN_FLIGHT_LIMIT}, got {shown(value)}")
    return value


def integer(bounds: tuple[int, int]) -> Callable[[object], int]:
    """An integer within ``bounds`` (both included)."""
    low, high = bounds

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"must be an integer {low}..{high}, got {shown(value)}")
        return value

    return convert


def as_port(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a port number 1..65535, got {shown(value)}")
    return value


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict, _SHORT_REPR.maxstring = 2, 3, 3, 40


def shown(value: object) -> str:
    """A value quoted in an error, cut short without walking all of it: an alias bomb written as a
    duration must not be rendered in full (billions of items), and a line stays a line."""
    return _SHORT_REPR.repr(value)


def parse_duration(value: object, bare_unit: str = "s") -> float:
    """``90s``, ``10m``, ``1h30m``, ``500ms``; a bare number counts in ``bare_unit``. Always finite
    and above zero: NaN compares false with every bound, so it is refused here, by name."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like '90s' or '10m', got {shown(value)}")
    try:
        if isinstance(value, int | float):
            seconds = float(value) * _UNIT_SECONDS[bare_unit]
        elif isinstance(value, str) and value and _DURATION_PART.sub("", value.strip()) == "":
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
        else:
            raise ValueError(f"must be a duration like '90s' or '10m', got {shown(value)}")
    except OverflowError:  # an integer too large for a float
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"must be a finite duration, got {shown(value)}")
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {shown(value)}")
    return seconds


def duration(bare_unit: str, bounds: tuple[float, float]) -> Callable[[object], float]:
    shortest, longest = bounds

    def convert(value: object) -> float:
        seconds = parse_duration(value, bare_unit)
        if seconds < shortest:
            raise ValueError(f"must be at least {_seconds(shortest)}, got {shown(value)}")
        if seconds > longest:
            raise ValueError(f"must be at most {_seconds(longest)}, got {shown(value)}")
        return seconds

    return convert


def _seconds(seconds: float) -> str:
    """A bound as written in the README: 100ms, 1s, 10m, 1h, 24h."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def as_host(value: object) -> str:
    text = as_string(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOST.match(text):
        raise ValueError(f"{shown(text)} is not a host name or IP address")
    return text


def as_helo_name(value: object) -> str:
    """An EHLO name (RFC 5321 4.1.1.1): a fully qualified domain name, or an address literal."""
    text = as_string(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            ipaddress.ip_address(text[1:-1].removeprefix("IPv6:"))
        except ValueError:
            raise ValueError(f"{shown(text)} is not an address literal") from None
        return text
    if len(text) > MAX_HELO_NAME or not _HOST.match(text) or "." not in text.strip(".") or text.endswith("."):
        raise ValueError(f"{shown(text)} is not a fully qualified domain name (or an [address] literal)")
    return text


@functools.cache
def default_helo_name() -> str:
    """The machine's FQDN, if it is one (looked up once: it may ask DNS); else a name that still is."""
    try:
        return as_helo_name(socket.getfqdn())
    except ValueError:
        return FALLBACK_HELO_NAME


def split_host_port(text: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{shown(text)} is not host[:port] or [IPv6]:port")
        return host, _port_text(rest[1:]) if rest else None
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, _port_text(port)
    return text, None


def join_host_port(host: str, port: int) -> str:
    """The inverse of split_host_port: ``host:port``, ``[v6]:port``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_text(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"port {shown(text)} is not a number")
    return as_port(int(text))


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,62}$")


def as_labels(value: object) -> Labels:
    """``labels:``: a few Prometheus label names of yours, none of the exporter's, with short values."""
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a mapping of label names to values, got {kind_of(value)}")
    if len(value) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels, got {len(value)}")
    labels = []
    for name, text in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"label name {shown(name)} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)")
        if name in RESERVED_LABELS:
            raise ValueError(f"label name {name!r} is the exporter's own")
        label = as_string(text)
        if not label or not label.isprintable() or len(label) > MAX_LABEL_VALUE:
            raise ValueError(f"label {name}: the value must be 1..{MAX_LABEL_VALUE} printable characters")
        labels.append((name, label))
    return tuple(labels)


def as_password(value: object) -> str:
    """Checked without ever quoting it."""
    return _at_most(as_string(value), MAX_PASSWORD)


def choice(choices: Mapping[str, T], fold_case: bool = False) -> Callable[[object], T]:
    """A converter for one of the names in ``choices`` (to its value)."""

    def convert(value: object) -> T:
        text = as_string(value)
        found = choices.get(text.lower() if fold_case else text)
        if found is None:
            raise ValueError(f"must be one of {'|'.join(choices)}, got {shown(value)}")
        return found

    return convert


def enum_choice(kind: type[E]) -> Callable[[object], E]:
    """A member of ``kind`` by its value, in any case."""
    return choice({member.value: member for member in kind}, fold_case=True)


def existing_file(base_dir: Path) -> Callable[[object], str]:
    """A converter for a path that OpenSSL will read: a regular file of at most 1 MiB (never a device
    or FIFO, which would block or never end); relative paths are relative to ``base_dir``."""

    def convert(value: object) -> str:
        path = base_dir / as_string(value)
        if not path.exists():
            raise ValueError(f"file {str(path)!r} does not exist")
        try:
            files.check_regular(path, MAX_CERTIFICATE_FILE_BYTES)
        except files.FileError as exc:
            raise ValueError(f"file {str(path)!r} {exc}") from None
        return str(path)

    return convert


def certificate_file(base_dir: Path) -> Callable[[object], str]:
    """A CA bundle, loaded once here exactly as each TLS connection will load it, so that a file that
    holds no certificate is refused at load rather than failing every probe as ``tls``."""
    readable = existing_file(base_dir)

    def convert(value: object) -> str:
        path = readable(value)
        try:
            ssl.create_default_context(cafile=path)
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"file {path!r} is not a PEM certificate bundle: {ssl_reason(exc)}") from None
        return path

    return convert


def ssl_reason(exc: ssl.SSLError | OSError) -> str:
    """OpenSSL's reason in words (``no certificate or crl found``), without its error stack."""
    return str(getattr(exc, "reason", None) or exc.strerror or exc).lower().replace("_", " ")

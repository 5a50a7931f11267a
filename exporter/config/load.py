"""Configuration: YAML devices holding tasks, validated into frozen dataclasses.

Every error names the file, the path to the field (``devices[0].tasks[1].incoming.port``) and what is
wrong, in one line. Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import reprlib
import ssl
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from exporter import files

T = TypeVar("T")

DEFAULT_INTERVAL = 300.0
DEFAULT_COMPLETION_TIMEOUT = 120.0
DEFAULT_EMAIL_TIMEOUT = 600.0
DEFAULT_POLL_INTERVAL = 5.0
DEFAULT_MAX_IN_FLIGHT = 3

# Bounds (README: Configuration, Bounds). Durations in seconds, (shortest, longest).
INTERVAL_BOUNDS = (1.0, 86400.0)
COMPLETION_TIMEOUT_BOUNDS = (0.1, 3600.0)
MAX_EMAIL_TIMEOUT = 3600.0
EMAIL_TIMEOUT_BOUNDS = (1.0, MAX_EMAIL_TIMEOUT)
POLL_INTERVAL_BOUNDS = (0.1, 3600.0)
DNS_TIMEOUT_BOUNDS = (0.01, 600.0)
MAX_IN_FLIGHT_LIMIT = 100
MAX_TEXT = 4096  # characters in any string setting (paths, header values, ...)
MAX_USER = 255
MAX_PASSWORD = 1024
MAX_ADDRESS = 254  # RFC 5321: a path is at most 256 octets with its angle brackets
MAX_MAILBOX = 255
# Files: every read is capped (exporter.files); the YAML of a config is bounded after parsing too.
MAX_CONFIG_BYTES = 2 * files.MIB
MAX_PASSWORD_FILE_BYTES = 4 * files.KIB
MAX_CERTIFICATE_FILE_BYTES = files.MIB  # a CA bundle (Debian's is ~220 KB), certificate or key
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 200_000  # counted with every alias expanded: ~8,000 tasks; an alias bomb stops here


class ConfigError(Exception):
    """A configuration problem, already formatted as ``file: path: what is wrong``."""


class Security(StrEnum):
    TLS = "tls"  # implicit TLS from the first byte (465, 993, 995)
    STARTTLS = "starttls"  # plain connect, then upgrade; refusing to go on without TLS
    NONE = "none"  # clear text


class Protocol(StrEnum):
    IMAP = "imap"
    POP3 = "pop3"


class DNSMode(StrEnum):
    DEVICE_CACHED = "device_cached"
    NON_CACHED = "non_cached"
    TTL_CACHED = "ttl_cached"
    EXTERNAL = "external"
    SYSTEM = "system"


class Secret:
    """A password that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class TLSOptions:
    ca_file: str | None = None
    # Loudly named on purpose: turning verification off must be visible in every config review.
    insecure_skip_verify: bool = False


@dataclass(frozen=True)
class ServerConfig:
    """One leg's server: where to connect, how to secure it, and who to log in as."""

    host: str
    port: int
    security: Security
    tls: TLSOptions
    user: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class IncomingConfig(ServerConfig):
    protocol: Protocol = Protocol.IMAP
    mailbox: str = "INBOX"
    poll_interval: float = DEFAULT_POLL_INTERVAL


@dataclass(frozen=True)
class DNSHost:
    address: str
    name: str


@dataclass(frozen=True)
class DNSConfig:
    mode: DNSMode = DNSMode.DEVICE_CACHED
    servers: tuple[tuple[str, int], ...] = ()
    hosts: tuple[DNSHost, ...] = ()
    timeout: float | None = None  # per query; bounded by the completion timeout anyway


@dataclass(frozen=True)
class TaskConfig:
    name: str
    destination: str
    sender: str
    smtp: ServerConfig
    incoming: IncomingConfig
    completion_timeout: float = DEFAULT_COMPLETION_TIMEOUT
    email_timeout: float = DEFAULT_EMAIL_TIMEOUT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    dns_mode: DNSMode | None = None  # overrides the device's mode


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    interval: float
    dns: DNSConfig
    tasks: tuple[TaskConfig, ...]


@dataclass(frozen=True)
class Config:
    devices: tuple[DeviceConfig, ...]
    source: str = "<config>"

    def tasks(self) -> list[tuple[DeviceConfig, TaskConfig]]:
        return [(device, task) for device in self.devices for task in device.tasks]

    def unverified_legs(self) -> list[str]:
        """``device/task/leg`` of every leg whose certificate verification is turned off."""
        return [
            f"{device.name}/{task.name}/{leg}"
            for device, task in self.tasks()
            for leg, server in (("smtp", task.smtp), ("incoming", task.incoming))
            if server.tls.insecure_skip_verify
        ]


# --- parsing helpers ---------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+$")
_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?\.?$")


class Node:
    """A mapping being read, remembering its path so errors can name the field."""

    def __init__(self, data: Any, path: str, source: str) -> None:
        self.path = path
        self.source = source
        if not isinstance(data, Mapping):
            raise self.error(f"must be a mapping, got {kind_of(data)}")
        self.data: Mapping[str, Any] = data
        self.used: set[str] = set()

    def error(self, message: str, key: str | None = None) -> ConfigError:
        where = self.child_path(key) if key is not None else self.path
        return ConfigError(f"{self.source}: {where or '<top level>'}: {message}")

    def child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        try:
            return convert(self.data[key])
        except ValueError as exc:
            raise self.error(str(exc), key) from None

    def require(self, key: str, convert: Callable[[Any], T]) -> T:
        if key not in self.data or self.data[key] is None:
            raise self.error("is required", key)
        value: T = self.get(key, convert, None)  # type: ignore[assignment]
        return value

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def child(self, key: str) -> Node:
        self.used.add(key)
        return Node(self.data.get(key) or {}, self.child_path(key), self.source)

    def values(self, key: str) -> list[Any]:
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


def kind_of(value: Any) -> str:
    return {list: "a list", dict: "a mapping", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def as_string(value: Any) -> str:
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


def _name(value: Any) -> str:
    text = as_string(value)
    if not _NAME.match(text):
        raise ValueError(f"{shown(text)} is not a valid name (letters, digits, '_', '.', '-'; at most 63)")
    return text


def _address(value: Any) -> str:
    text = _at_most(as_string(value), MAX_ADDRESS)
    if not _ADDRESS.match(text):
        raise ValueError(f"{shown(text)} is not an e-mail address")
    return text


def _user(value: Any) -> str:
    text = _at_most(as_string(value), MAX_USER)
    if not text:
        raise ValueError("must not be empty")
    return text


def _mailbox(value: Any) -> str:
    """An IMAP folder name: sent inside a quoted string, where control characters have no place."""
    text = _at_most(as_string(value), MAX_MAILBOX)
    if not text.strip():
        raise ValueError("must not be empty")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise ValueError(f"{shown(text)} contains a control character")
    return text


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"on", "off", "yes", "no", "true", "false"}:
        return value.lower() in {"on", "yes", "true"}
    raise ValueError(f"must be true/false (or on/off), got {shown(value)}")


def _in_flight(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IN_FLIGHT_LIMIT:
        raise ValueError(f"must be an integer 1..{MAX_IN_FLIGHT_LIMIT}, got {shown(value)}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"must be a port number 1..65535, got {shown(value)}")
    return value


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxdict, _SHORT_REPR.maxstring = 2, 3, 3, 40


def shown(value: Any) -> str:
    """A value quoted in an error, cut short without walking all of it: an alias bomb written as a
    duration must not be rendered in full (billions of items), and a line stays a line."""
    return _SHORT_REPR.repr(value)


def parse_duration(value: Any, bare_unit: str = "s") -> float:
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


def _duration(bare_unit: str, bounds: tuple[float, float]) -> Callable[[Any], float]:
    shortest, longest = bounds

    def convert(value: Any) -> float:
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


def _host(value: Any) -> str:
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


def _port_text(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"port {shown(text)} is not a number")
    return _port(int(text))


# --- secrets -----------------------------------------------------------------------------------


def _read_secret(node: Node, base_dir: Path) -> Secret | None:
    keys = ("password", "password_env", "password_file")
    node.used.update(keys)  # one of them written as null is no source, and no unknown key either
    sources = [key for key in keys if node.has(key)]
    if len(sources) > 1:
        raise node.error(f"give only one of password, password_env, password_file (got {', '.join(sources)})")
    if not sources:
        return None
    key = sources[0]
    if key == "password":
        return Secret(node.get(key, _password, ""))
    text = node.get(key, as_string, "")
    if key == "password_env":
        if text not in os.environ:
            raise node.error(f"environment variable {shown(text)} is not set", key)
        password = os.environ[text]
    else:
        path = base_dir / text
        try:
            password = files.read_text(path, MAX_PASSWORD_FILE_BYTES).rstrip("\r\n")
        except files.FileError as exc:
            raise node.error(f"cannot read {str(path)!r}: {exc}", key) from None
    try:  # the same rules as a password written in the config: it goes into protocol lines
        return Secret(_password(password))
    except ValueError as exc:
        raise node.error(f"the password {exc}", key) from None


def _password(value: Any) -> str:
    """Checked without ever quoting it."""
    return _at_most(as_string(value), MAX_PASSWORD)


# --- legs --------------------------------------------------------------------------------------

_WELL_KNOWN = {
    # leg: (implicit TLS port, STARTTLS/plain port)
    "smtp": (465, 587),
    "imap": (993, 143),
    "pop3": (995, 110),
}
_IMPLICIT_PORTS = {465, 993, 995}


def _security(node: Node, kind: str, port: int | None) -> Security:
    """Explicit ``security``, else the product's ``ssl`` on/off, else derived from the port."""
    if node.has("security") and node.has("ssl"):
        raise node.error("give either security or ssl, not both")
    if node.has("security"):
        return node.get("security", _enum(Security), Security.STARTTLS)
    if node.has("ssl"):
        if not node.get("ssl", as_bool, True):
            return Security.NONE
        return Security.STARTTLS if port is not None and port not in _IMPLICIT_PORTS else Security.TLS
    if port is None:
        return Security.TLS if kind != "smtp" else Security.STARTTLS
    return Security.TLS if port in _IMPLICIT_PORTS else Security.STARTTLS


def _enum(kind: type[StrEnum]) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        try:
            return kind(as_string(value).lower())
        except ValueError:
            choices = "|".join(member.value for member in kind)
            raise ValueError(f"must be one of {choices}, got {shown(value)}") from None

    return convert


def _server_fields(node: Node, kind: str, base_dir: Path) -> dict[str, Any]:
    host_text = node.require("host", as_string)
    try:
        host, port_in_host = split_host_port(host_text)
        host = _host(host)
    except ValueError as exc:
        raise node.error(str(exc), "host") from None
    port = node.get("port", _port, port_in_host)
    if port_in_host is not None and node.has("port") and port != port_in_host:
        raise node.error(f"port {port} contradicts the port in host {shown(host_text)}", "port")
    security = _security(node, kind, port)
    implicit, other = _WELL_KNOWN[kind]
    if port is None:
        port = implicit if security is Security.TLS else other
        if kind == "smtp" and security is Security.NONE:
            port = 25
    tls = TLSOptions(
        ca_file=node.get("ca_file", certificate_file(base_dir), None),
        insecure_skip_verify=node.get("insecure_skip_verify", as_bool, False),
    )
    user = node.get("user", _user, None)
    password = _read_secret(node, base_dir)
    if password is not None and user is None:
        raise node.error("a password is given but no user", "user")
    return {"host": host, "port": port, "security": security, "tls": tls, "user": user, "password": password}


def existing_file(base_dir: Path) -> Callable[[Any], str]:
    """A converter for a path that OpenSSL will read: a regular file of at most 1 MiB (never a device
    or FIFO, which would block or never end); relative paths are relative to ``base_dir``."""

    def convert(value: Any) -> str:
        path = base_dir / as_string(value)
        if not path.exists():
            raise ValueError(f"file {str(path)!r} does not exist")
        try:
            files.check_regular(path, MAX_CERTIFICATE_FILE_BYTES)
        except files.FileError as exc:
            raise ValueError(f"file {str(path)!r} {exc}") from None
        return str(path)

    return convert


def certificate_file(base_dir: Path) -> Callable[[Any], str]:
    """A CA bundle, loaded once here exactly as each TLS connection will load it, so that a file that
    holds no certificate is refused at load rather than failing every probe as ``tls``."""
    readable = existing_file(base_dir)

    def convert(value: Any) -> str:
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


def _smtp(node: Node, base_dir: Path) -> ServerConfig:
    server = ServerConfig(**_server_fields(node, "smtp", base_dir))
    node.finish()
    return server


def _incoming(node: Node, base_dir: Path) -> IncomingConfig:
    protocol = node.require("protocol", _enum(Protocol))
    fields = _server_fields(node, protocol.value, base_dir)
    if fields["user"] is None or fields["password"] is None:
        raise node.error("user and a password (password, password_env or password_file) are required")
    mailbox = node.get("mailbox", _mailbox, "INBOX")
    if protocol is Protocol.POP3 and mailbox != "INBOX":
        raise node.error("POP3 has only the INBOX; remove mailbox", "mailbox")
    incoming = IncomingConfig(
        **fields,
        protocol=protocol,
        mailbox=mailbox,
        poll_interval=node.get("poll_interval", _duration("s", POLL_INTERVAL_BOUNDS), DEFAULT_POLL_INTERVAL),
    )
    node.finish()
    return incoming


# --- DNS (resolution itself lives in exporter.dns) ----------------------------------------------


def _dns_server(value: Any) -> tuple[str, int]:
    host, port = split_host_port(as_string(value))
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"DNS server {shown(value)} must be an IP address[:port]") from None
    return address, port or 53


def _dns(node: Node) -> DNSConfig:
    hosts = []
    for entry in node.children("hosts"):
        address = entry.require("address", as_string)
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise entry.error(f"{shown(address)} is not an IP address", "address") from None
        hosts.append(DNSHost(address=address, name=entry.require("name", _host).rstrip(".").lower()))
        entry.finish()
    servers = []
    for i, raw in enumerate(node.values("servers")):
        try:
            servers.append(_dns_server(raw))
        except ValueError as exc:
            raise node.error(str(exc), f"servers[{i}]") from None
    mode = node.get("mode", _enum(DNSMode), DNSMode.DEVICE_CACHED)
    if mode is DNSMode.EXTERNAL and not servers:
        raise node.error("mode external needs at least one entry in servers", "servers")
    dns = DNSConfig(
        mode=mode,
        servers=tuple(servers),
        hosts=tuple(hosts),
        timeout=node.get("timeout", _duration("s", DNS_TIMEOUT_BOUNDS), None),
    )
    node.finish()
    return dns


# --- tasks and devices -------------------------------------------------------------------------


def _task(node: Node, base_dir: Path) -> TaskConfig:
    name = node.require("name", _name)
    destination = node.require("destination", _address)
    smtp = _smtp(node.child("smtp"), base_dir) if node.has("smtp") else None
    incoming = _incoming(node.child("incoming"), base_dir) if node.has("incoming") else None
    if smtp is None:
        raise node.error("is required", "smtp")
    if incoming is None:
        raise node.error("is required", "incoming")
    default_sender = smtp.user if smtp.user and "@" in smtp.user else destination
    task = TaskConfig(
        name=name,
        destination=destination,
        sender=node.get("sender", _address, default_sender),
        smtp=smtp,
        incoming=incoming,
        completion_timeout=node.get(
            "completion_timeout", _duration("s", COMPLETION_TIMEOUT_BOUNDS), DEFAULT_COMPLETION_TIMEOUT
        ),
        email_timeout=node.get("email_timeout", _duration("m", EMAIL_TIMEOUT_BOUNDS), DEFAULT_EMAIL_TIMEOUT),
        max_in_flight=node.get("max_in_flight", _in_flight, DEFAULT_MAX_IN_FLIGHT),
        dns_mode=node.get("dns_mode", _enum(DNSMode), None),
    )
    node.finish()
    return task


def _device(node: Node, base_dir: Path) -> DeviceConfig:
    name = node.require("name", _name)
    tasks_nodes = node.children("tasks")
    if not tasks_nodes:
        raise node.error("needs at least one task", "tasks")
    tasks = tuple(_task(t, base_dir) for t in tasks_nodes)
    _unique([t.name for t in tasks], tasks_nodes, "task")
    device = DeviceConfig(
        name=name,
        interval=node.get("interval", _duration("s", INTERVAL_BOUNDS), DEFAULT_INTERVAL),
        dns=_dns(node.child("dns")),
        tasks=tasks,
    )
    node.finish()
    return device


def _unique(names: list[str], nodes: list[Node], what: str) -> None:
    seen: set[str] = set()
    for name, node in zip(names, nodes, strict=True):
        if name in seen:
            raise node.error(f"duplicate {what} name {name!r}", "name")
        seen.add(name)


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> Config:
    base = base_dir or Path.cwd()
    root = Node(data if data is not None else {}, "", source)
    devices_nodes = root.children("devices")
    if not devices_nodes:
        raise root.error("needs at least one device", "devices")
    devices = tuple(_device(d, base) for d in devices_nodes)
    _unique([d.name for d in devices], devices_nodes, "device")
    root.finish()
    return Config(devices=devices, source=source)


# libyaml where installed: it parses ~6x faster than pure Python and limits nesting itself (1,000).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _YAMLShapeError(yaml.YAMLError):
    def __init__(self, problem: str, mark: yaml.Mark | None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


def read_yaml(path: Path) -> Any:
    """The parsed file, or a ConfigError saying where and what, without quoting the file's text:
    PyYAML quotes undefined aliases and unknown tags, which may be a password written unquoted."""
    try:
        text = files.read_text(path, MAX_CONFIG_BYTES)
    except files.FileError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_yaml_shape(node)  # before building any object: aliases are shared until then
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: {_yaml_problem(exc, text)}") from None
    except RecursionError:  # the pure-Python composer recurses per level; libyaml stops at 1,000 itself
        raise ConfigError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels") from None
    except Exception:  # PyYAML's constructors: int() of 5,000 digits, 2024-13-45, an empty !!int (IndexError)
        raise ConfigError(f"{path}: a number, date or tagged value cannot be converted") from None
    finally:
        loader.dispose()


def _yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    if isinstance(exc, yaml.reader.ReaderError):  # a control character; its message would quote it
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return f"line {line}, column {column}: a control character is not allowed in YAML"
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = re.sub(r"'[^']*'", "'...'", getattr(exc, "problem", None) or "invalid YAML")
    return f"{where}{problem}"


def check_yaml_shape(root: yaml.Node) -> None:
    """Refuses a document nested too deeply, larger than MAX_YAML_NODES with every alias expanded (an
    alias bomb: 90 KB of anchors that would expand to billions of nodes), or holding an alias inside
    the node it names. Each node is visited once (sizes are memoised), so this costs one pass."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, once all of it was seen
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    open_nodes: set[int] = set()
    while stack:
        node, depth = stack.pop()
        if id(node) in sizes:
            continue
        children = _yaml_children(node)
        if id(node) in open_nodes:  # all children done: total them
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise _YAMLShapeError(f"more than {MAX_YAML_NODES} values once aliases are expanded", node.start_mark)
            continue
        if depth > MAX_YAML_DEPTH:
            raise _YAMLShapeError(f"nested deeper than {MAX_YAML_DEPTH} levels", node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, depth))
        for child in children:
            if id(child) in open_nodes:
                raise _YAMLShapeError("an alias refers to a node that contains it", node.start_mark)
            stack.append((child, depth + 1))


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def load_config(path: str | Path) -> Config:
    path = Path(path)
    return parse_config(read_yaml(path), str(path), path.parent)


def describe_failure(path: Path, exc: Exception) -> str:
    """One line for any failure to load a config. A ConfigError is already that line; anything else is
    a bug, named by its type and place only: its message may quote the file, passwords included."""
    if isinstance(exc, ConfigError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{path}: unexpected {type(exc).__name__}{where}, a bug (details withheld: they may quote the file)"

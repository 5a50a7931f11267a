"""Loading a config file: YAML devices holding tasks, validated into the frozen model (config.model).

Every error is one line naming the file, the path to the field and what is wrong (config.fields).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import traceback
from pathlib import Path

from exporter.config.fields import (
    Node,
    as_address,
    as_authserv_id,
    as_bool,
    as_helo_name,
    as_host,
    as_in_flight,
    as_labels,
    as_mailbox,
    as_name,
    as_password,
    as_port,
    as_string,
    as_user,
    certificate_file,
    default_helo_name,
    duration,
    enum_choice,
    integer,
    list_of,
    shown,
    split_host_port,
)
from exporter.config.model import (
    COMPLETION_TIMEOUT_BOUNDS,
    DEFAULT_COMPLETION_TIMEOUT,
    DEFAULT_EMAIL_TIMEOUT,
    DEFAULT_FRESH_LOGIN_EVERY,
    DEFAULT_INTERVAL,
    DEFAULT_JUNK_FOLDERS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_POLL_INTERVAL,
    DNS_TIMEOUT_BOUNDS,
    EMAIL_TIMEOUT_BOUNDS,
    FRESH_LOGIN_EVERY_BOUNDS,
    INTERVAL_BOUNDS,
    MAX_INCLUDED_FILES,
    MAX_NAMES,
    MAX_PASSWORD_FILE_BYTES,
    MAX_TASKS,
    POLL_INTERVAL_BOUNDS,
    Cleanup,
    Config,
    ConfigError,
    DeviceConfig,
    DNSConfig,
    DNSHost,
    DNSMode,
    IncomingConfig,
    Protocol,
    Security,
    ServerConfig,
    SMTPConfig,
    SpamTest,
    TaskConfig,
    TLSOptions,
)
from exporter.config.oauth2 import mechanism, parse_oauth2
from exporter.config.secrets import Reading, SecretKind, read_secret
from exporter.config.yamlfile import read_yaml

PASSWORD = SecretKind("password", as_password, MAX_PASSWORD_FILE_BYTES)


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
        return node.get("security", enum_choice(Security), Security.STARTTLS)
    if node.has("ssl"):
        if not node.get("ssl", as_bool, True):
            return Security.NONE
        return Security.STARTTLS if port is not None and port not in _IMPLICIT_PORTS else Security.TLS
    if port is None:
        return Security.TLS if kind != "smtp" else Security.STARTTLS
    return Security.TLS if port in _IMPLICIT_PORTS else Security.STARTTLS


def _server(node: Node, kind: str, reading: Reading) -> ServerConfig:
    host_text = node.require("host", as_string)
    try:
        host, port_in_host = split_host_port(host_text)
        host = as_host(host)
    except ValueError as exc:
        raise node.error(str(exc), "host") from None
    port = node.get("port", as_port, port_in_host)
    if port_in_host is not None and node.has("port") and port != port_in_host:
        raise node.error(f"port {port} contradicts the port in host {shown(host_text)}", "port")
    security = _security(node, kind, port)
    if security is Security.MAY:
        raise node.error("may (STARTTLS when offered) is for mx: true only", "security")
    implicit, other = _WELL_KNOWN[kind]
    if port is None:
        port = implicit if security is Security.TLS else other
        if kind == "smtp" and security is Security.NONE:
            port = 25
    tls = _tls(node, reading)
    user = node.get("user", as_user, None)
    password = read_secret(node, reading, PASSWORD)
    if password is not None and user is None:
        raise node.error("a password is given but no user", "user")
    oauth2 = parse_oauth2(node.child("oauth2"), reading) if node.has("oauth2") else None
    node.used.add("oauth2")
    if oauth2 is not None and (user is None or password is not None):
        raise node.error("oauth2 logs in as user with a token: give user, and no password", "oauth2")
    return ServerConfig(
        host=host,
        port=port,
        security=security,
        tls=tls,
        user=user,
        password=password,
        oauth2=oauth2,
        mechanism=mechanism(node, oauth2 is not None),
    )


def _tls(node: Node, reading: Reading) -> TLSOptions:
    return TLSOptions(
        ca_file=node.get("ca_file", certificate_file(reading.base_dir), None),
        insecure_skip_verify=node.get("insecure_skip_verify", as_bool, False),
    )


def _smtp(node: Node, destination: str, reading: Reading) -> SMTPConfig:
    helo_name = node.get("helo_name", as_helo_name, None) or default_helo_name()
    if node.get("mx", as_bool, False):
        smtp = _mx(node, destination, reading, helo_name)
    else:
        server = _server(node, "smtp", reading)
        persistent, every = _keeping(node)
        smtp = SMTPConfig(
            **{f.name: getattr(server, f.name) for f in dataclasses.fields(server)},
            helo_name=helo_name,
            persistent=persistent,
            fresh_login_every=every,
        )
    node.finish()
    return smtp


_NOT_WITH_MX = ("host", "ssl", "user", "oauth2", "auth", *PASSWORD.sources)


def _keeping(node: Node) -> tuple[bool, int]:
    """``persistent`` and ``fresh_login_every`` (legs.keep), alike for both legs."""
    persistent = node.get("persistent", as_bool, False)
    if node.has("fresh_login_every") and not persistent:
        raise node.error("fresh_login_every needs persistent: true", "fresh_login_every")
    return persistent, node.get("fresh_login_every", integer(FRESH_LOGIN_EVERY_BOUNDS), DEFAULT_FRESH_LOGIN_EVERY)


def _mx(node: Node, destination: str, reading: Reading, helo_name: str) -> SMTPConfig:
    """``mx: true``: deliver as another domain's server would, to the destination domain's MX hosts
    (RFC 5321 5.1), on port 25, with STARTTLS when offered (``may``) and no AUTH."""
    if node.has("persistent") or node.has("fresh_login_every"):
        key = "persistent" if node.has("persistent") else "fresh_login_every"
        raise node.error("mx: true connects to the MX hosts anew for every letter, as a server would: remove it", key)
    for key in _NOT_WITH_MX:
        if node.has(key):
            raise node.error(f"mx: true sends to the destination domain's MX hosts, without AUTH: remove {key}", key)
    node.used.update(_NOT_WITH_MX)  # written as null, they are absent
    domain = destination.rpartition("@")[2]
    try:
        domain = as_host(domain)
    except ValueError:
        raise node.error(f"mx: true needs a domain name after the @ of destination, got {shown(domain)}") from None
    security = node.get("security", enum_choice(Security), Security.MAY)
    if security is Security.TLS:
        raise node.error("MX hosts take STARTTLS on port 25, not implicit TLS: use may, starttls or none", "security")
    port = node.get("port", as_port, 25)  # another port only for tests and odd setups
    return SMTPConfig(host=domain, port=port, security=security, tls=_tls(node, reading), mx=True, helo_name=helo_name)


def _incoming(node: Node, reading: Reading) -> IncomingConfig:
    protocol = node.require("protocol", enum_choice(Protocol))
    server = _server(node, protocol.value, reading)
    if server.user is None or (server.password is None and server.oauth2 is None):
        raise node.error("user and a password (password, password_env or password_file) or oauth2 are required")
    mailbox = node.get("mailbox", as_mailbox, "INBOX")
    persistent, every = _keeping(node)
    if protocol is Protocol.POP3 and mailbox != "INBOX":
        raise node.error("POP3 has only the INBOX; remove mailbox", "mailbox")
    incoming = IncomingConfig(
        server=server,
        protocol=protocol,
        mailbox=mailbox,
        poll_interval=node.get("poll_interval", duration("s", POLL_INTERVAL_BOUNDS), DEFAULT_POLL_INTERVAL),
        cleanup=node.get("cleanup", enum_choice(Cleanup), None),
        junk_folders=node.get("junk_folders", list_of(as_mailbox, MAX_NAMES), DEFAULT_JUNK_FOLDERS),
        junk_is_failure=node.get("junk_is_failure", as_bool, True),
        authserv_ids=node.get("authserv_ids", list_of(as_authserv_id, MAX_NAMES), ()),
        persistent=persistent,
        fresh_login_every=every,
    )
    if protocol is Protocol.POP3 and node.has("junk_folders") and incoming.junk_folders:
        raise node.error("POP3 sees only the INBOX, no junk folder; remove junk_folders", "junk_folders")
    if protocol is Protocol.POP3 and incoming.cleanup is Cleanup.TRASH:
        raise node.error("POP3 has no folders to move a letter to; remove cleanup", "cleanup")
    if protocol is Protocol.POP3 and incoming.persistent:
        raise node.error("POP3 cannot keep a session (it sees only mail there at login); remove it", "persistent")
    node.finish()
    return incoming


# --- DNS (resolution itself lives in net.resolve) ---------------------------------------------


def _dns_server(value: object) -> tuple[str, int]:
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
        hosts.append(DNSHost(address=address, name=entry.require("name", as_host).rstrip(".").lower()))
        entry.finish()
    servers = []
    for i, raw in enumerate(node.values("servers")):
        try:
            servers.append(_dns_server(raw))
        except ValueError as exc:
            raise node.error(str(exc), f"servers[{i}]") from None
    mode = node.get("mode", enum_choice(DNSMode), DNSMode.DEVICE_CACHED)
    if mode is DNSMode.EXTERNAL and not servers:
        raise node.error("mode external needs at least one entry in servers", "servers")
    dns = DNSConfig(
        mode=mode,
        servers=tuple(servers),
        hosts=tuple(hosts),
        timeout=node.get("timeout", duration("s", DNS_TIMEOUT_BOUNDS), None),
    )
    node.finish()
    return dns


# --- tasks and devices -------------------------------------------------------------------------


def _task(node: Node, reading: Reading) -> TaskConfig:
    name = node.require("name", as_name)
    destination = node.require("destination", as_address)
    smtp = _smtp(node.child("smtp"), destination, reading) if node.has("smtp") else None
    incoming = _incoming(node.child("incoming"), reading) if node.has("incoming") else None
    if smtp is None:
        raise node.error("is required", "smtp")
    if incoming is None:
        raise node.error("is required", "incoming")
    default_sender = smtp.user if smtp.user and "@" in smtp.user else destination
    task = TaskConfig(
        name=name,
        destination=destination,
        sender=node.get("sender", as_address, default_sender),
        smtp=smtp,
        incoming=incoming,
        completion_timeout=node.get(
            "completion_timeout", duration("s", COMPLETION_TIMEOUT_BOUNDS), DEFAULT_COMPLETION_TIMEOUT
        ),
        email_timeout=node.get("email_timeout", duration("m", EMAIL_TIMEOUT_BOUNDS), DEFAULT_EMAIL_TIMEOUT),
        max_in_flight=node.get("max_in_flight", as_in_flight, DEFAULT_MAX_IN_FLIGHT),
        spam_test=node.get("spam_test", enum_choice(SpamTest), None),
        dns_mode=node.get("dns_mode", enum_choice(DNSMode), None),
        labels=node.get("labels", as_labels, ()),
    )
    node.finish()
    return task


def _device(node: Node, reading: Reading) -> DeviceConfig:
    name = node.require("name", as_name)
    tasks_nodes = node.children("tasks")
    if not tasks_nodes:
        raise node.error("needs at least one task", "tasks")
    tasks = tuple(_task(t, reading) for t in tasks_nodes)
    _unique([t.name for t in tasks], tasks_nodes, "task")
    device = DeviceConfig(
        name=name,
        interval=node.get("interval", duration("s", INTERVAL_BOUNDS), DEFAULT_INTERVAL),
        dns=_dns(node.child("dns")),
        tasks=tasks,
        labels=node.get("labels", as_labels, ()),
    )
    node.finish()
    return device


def _unique(names: list[str], nodes: list[Node], what: str) -> None:
    seen: set[str] = set()
    for name, node in zip(names, nodes, strict=True):
        if name in seen:
            raise node.error(f"duplicate {what} name {name!r}", "name")
        seen.add(name)


def parse_config(data: object, source: str = "<config>", base_dir: Path | None = None, secrets: bool = True) -> Config:
    """The config in ``data``; with ``secrets=False`` password_env and password_file are checked but
    not read (their Secret is config.secrets.UNREAD_SECRET)."""
    reading = Reading(base_dir or Path.cwd(), secrets)
    root = Node(data if data is not None else {}, "", source)
    devices_nodes = root.children("devices") + _included(root, reading)
    if not devices_nodes:
        raise root.error("needs at least one device (in devices, or in a file that include names)", "devices")
    if sum(len(node.values("tasks")) for node in devices_nodes) > MAX_TASKS:
        raise root.error(f"more than {MAX_TASKS} tasks in all: split them over several exporters (--shard)")
    devices = tuple(_device(d, reading) for d in devices_nodes)
    _unique([d.name for d in devices], devices_nodes, "device")
    root.finish()
    return Config(devices=devices, source=source)


def _included(root: Node, reading: Reading) -> list[Node]:
    """The device nodes of the files ``include`` names (glob patterns relative to the config file,
    each file holding ``devices:`` and nothing else; no include in them). Errors name the file."""
    paths: list[Path] = []
    for i, pattern in enumerate(root.values("include")):
        try:
            paths += _glob(reading.base_dir, as_string(pattern))
        except ValueError as exc:
            raise root.error(str(exc), f"include[{i}]") from None
        if len(paths) > MAX_INCLUDED_FILES:
            raise root.error(f"names more than {MAX_INCLUDED_FILES} files", "include")
    nodes: list[Node] = []
    for path in paths:
        part = Node(read_yaml(path), "", str(path))
        nodes.extend(part.children("devices"))
        part.finish()
    return nodes


def _glob(base_dir: Path, pattern: str) -> list[Path]:
    """The files a pattern names, in a stable order (so device order, and errors, do not vary)."""
    if not pattern:
        raise ValueError("must be a file name or glob pattern, got an empty string")
    given = Path(pattern)
    if given.is_absolute():
        return sorted(Path(given.anchor).glob(str(given.relative_to(given.anchor))))
    return sorted(base_dir.glob(pattern))


def load_config(path: str | Path, secrets: bool = True) -> Config:
    path = Path(path)
    return parse_config(read_yaml(path), str(path), path.parent, secrets)


def describe_failure(path: Path, exc: Exception) -> str:
    """One line for any failure to load a config. A ConfigError is already that line; anything else is
    a bug, named by its type and place only: its message may quote the file, passwords included."""
    if isinstance(exc, ConfigError):
        return str(exc)
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{path}: unexpected {type(exc).__name__}{where}, a bug (details withheld: they may quote the file)"

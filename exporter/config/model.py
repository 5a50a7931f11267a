"""The configuration model: devices holding tasks, as frozen dataclasses, and the documented bounds.

README (Configuration, Bounds) documents every default and bound here; config.load enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from exporter import files

DEFAULT_INTERVAL = 300.0

DEFAULT_COMPLETION_TIMEOUT = 120.0

DEFAULT_EMAIL_TIMEOUT = 600.0

DEFAULT_POLL_INTERVAL = 5.0

DEFAULT_MAX_IN_FLIGHT = 3

# Where servers file spam when they do not mark the folder \Junk (RFC 6154): Dovecot and most
# others, Exchange and Microsoft 365, other mail programs, Gmail (which does mark it), Courier.
DEFAULT_JUNK_FOLDERS = ("Junk", "Junk E-mail", "Junk Email", "Spam", "[Gmail]/Spam", "INBOX.Junk", "INBOX.Spam")
DEFAULT_FRESH_LOGIN_EVERY = 10


# Bounds (README: Configuration, Bounds). Durations in seconds, (shortest, longest).
INTERVAL_BOUNDS = (1.0, 86400.0)

COMPLETION_TIMEOUT_BOUNDS = (0.1, 3600.0)

MAX_EMAIL_TIMEOUT = 3600.0

EMAIL_TIMEOUT_BOUNDS = (1.0, MAX_EMAIL_TIMEOUT)

POLL_INTERVAL_BOUNDS = (0.1, 3600.0)

DNS_TIMEOUT_BOUNDS = (0.01, 600.0)

MAX_IN_FLIGHT_LIMIT = 100

FRESH_LOGIN_EVERY_BOUNDS = (1, 1000)

MAX_TEXT = 4096  # characters in any string setting (paths, header values, ...)

MAX_USER = 255

MAX_PASSWORD = 1024

MAX_ADDRESS = 254  # RFC 5321: a path is at most 256 octets with its angle brackets

MAX_MAILBOX = 255

MAX_CLIENT_SECRET = 1024

MAX_REFRESH_TOKEN = 8192  # Microsoft's are a few KB

MAX_ACCESS_TOKEN = 8192  # so that an SMTP AUTH line with it stays within RFC 4954's 12,288 octets

MAX_SCOPE = 1024

MAX_HELO_NAME = 253

MAX_NAMES = 16  # junk_folders, authserv_ids


# Files: every read is capped (exporter.files); the YAML of a config is bounded after parsing too.
MAX_CONFIG_BYTES = 2 * files.MIB

MAX_PASSWORD_FILE_BYTES = 4 * files.KIB

MAX_TOKEN_FILE_BYTES = 16 * files.KIB  # a refresh token or an access token, kept by another program

MAX_CERTIFICATE_FILE_BYTES = files.MIB  # a CA bundle (Debian's is ~220 KB), certificate or key

MAX_YAML_DEPTH = 64

MAX_YAML_NODES = 200_000  # counted with every alias expanded: ~8,000 tasks; an alias bomb stops here
MAX_INCLUDED_FILES = 1000  # include: a conf.d of files, each bounded like the main file
MAX_TASKS = 20_000  # all files together: ~3 probes per second at a 2 h interval is far beyond one instance

# Labels you choose (labels: on a device or task) go on every series of the task.
MAX_LABELS = 16
MAX_LABEL_VALUE = 128
# The exporter's own label names (and Prometheus' target labels): a label of yours may not shadow one.
RESERVED_LABELS = frozenset(
    {"device", "task", "job", "instance", "reason", "phase", "leg", "cache", "le", "quantile", "protocol"}
    | {"smtp_host", "incoming_host", "version", "cipher", "revision", "python", "placement", "method", "result"}
)

Labels = tuple[tuple[str, str], ...]


class ConfigError(Exception):
    """A configuration problem, already formatted as ``file: path: what is wrong``."""


class Security(StrEnum):
    TLS = "tls"  # implicit TLS from the first byte (465, 993, 995)
    STARTTLS = "starttls"  # plain connect, then upgrade; refusing to go on without TLS
    NONE = "none"  # clear text
    MAY = "may"  # STARTTLS when offered, else clear text (as MTAs deliver to each other; mx: true only)


class Protocol(StrEnum):
    IMAP = "imap"
    POP3 = "pop3"


class Mechanism(StrEnum):
    """SASL mechanisms for an OAuth2 bearer token (exporter.auth.sasl)."""

    XOAUTH2 = "xoauth2"  # Google's and Microsoft's
    OAUTHBEARER = "oauthbearer"  # RFC 7628

    @property
    def wire(self) -> str:
        """As the protocols spell it: ``XOAUTH2``."""
        return self.value.upper()


class Grant(StrEnum):
    CLIENT_CREDENTIALS = "client_credentials"  # RFC 6749 4.4: the application's own token (Microsoft 365)
    REFRESH_TOKEN = "refresh_token"  # RFC 6749 6: a user's consent, kept as a refresh token (Gmail)


class SpamTest(StrEnum):
    """A test pattern the probe letter can carry, so that a spam filter reacts (tests the junk check)."""

    GTUBE = "gtube"  # the standard GTUBE: SpamAssassin scores it 1000; rspamd rejects it
    GTUBE_ADD_HEADER = "gtube_add_header"  # rspamd's variant for "add header" (enable_test_patterns)


class Cleanup(StrEnum):
    """What happens to a probe letter once found (IMAP)."""

    DELETE = "delete"  # \Deleted and UID EXPUNGE where it is
    TRASH = "trash"  # moved to the \Trash special-use folder and expunged there (Gmail)


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
class OAuth2Config:
    """Where a leg's OAuth2 access token comes from: a grant at ``token_url``, or ``token_file``."""

    token_url: str | None = None
    grant: Grant | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    refresh_token: Secret | None = None
    refresh_token_file: str | None = None  # where refresh_token came from, when from a file
    refresh_token_write_back: bool = False  # a rotated refresh token replaces the file's
    scope: str | None = None
    tls: TLSOptions = TLSOptions()  # for the token endpoint
    token_file: str | None = None  # a token another program keeps fresh, read before each use


@dataclass(frozen=True)
class ServerConfig:
    """One leg's server: where to connect, how to secure it, and who to log in as."""

    host: str
    port: int
    security: Security
    tls: TLSOptions
    user: str | None = None
    password: Secret | None = None
    oauth2: OAuth2Config | None = None  # instead of a password
    mechanism: Mechanism | None = None  # the SASL mechanism for the token (set with oauth2)


@dataclass(frozen=True)
class SMTPConfig(ServerConfig):
    """The outgoing leg: a server of its own, or (``mx``) the destination domain's MX hosts."""

    mx: bool = False
    helo_name: str = ""  # the EHLO name; config.load fills in the machine's FQDN
    persistent: bool = False  # keep the authenticated session across probes (legs.outbox)
    fresh_login_every: int = DEFAULT_FRESH_LOGIN_EVERY  # with persistent: every Nth probe connects and logs in anew


@dataclass(frozen=True)
class IncomingConfig:
    """The mailbox leg: its server (described as the SMTP leg's is) and what to read there."""

    server: ServerConfig
    protocol: Protocol = Protocol.IMAP
    mailbox: str = "INBOX"
    poll_interval: float = DEFAULT_POLL_INTERVAL
    cleanup: Cleanup | None = None  # None: delete, or trash where the server is Gmail (X-GM-EXT-1)
    # IMAP: besides the mailbox, the folder with the \Junk special use, else the first of these names
    # the account has, is searched at each poll; () turns the check off.
    junk_folders: tuple[str, ...] = DEFAULT_JUNK_FOLDERS
    junk_is_failure: bool = True  # a letter found in the junk folder fails the probe (reason junk)
    authserv_ids: tuple[str, ...] = ()  # whose Authentication-Results to trust; (): the topmost one
    persistent: bool = False  # IMAP: keep the session across probes (legs.keep)
    fresh_login_every: int = DEFAULT_FRESH_LOGIN_EVERY  # with persistent: every Nth probe logs in anew


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
    smtp: SMTPConfig
    incoming: IncomingConfig
    completion_timeout: float = DEFAULT_COMPLETION_TIMEOUT
    email_timeout: float = DEFAULT_EMAIL_TIMEOUT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    dns_mode: DNSMode | None = None  # overrides the device's mode
    labels: Labels = ()  # the task's own, on top of its device's
    spam_test: SpamTest | None = None  # the letter carries this test pattern


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    interval: float
    dns: DNSConfig
    tasks: tuple[TaskConfig, ...]
    labels: Labels = ()

    def labels_of(self, task: TaskConfig) -> Labels:
        """The labels on the task's series: the device's, then the task's (a task's value wins)."""
        merged = dict(self.labels) | dict(task.labels)
        return tuple(merged.items())


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
            for leg, server in (("smtp", task.smtp), ("incoming", task.incoming.server))
            if server.tls.insecure_skip_verify
        ]

"""A real Postfix + Dovecot mail server for tests, started as child processes.

Everything (configuration, Postfix queue, Dovecot base_dir, Maildirs, logs,
TLS material) lives in one directory ``/tmp/mailrig-XXXXXXXX`` that is removed
on ``stop()`` unless the environment variable ``MAILRIG_KEEP=1`` is set.  The
servers listen only on 127.0.0.1 and ::1 (same port numbers on both).

Usage::

    with MailRig(users=5) as rig:
        smtplib.SMTP("127.0.0.1", rig.ports.smtp).sendmail(
            "a@b.test", [rig.address("user1")], b"Subject: hi\\r\\n\\r\\nbody\\r\\n")

Run ``python -m tests.rig --help`` for a foreground rig (quick-start).
Requires root (Postfix refuses to start otherwise) and the Debian packages
postfix, dovecot-core, dovecot-imapd, dovecot-pop3d and dovecot-lmtpd.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import datetime as dt
import functools
import grp
import itertools
import json
import os
import pwd
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tests.oauthserver import OAuthControl

DOMAIN = "example.test"
HOSTNAME = "mail.test"
HOSTS = ("127.0.0.1", "::1")
CERT_KINDS = ("good", "expired", "wrong_name")
LMTP_TRANSPORT = "lmtp"  # master.cf service name used by virtual_transport
MAIL_USER = "mail"  # unprivileged owner of all Maildirs (uid/gid 8 on Debian)
POSTFIX = "/usr/sbin/postfix"
POSTQUEUE = "/usr/sbin/postqueue"
DOVECOT = "/usr/sbin/dovecot"
DOVEADM = "/usr/bin/doveadm"
OPENSSL = "openssl"
START_TIMEOUT = 20.0
PORT_COUNT = 9  # the fields of Ports
STOP_TIMEOUT = 15.0
# Postfix sleeps ~2 s when a config or map file is younger than 2 s.
BACKDATE_SECONDS = 10

T = TypeVar("T")


def _deferred_by_hold(entry: dict[str, Any]) -> bool:
    """A queue entry that waits only because hold() deferred its transport."""
    return any("deferred transport" in str(r.get("delay_reason", "")) for r in entry.get("recipients", []))


class RigError(RuntimeError):
    """A server failed to start/stop or a wait timed out (message has logs)."""


@dataclass(frozen=True)
class Ports:
    """TCP ports, identical on 127.0.0.1 and ::1."""

    smtp: int
    submission: int
    submissions: int
    imap: int
    imaps: int
    pop3: int
    pop3s: int
    lmtp: int
    oauth: int  # the token and introspection server (tests/oauthserver.py), HTTPS


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    logs: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes.

    Returns the truthy value.  On timeout raises RigError naming ``what`` and,
    if given, the output of ``logs()``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = f"timed out after {timeout:.1f}s waiting for {what}"
            if logs is not None:
                text += "\n" + logs()
            raise RigError(text)
        time.sleep(delay)  # poll interval, not synchronisation
        delay = min(delay * 2, 0.05)


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that are free on both 127.0.0.1 and ::1.

    The sockets are bound to port 0 (kernel choice) and held until all ports
    are chosen, so the same port is never returned twice.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            v4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(v4)
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            held.append(v6)
            try:
                v6.bind(("::1", port))
            except OSError:
                continue  # taken on ::1; keep v4 held so it is not re-picked
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def retry_if_port_taken(start: Callable[[], None], move: Callable[[], None], attempts: int) -> None:
    """``start()`` servers; if one found its port taken, ``move()`` them to new ports and try again.

    Free ports are only known free when picked; a parallel test run may grab one before our servers
    bind it. ``move()`` kills what started, picks new ports and rewrites the configs.
    """
    for attempt in range(1, attempts + 1):
        try:
            start()
            return
        except RigError as exc:
            if attempt == attempts or "address already in use" not in str(exc).lower():
                raise
            move()


def port_open(host: str, port: int) -> bool:
    """True if a TCP connection to host:port is accepted."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def unix_socket_accepts(path: Path) -> bool:
    """True if a listener accepts connections on the Unix socket ``path``.

    A leftover socket file of a killed server exists but refuses connections.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(missing)"
    return "\n".join(text.splitlines()[-lines:])


def _backdate(path: Path) -> None:
    stamp = time.time() - BACKDATE_SECONDS
    os.utime(path, (stamp, stamp))


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (Postfix is not our child)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes() -> Iterator[tuple[int, str, int, int]]:
    """Yield (pid, comm, ppid, pgrp) of all live processes."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if state != "Z":
            yield int(entry.name), comm, int(ppid), int(pgrp)


def _run(args: list[str], what: str, logs: Callable[[], str] | None = None) -> str:
    """Run a command, return stdout; raise RigError with its output on failure."""
    env = {**os.environ, "LANG": "C", "LC_ALL": "C"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        text = f"{what} failed ({proc.returncode}): {' '.join(args)}\n{proc.stdout}{proc.stderr}"
        if logs is not None:
            text += "\n" + logs()
        raise RigError(text)
    return proc.stdout


def _peer_cert(host: str, port: int, starttls: bool) -> bytes | None:
    """DER certificate presented on host:port (implicit TLS or SMTP STARTTLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we only look at which cert is served
    try:
        if starttls:
            with smtplib.SMTP(host, port, timeout=5) as smtp:
                smtp.starttls(context=ctx)
                assert isinstance(smtp.sock, ssl.SSLSocket)
                return smtp.sock.getpeercert(binary_form=True)
        with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
            return tls.getpeercert(binary_form=True)
    except (OSError, smtplib.SMTPException):
        return None


def postfix_master_pid(spool: Path) -> int | None:
    """PID of the master of the Postfix instance whose queue_directory is ``spool``."""
    try:
        return int((spool / "pid" / "master.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def kill_postfix(spool: Path) -> None:
    """Terminate the master of the Postfix instance at ``spool`` and wait for its process group to exit."""
    pid = postfix_master_pid(spool)
    if pid is None or not _pid_alive(pid):
        return
    # Same signal as `postfix stop`, which however polls in 1 s sleeps.
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(lambda: not any(group == pid for _, _, _, group in _processes()), STOP_TIMEOUT, "")
    except RigError:
        os.killpg(pid, signal.SIGKILL)


def terminate(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child we started (in a session of its own), SIGKILL its group if it lingers; reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# Postfix's internal services (master.cf lines); chroot off so absolute socket paths work.
POSTFIX_INTERNAL_SERVICES = (
    "pickup unix n - n 60 1 pickup",
    "cleanup unix n - n - 0 cleanup",
    "qmgr unix n - n 300 1 qmgr",
    "tlsmgr unix - - n 1000? 1 tlsmgr",
    "rewrite unix - - n - - trivial-rewrite",
    "bounce unix - - n - 0 bounce",
    "defer unix - - n - 0 bounce",
    "trace unix - - n - 0 bounce",
    "verify unix - - n - 1 verify",
    "flush unix n - n 1000? 0 flush",
    "proxymap unix - - n - - proxymap",
    "proxywrite unix - - n - 1 proxymap",
    "smtp unix - - n - - smtp",
    "relay unix - - n - - smtp",
    "showq unix n - n - - showq",
    "error unix - - n - - error",
    "retry unix - - n - - error",
    "discard unix - - n - - discard",
    f"{LMTP_TRANSPORT} unix - - n - - lmtp",
    "anvil unix - - n - 1 anvil",
    "scache unix - - n - 1 scache",
    "postlog unix-dgram n - n - 1 postlogd",
)


def write_postfix_master_cf(path: Path, services: Iterable[tuple[str, Iterable[str]]]) -> None:
    """master.cf from (service line, -o options) pairs, followed by the internal services."""
    lines = []
    for head, options in services:
        lines.append(head)
        lines.extend(f"  -o {opt}" for opt in options)
    lines.extend(POSTFIX_INTERNAL_SERVICES)
    path.write_text("\n".join(lines) + "\n")
    _backdate(path)


# --------------------------------------------------------------------------
# TLS material
# --------------------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = req_dn
prompt = no
[req_dn]
CN = unused

[rig_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/issued
serial = $dir/serial
certificate = $dir/ca.crt
private_key = $dir/ca.key
default_md = sha256
policy = policy_any
unique_subject = no
email_in_dn = no
copy_extensions = none
[policy_any]
commonName = supplied

[ext_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ext_good]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:localhost, DNS:{hostname}, IP:127.0.0.1, IP:::1

[ext_wrong_name]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:other.test
"""


def _check_account(addr: str, password: str | None) -> None:
    """Reject what would break the passwd-file, the Postfix map or a Maildir path."""
    local, _, domain = addr.partition("@")
    if domain != DOMAIN:
        raise ValueError(f"{addr}: users must be in {DOMAIN}")
    if not local or set(local) & set(":@/ \t\r\n"):
        raise ValueError(f"unusable user name: {local!r}")
    if password is not None and (not password or set(password) & set(":\r\n")):
        raise ValueError(f"unusable password: {password!r}")


def _asn1_time(when: dt.datetime) -> str:
    return when.strftime("%Y%m%d%H%M%SZ")


class _Tls:
    """Test CA plus three server certs (good/expired/wrong_name) sharing one key.

    One key for all server certs lets a cert switch replace a single file
    (current.crt) atomically, so servers never see a key/cert mismatch.
    """

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca_file = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.key_file = directory / "server.key"
        self.current_cert = directory / "current.crt"
        self.certs = {kind: directory / f"{kind}.crt" for kind in CERT_KINDS}

    def generate(self) -> None:
        (self.dir / "issued").mkdir(parents=True)
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text("1000\n")
        cnf = self.dir / "openssl.cnf"
        text = _OPENSSL_CNF.replace("{dir}", str(self.dir)).replace("{hostname}", HOSTNAME)
        cnf.write_text(text)
        self._make_ca(cnf)
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(self.key_file))
        now = dt.datetime.now(dt.UTC)
        self._issue(cnf, "good", HOSTNAME, "ext_good", now - dt.timedelta(days=1), now + dt.timedelta(days=365))
        self._issue(cnf, "expired", HOSTNAME, "ext_good", now - dt.timedelta(days=60), now - dt.timedelta(days=30))
        self._issue(
            cnf, "wrong_name", "other.test", "ext_wrong_name", now - dt.timedelta(days=1), now + dt.timedelta(days=365)
        )
        for path in self.dir.iterdir():
            if path.suffix == ".key":
                path.chmod(0o600)
        shutil.copyfile(self.certs["good"], self.current_cert)

    def _make_ca(self, cnf: Path) -> None:
        self._openssl(
            "req",
            "-config",
            str(cnf),
            "-x509",
            "-new",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-keyout",
            str(self.ca_key),
            "-out",
            str(self.ca_file),
            "-days",
            "3650",
            "-subj",
            "/CN=Mail Rig Test CA",
            "-extensions",
            "ext_ca",
        )

    def _issue(self, cnf: Path, kind: str, cn: str, ext: str, start: dt.datetime, end: dt.datetime) -> None:
        csr = self.dir / f"{kind}.csr"
        self._openssl(
            "req", "-config", str(cnf), "-new", "-key", str(self.key_file), "-subj", f"/CN={cn}", "-out", str(csr)
        )
        self._openssl(
            "ca",
            "-config",
            str(cnf),
            "-name",
            "rig_ca",
            "-batch",
            "-notext",
            "-in",
            str(csr),
            "-out",
            str(self.certs[kind]),
            "-extfile",
            str(cnf),
            "-extensions",
            ext,
            "-startdate",
            _asn1_time(start),
            "-enddate",
            _asn1_time(end),
        )

    def _openssl(self, *args: str) -> None:
        _run([OPENSSL, *args], f"openssl {args[0]}")

    def switch(self, kind: str) -> None:
        """Atomically make ``kind`` the served certificate."""
        tmp = self.current_cert.with_suffix(".tmp")
        shutil.copyfile(self.certs[kind], tmp)
        _backdate(tmp)
        os.replace(tmp, self.current_cert)

    def der(self, kind: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.certs[kind].read_text())


# --------------------------------------------------------------------------
# The rig
# --------------------------------------------------------------------------


class MailRig:
    """Real Postfix (SMTP/submission/submissions) + Dovecot (IMAP/POP3/LMTP).

    Login names are full addresses ("user1@example.test"); the bare local
    part ("user1") is accepted too (Dovecot auth_default_realm).
    """

    domain = DOMAIN
    hostname = HOSTNAME
    host = "127.0.0.1"
    hosts = HOSTS

    def __init__(self, users: int = 5) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mailrig-", dir="/tmp"))
        self.dir.chmod(0o755)  # Postfix/Dovecot users must traverse it
        self.ports = Ports(*free_ports(PORT_COUNT))
        self._passwords: dict[str, str] = {}
        self._userdb_fields: dict[str, str] = {}
        self._initial_users = users
        self._mail_uid = pwd.getpwnam(MAIL_USER).pw_uid
        self._mail_gid = grp.getgrnam(MAIL_USER).gr_gid
        self._tls = _Tls(self.dir / "tls")
        self._postfix_conf = self.dir / "postfix" / "conf"
        self._spool = self.dir / "postfix" / "spool"
        self._dovecot_conf = self.dir / "dovecot" / "dovecot.conf"
        self._passwd_file = self.dir / "dovecot" / "users"
        self._oauth2_conf = self.dir / "dovecot" / "oauth2.conf.ext"
        self._vmailbox = self._postfix_conf / "vmailbox"
        self._run_dir = self.dir / "run"  # Dovecot base_dir (short: socket paths)
        self._log_dir = self.dir / "log"
        self._dovecot: subprocess.Popen[bytes] | None = None
        self._oauth: subprocess.Popen[bytes] | None = None
        self._postfix_running = False
        self._defer_transports = ""
        self._postfix_extra: dict[str, str] = {}
        self._started = False
        self._removed = False
        atexit.register(self.stop)  # never leave daemons behind on exit
        self._deliver_seq = itertools.count()
        self.cert_kind = "good"

    # ---- public attributes -------------------------------------------------

    @property
    def ca_file(self) -> Path:
        """PEM file of the test CA that signed every server certificate."""
        return self._tls.ca_file

    @property
    def cert_files(self) -> dict[str, Path]:
        """Server certificate per kind: good, expired, wrong_name."""
        return dict(self._tls.certs)

    @property
    def expired_cert_file(self) -> Path:
        return self._tls.certs["expired"]

    @property
    def wrong_name_cert_file(self) -> Path:
        return self._tls.certs["wrong_name"]

    @property
    def users(self) -> list[str]:
        """All user addresses, in creation order."""
        return list(self._passwords)

    def address(self, user: str) -> str:
        """'user1' or 'User1@example.test' -> 'user1@example.test'.

        Lower case, as Dovecot lower-cases login names before the lookup.
        """
        return (user if "@" in user else f"{user}@{DOMAIN}").lower()

    def password(self, user: str) -> str:
        return self._passwords[self.address(user)]

    # ---- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        """Generate everything and start both servers; return when all are ready."""
        if self._removed:
            raise RigError("this MailRig was stopped; create a new one")
        if self._started:
            return self
        if os.geteuid() != 0:
            raise RigError("MailRig must run as root (Postfix refuses to start otherwise)")
        self._started = True
        try:
            self._prepare()
            self._start_servers()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_servers(self, attempts: int = 3) -> None:
        """Start the token server, Dovecot and Postfix, moving to new ports if one was taken meanwhile."""
        retry_if_port_taken(self._start_rig_servers, self._move_rig_servers, attempts)

    def _start_rig_servers(self) -> None:
        self.start_oauth()
        self.start_imap_pop3()
        self.start_smtp()

    def _move_rig_servers(self) -> None:
        # Not stop_*(): they would wait for the foreign port to close.
        self._kill_postfix()
        self._kill_dovecot()
        self._kill_oauth()
        self.ports = Ports(*free_ports(PORT_COUNT))
        self._write_server_configs()

    def stop(self) -> None:
        """Stop both servers and remove the rig dir (unless MAILRIG_KEEP=1). Idempotent."""
        if self._removed:
            return
        self._removed = True
        atexit.unregister(self.stop)
        errors: list[str] = []
        for stopper in (self.stop_smtp, self.stop_imap_pop3, self.stop_oauth):
            try:
                stopper()
            except RigError as exc:
                errors.append(str(exc))
        if os.environ.get("MAILRIG_KEEP") == "1":
            print(f"MAILRIG_KEEP=1: keeping {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise RigError("\n".join(errors))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- waiting and diagnostics -------------------------------------------

    def wait_for(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll ``predicate`` until truthy; on timeout raise RigError with the logs."""
        return wait_for(predicate, timeout, what, self.logs)

    def logs(self, lines: int = 60) -> str:
        """Tail of the Postfix and Dovecot logs (for assertion messages)."""
        parts = []
        for name in ("postfix.log", "dovecot.log", "dovecot.stderr", "oauth.log"):
            parts.append(f"----- {name} (last {lines} lines) -----")
            parts.append(_tail(self._log_dir / name, lines))
        return "\n".join(parts)

    # ---- users ---------------------------------------------------------------

    def add_users(self, names: Iterable[str], password: str | None = None, userdb_fields: str = "") -> list[str]:
        """Create users (local parts or addresses); return their addresses.

        The password defaults to "<local part>-secret".  ``userdb_fields`` are Dovecot settings for
        these users alone (``userdb_imap_capability=+X-GM-EXT-1``: their IMAP says it is Gmail).  Both servers
        are reloaded; this returns once Dovecot knows the last new user and Postfix accepts it as a
        recipient.
        """
        wanted = dict.fromkeys(self.address(name) for name in names)  # ordered, no duplicates
        added = [addr for addr in wanted if addr not in self._passwords]
        for addr in added:
            _check_account(addr, password)
        if not added:
            return []
        for addr in added:
            self._passwords[addr] = password or f"{addr.split('@')[0]}-secret"
            self._userdb_fields[addr] = userdb_fields
            self._make_maildir(addr)
        with self._passwd_file.open("a") as fh:
            fh.writelines(self._passwd_line(addr) for addr in added)
        with self._vmailbox.open("a") as fh:
            fh.writelines(f"{addr} {addr}/Maildir/\n" for addr in added)
        _backdate(self._vmailbox)
        if self._dovecot is not None:
            # Dovecot re-reads a changed passwd-file at most once per second;
            # a reload gives a fresh auth process that reads it now.
            self._doveadm("reload")
            self.wait_for(
                lambda: self._dovecot_knows(added[-1]), START_TIMEOUT, f"Dovecot to know new user {added[-1]}"
            )
        if self._postfix_running:
            self._postfix_reload()
            self.wait_for(
                lambda: self._smtp_accepts_rcpt(added[-1]), START_TIMEOUT, f"Postfix to accept new user {added[-1]}"
            )
        return added

    def set_password(self, user: str, password: str) -> None:
        """Give an existing user another password; returns once Dovecot takes the new one."""
        addr = self.address(user)
        _check_account(addr, password)
        self._passwords[addr] = password
        self._passwd_file.write_text("".join(self._passwd_line(known) for known in self._passwords))
        if self._dovecot is not None:
            self._doveadm("reload")
            self.wait_for(lambda: self._dovecot_takes(addr, password), START_TIMEOUT, f"the new password of {addr}")

    def _dovecot_takes(self, addr: str, password: str) -> bool:
        args = [DOVEADM, "-c", str(self._dovecot_conf), "auth", "test", addr, password]
        return subprocess.run(args, capture_output=True, check=False).returncode == 0

    def kick(self, user: str) -> None:
        """Drop the user's IMAP and POP3 sessions from the server's side (doveadm kick)."""
        self._doveadm("kick", self.address(user))

    def add_undeliverable(self, name: str) -> str:
        """An address Postfix accepts at RCPT that Dovecot's LMTP then rejects (550 5.1.1 unknown
        user): every letter to it comes back as a real bounce (DSN) to its envelope sender."""
        addr = self.address(name)
        if addr in self._passwords:
            raise RigError(f"{addr} is a real mailbox; it cannot also be undeliverable")
        with self._vmailbox.open("a") as fh:
            fh.write(f"{addr} {addr}/Maildir/\n")
        _backdate(self._vmailbox)
        if self._postfix_running:
            self._postfix_reload()
            self.wait_for(lambda: self._smtp_accepts_rcpt(addr), START_TIMEOUT, f"Postfix to accept {addr}")
        return addr

    def _passwd_line(self, addr: str) -> str:
        home = self.dir / "mail" / addr
        fields = self._userdb_fields.get(addr, "")
        return f"{addr}:{{PLAIN}}{self._passwords[addr]}:{self._mail_uid}:{self._mail_gid}::{home}::{fields}\n"

    def _dovecot_knows(self, addr: str) -> bool:
        args = [DOVEADM, "-c", str(self._dovecot_conf), "user", addr]
        return subprocess.run(args, capture_output=True, check=False).returncode == 0

    def _doveadm(self, *args: str) -> None:
        _run([DOVEADM, "-c", str(self._dovecot_conf), *args], f"doveadm {args[0]}", self.logs)

    def _smtp_accepts_rcpt(self, addr: str, port: int | None = None) -> bool:
        """True if the SMTP server on ``port`` (default: the rig's SMTP port) accepts ``addr`` at RCPT."""
        try:
            with smtplib.SMTP(self.host, port or self.ports.smtp, timeout=5) as smtp:
                smtp.ehlo()
                smtp.mail("")
                code, _ = smtp.rcpt(addr)
                smtp.rset()
                return code == 250
        except (OSError, smtplib.SMTPException):
            return False

    # ---- Maildir access ------------------------------------------------------

    def maildir(self, user: str) -> Path:
        return self.dir / "mail" / self.address(user) / "Maildir"

    def messages(self, user: str) -> list[Path]:
        """Message files in new/ and cur/ of the user's INBOX, sorted by name."""
        found: list[Path] = []
        for sub in ("new", "cur"):
            folder = self.maildir(user) / sub
            if folder.is_dir():
                found.extend(p for p in folder.iterdir() if not p.name.startswith("."))
        return sorted(found, key=lambda p: p.name)

    def clear_mailbox(self, user: str) -> None:
        """Delete every message file in the user's INBOX (Dovecot copes)."""
        for path in self.messages(user):
            path.unlink(missing_ok=True)

    def deliver_raw(self, user: str, raw: bytes) -> Path:
        """Drop ``raw`` into the user's Maildir new/ directly, bypassing SMTP."""
        maildir = self._make_maildir(self.address(user))
        now = time.time()
        name = f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self._deliver_seq)}.{HOSTNAME},S={len(raw)}"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self._mail_uid, self._mail_gid)
        tmp.chmod(0o600)
        target = maildir / "new" / name
        os.rename(tmp, target)  # Maildir protocol: appear atomically in new/
        return target

    def _make_maildir(self, addr: str) -> Path:
        home = self.dir / "mail" / addr
        maildir = home / "Maildir"
        for path in (home, maildir, maildir / "new", maildir / "cur", maildir / "tmp"):
            if not path.is_dir():
                path.mkdir(mode=0o700)
                os.chown(path, self._mail_uid, self._mail_gid)
        return maildir

    # ---- Postfix queue control ---------------------------------------------

    def hold(self) -> None:
        """Keep new mail in the Postfix queue (defer the LMTP transport)."""
        self._set_defer_transports(LMTP_TRANSPORT)

    def release(self) -> None:
        """Undo hold() and flush the queue; delivery then happens asynchronously.

        A letter the held transport was still deferring while the reload ran (its delivery agent
        outlives the old queue manager) lands in the deferred queue after the flush, where it would
        wait minutes for the next queue run; one that was active when the reload stopped the queue
        manager waits until something starts a new one. So: flush until no letter is in flight and
        none waits for the hold any more.
        """
        # A letter the hold is deferring right now (active, its delivery agent at work) would outlive
        # the queue manager the reload stops, and the next one skips it as "still being delivered" for
        # good (seen: a held letter never delivered). So first let every such letter reach deferred.
        self.wait_for(self._none_active, START_TIMEOUT, "held letters to reach the deferred queue")
        self._set_defer_transports("")
        self.wait_for(self._held_letters_flushed, START_TIMEOUT, "held letters to leave the deferred queue")

    def _none_active(self) -> bool:
        return not self._postfix_running or not any(entry.get("queue_name") == "active" for entry in self.queue())

    def _held_letters_flushed(self) -> bool:
        if not self._postfix_running:
            return True
        entries = self.queue()
        held = [entry for entry in entries if entry.get("queue_name") == "deferred" and _deferred_by_hold(entry)]
        active = [entry for entry in entries if entry.get("queue_name") == "active"]
        # A letter still active when the reload stopped the queue manager waits for the next one, which
        # the master starts only on demand: postqueue -f is that demand (seen after a Postfix restart).
        if held or active:
            self.flush()
        return not held and not active

    def flush(self) -> None:
        """Ask Postfix to retry all deferred mail now (postqueue -f); no-op while stopped."""
        if self._postfix_running:
            _run([POSTQUEUE, "-c", str(self._postfix_conf), "-f"], "postqueue -f", self.logs)

    def queue(self) -> list[dict[str, Any]]:
        """The Postfix queue as `postqueue -j` records (queue_name, queue_id, recipients...)."""
        out = _run([POSTQUEUE, "-c", str(self._postfix_conf), "-j"], "postqueue -j", self.logs)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def queue_ids(self) -> list[str]:
        """Queue ids of all messages in the Postfix queue."""
        return [str(entry["queue_id"]) for entry in self.queue()]

    def set_postfix(self, settings: dict[str, str]) -> None:
        """Add main.cf settings of a caller's own (the benchmark's end-of-data policy clock) and reload."""
        self._postfix_extra.update(settings)
        self._write_postfix_main_cf()
        if self._postfix_running:
            self._postfix_reload()

    def _set_defer_transports(self, value: str) -> None:
        self._defer_transports = value
        self._write_postfix_main_cf()
        if self._postfix_running:
            self._postfix_reload()

    # ---- TLS switching -------------------------------------------------------

    def use_server_cert(self, kind: str) -> None:
        """Serve the 'good', 'expired' or 'wrong_name' cert on every TLS port.

        Reloads Postfix and Dovecot and returns once fresh TLS handshakes on
        all TLS ports present the new certificate.
        """
        if kind not in CERT_KINDS:
            raise ValueError(f"kind must be one of {CERT_KINDS}, not {kind!r}")
        self._tls.switch(kind)
        self.cert_kind = kind
        if self._postfix_running:
            self._postfix_reload()
        if self._dovecot is not None:
            self._doveadm("reload")
        want = self._tls.der(kind)
        for port, starttls in self._tls_endpoints():
            for host in HOSTS:
                self.wait_for(
                    functools.partial(self._serves, want, host, port, starttls),
                    START_TIMEOUT,
                    f"{kind} cert on [{host}]:{port}",
                )

    @staticmethod
    def _serves(cert: bytes, host: str, port: int, starttls: bool) -> bool:
        return _peer_cert(host, port, starttls) == cert

    def _tls_endpoints(self) -> list[tuple[int, bool]]:
        endpoints: list[tuple[int, bool]] = []
        if self._postfix_running:
            endpoints += [(self.ports.smtp, True), (self.ports.submission, True), (self.ports.submissions, False)]
        if self._dovecot is not None:
            endpoints += [(self.ports.imaps, False), (self.ports.pop3s, False)]
        return endpoints

    # ---- Postfix process control ---------------------------------------------

    def start_smtp(self) -> None:
        """Start Postfix; return when its ports accept connections on both families."""
        if self._postfix_running:
            return
        _run([POSTFIX, "-c", str(self._postfix_conf), "start"], "postfix start", self.logs)
        self._postfix_running = True
        self._wait_ports(self._postfix_ports(), True, "Postfix ports to open")

    def stop_smtp(self) -> None:
        """Stop Postfix completely; return when its processes and ports are gone."""
        if self._postfix_running:
            self._kill_postfix()
            self._wait_ports(self._postfix_ports(), False, "Postfix ports to close")

    def _kill_postfix(self) -> None:
        """Terminate the master and wait for its whole process group to exit."""
        self._postfix_running = False
        kill_postfix(self._spool)

    def _postfix_ports(self) -> list[int]:
        return [self.ports.smtp, self.ports.submission, self.ports.submissions]

    def _postfix_master_pid(self) -> int | None:
        return postfix_master_pid(self._spool)

    @staticmethod
    def _process_group_alive(pgrp: int) -> bool:
        return any(group == pgrp for _, _, _, group in _processes())

    def _postfix_children(self, comm: str) -> list[int]:
        master = self._postfix_master_pid()
        return [pid for pid, name, ppid, _ in _processes() if ppid == master and name == comm]

    def _postfix_reload(self) -> None:
        """`postfix reload`, then wait until the old queue manager has exited.

        Reload is asynchronous: until the old qmgr exits it may still deliver
        with the old settings (e.g. defer_transports).
        """
        old_qmgrs = self._postfix_children("qmgr")
        _run([POSTFIX, "-c", str(self._postfix_conf), "reload"], "postfix reload", self.logs)
        self.wait_for(
            lambda: not any(_pid_alive(pid) for pid in old_qmgrs),
            START_TIMEOUT,
            "old Postfix qmgr to exit after reload",
        )

    # ---- the OAuth2 token server ----------------------------------------------

    @property
    def oauth(self) -> OAuthControl:
        """The token and introspection server Dovecot checks XOAUTH2/OAUTHBEARER logins against."""
        return OAuthControl(self.ports.oauth, str(self.ca_file))

    def start_oauth(self) -> None:
        """Start tests/oauthserver.py (HTTPS on both loopback addresses); return when it listens."""
        if self._oauth is not None:
            return
        command = [sys.executable, "-m", "tests.oauthserver", "--port", str(self.ports.oauth)]
        command += ["--cert", str(self._tls.certs["good"]), "--key", str(self._tls.key_file)]
        with (self._log_dir / "oauth.log").open("ab") as log:
            self._oauth = subprocess.Popen(
                command,
                cwd=Path(__file__).resolve().parent.parent,  # where the tests package is
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.wait_for(self._oauth_ready, START_TIMEOUT, "the OAuth2 token server to start")

    def _oauth_ready(self) -> bool:
        assert self._oauth is not None
        if self._oauth.poll() is not None:
            raise RigError(f"the OAuth2 token server exited with {self._oauth.returncode}\n{self.logs()}")
        return all(port_open(host, self.ports.oauth) for host in HOSTS)

    def stop_oauth(self) -> None:
        if self._oauth is not None:
            self._kill_oauth()
            self._wait_ports([self.ports.oauth], False, "the OAuth2 token server's port to close")

    def _kill_oauth(self) -> None:
        proc, self._oauth = self._oauth, None
        if proc is not None:
            terminate(proc)

    # ---- Dovecot process control ---------------------------------------------

    def start_imap_pop3(self) -> None:
        """Start Dovecot; return when its ports and LMTP/auth sockets are ready."""
        if self._dovecot is not None:
            return
        with (self._log_dir / "dovecot.stderr").open("ab") as err:
            self._dovecot = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self._dovecot_conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # Ctrl-C in a terminal must not reach it
            )
        self.wait_for(self._dovecot_ready, START_TIMEOUT, "Dovecot to start")

    def stop_imap_pop3(self) -> None:
        """Stop Dovecot; return when its ports are closed."""
        if self._dovecot is not None:
            self._kill_dovecot()
            self._wait_ports(self._dovecot_ports(), False, "Dovecot ports to close")

    def _kill_dovecot(self) -> None:
        """Terminate the master and wait for its whole process group to exit."""
        proc, self._dovecot = self._dovecot, None
        if proc is None:
            return
        proc.terminate()
        # Dovecot's master stops its workers at once but then sleeps a fixed
        # 1 s for its log process before exiting; skip that idle second.
        self._wait_quietly(lambda: proc.poll() is not None or self._dovecot_workers_gone(proc.pid), STOP_TIMEOUT)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self._wait_quietly(lambda: not self._process_group_alive(proc.pid), STOP_TIMEOUT)

    @staticmethod
    def _dovecot_workers_gone(pgrp: int) -> bool:
        """True when only Dovecot's master and log process are left."""
        return all(comm in ("dovecot", "log") for _, comm, _, group in _processes() if group == pgrp)

    def _dovecot_ports(self) -> list[int]:
        p = self.ports
        return [p.imap, p.imaps, p.pop3, p.pop3s, p.lmtp]

    def _dovecot_ready(self) -> bool:
        assert self._dovecot is not None
        if self._dovecot.poll() is not None:
            raise RigError(f"Dovecot exited with {self._dovecot.returncode}\n{self.logs()}")
        sockets = [self._run_dir / "lmtp", self._run_dir / "auth-postfix"]
        return all(unix_socket_accepts(s) for s in sockets) and all(
            port_open(host, port) for port in self._dovecot_ports() for host in HOSTS
        )

    # ---- shared waits ----------------------------------------------------------

    def _wait_ports(self, ports: list[int], is_open: bool, what: str) -> None:
        self.wait_for(lambda: all(port_open(h, p) == is_open for p in ports for h in HOSTS), START_TIMEOUT, what)

    @staticmethod
    def _wait_quietly(predicate: Callable[[], bool], timeout: float) -> bool:
        try:
            wait_for(predicate, timeout, "")
        except RigError:
            return False
        return True

    # ---- configuration -------------------------------------------------------

    def _prepare(self) -> None:
        for sub in ("postfix/conf", "dovecot/state", "log"):
            (self.dir / sub).mkdir(parents=True)
        self._spool.mkdir(mode=0o755)
        data = self.dir / "postfix" / "data"
        data.mkdir(mode=0o700)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)
        mail = self.dir / "mail"
        mail.mkdir(mode=0o755)
        os.chown(mail, self._mail_uid, self._mail_gid)
        self._tls.generate()
        self._passwd_file.write_text("")
        # Dovecot's auth process reads it as the dovecot user.
        self._passwd_file.chmod(0o640)
        os.chown(self._passwd_file, 0, grp.getgrnam("dovecot").gr_gid)
        self._vmailbox.write_text("")
        self.add_users(f"user{i}" for i in range(1, self._initial_users + 1))
        self._write_server_configs()

    def _write_server_configs(self) -> None:
        self._write_postfix_main_cf()
        self._write_postfix_master_cf()
        self._dovecot_conf.write_text(self._dovecot_conf_text())
        self._oauth2_conf.write_text(self._oauth2_conf_text())

    def _postfix_main(self) -> dict[str, str]:
        r = self.dir
        # Recipients resolving to error: are rejected at RCPT time (550 5.7.1).
        no_external = f"error:5.7.1 delivery outside {DOMAIN} is disabled in the mail rig"
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(self._spool),
            "data_directory": f"{r}/postfix/data",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"mailrig-{r.name.split('-', 1)[1]}",
            "maillog_file": f"{self._log_dir}/postfix.log",
            # Postfix refuses a maillog_file outside these prefixes.
            "maillog_file_prefixes": str(r),
            "myhostname": HOSTNAME,
            "mydomain": DOMAIN,
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "inet_interfaces": "127.0.0.1, [::1]",
            "inet_protocols": "all",
            "mynetworks": "127.0.0.0/8 [::1]/128",
            "smtputf8_enable": "no",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_maps": f"texthash:{self._vmailbox}",
            "virtual_transport": f"{LMTP_TRANSPORT}:unix:{self._run_dir}/lmtp",
            "default_transport": no_external,
            "relay_transport": no_external,
            "defer_transports": self._defer_transports,
            "smtpd_relay_restrictions": "permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_sasl_type": "dovecot",
            "smtpd_sasl_path": f"{self._run_dir}/auth-postfix",
            "smtpd_sasl_auth_enable": "no",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self._tls.current_cert),
            "smtpd_tls_key_file": str(self._tls.key_file),
            "smtpd_banner": "$myhostname ESMTP mail rig",
            # No DNS here: skip reverse lookups of the (loopback) client.
            "smtpd_peername_lookup": "no",
            # Tests provoke errors on purpose; do not slow them down.
            "smtpd_error_sleep_time": "0",
            "in_flow_delay": "0",
            # Retry soon after an outage (e.g. Dovecot stopped) ends.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "10s",
            "delay_warning_time": "0",
            "message_size_limit": str(50 * 1024 * 1024),
            "mailbox_size_limit": "0",
            "virtual_mailbox_limit": "0",
            "biff": "no",
            **self._postfix_extra,
        }

    def _write_postfix_main_cf(self) -> None:
        path = self._postfix_conf / "main.cf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in self._postfix_main().items()))
        _backdate(path)

    def _write_postfix_master_cf(self) -> None:
        syslog = self._postfix_main()["syslog_name"]
        auth = [
            "smtpd_sasl_auth_enable=yes",
            "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
            "smtpd_recipient_restrictions=permit_sasl_authenticated,reject",
        ]
        services = [
            (f"{self.ports.smtp} inet n - n - - smtpd", []),
            (
                f"{self.ports.submission} inet n - n - - smtpd",
                [
                    f"syslog_name={syslog}/submission",
                    "smtpd_tls_security_level=encrypt",
                    "smtpd_tls_auth_only=yes",
                    *auth,
                ],
            ),
            (
                f"{self.ports.submissions} inet n - n - - smtpd",
                [
                    f"syslog_name={syslog}/submissions",
                    "smtpd_tls_wrappermode=yes",
                    "smtpd_tls_security_level=encrypt",
                    *auth,
                ],
            ),
        ]
        write_postfix_master_cf(self._postfix_conf / "master.cf", services)

    def _dovecot_conf_text(self) -> str:
        r, p = self.dir, self.ports
        return f"""\
instance_name = mailrig-{r.name.split("-", 1)[1]}
base_dir = {self._run_dir}
state_dir = {r}/dovecot/state
log_path = {self._log_dir}/dovecot.log
protocols = imap pop3 lmtp
listen = 127.0.0.1, ::1
ssl = yes
ssl_cert = <{self._tls.current_cert}
ssl_key = <{self._tls.key_file}
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
auth_default_realm = {DOMAIN}
auth_verbose = yes
first_valid_uid = {self._mail_uid}
first_valid_gid = {self._mail_gid}
mail_location = maildir:~/Maildir
mail_fsync = never
mail_max_userip_connections = 1000
pop3_uidl_format = %08Xu%08Xv
postmaster_address = postmaster@{DOMAIN}
# A folder Trash (made by whoever needs it) has the \\Trash special use (RFC 6154), as Gmail's has.
namespace inbox {{
  inbox = yes
  mailbox Trash {{
    special_use = \\Trash
  }}
}}
# Even with auth_failure_delay = 0, Dovecot 2.3 answers a failed login only
# at its next 0.5 s timer tick, unless the request carries "nodelay".  Fields
# of a failing passdb are discarded, so this non-authenticating passdb sets it.
passdb {{
  driver = static
  args = nopassword=y noauthenticate=y nodelay=y
  result_success = continue
}}
# XOAUTH2 and OAUTHBEARER logins (IMAP, POP3, and SMTP through Postfix's SASL) are checked by
# introspection at tests/oauthserver.py; passwords only by the passwd-file.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self._oauth2_conf}
}}
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN {self._passwd_file}
}}
userdb {{
  driver = passwd-file
  args = {self._passwd_file}
}}
service imap-login {{
  inet_listener imap {{
    port = {p.imap}
  }}
  inet_listener imaps {{
    port = {p.imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {p.pop3}
  }}
  inet_listener pop3s {{
    port = {p.pop3s}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    port = {p.lmtp}
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
# Documented way to disable the per-IP auth failure penalty (all tests
# come from 127.0.0.1 and some fail logins on purpose).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# Mail processes run as uid {self._mail_uid}, not in the dovecot group.
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

    def _oauth2_conf_text(self) -> str:
        return f"""\
introspection_mode = post
introspection_url = https://127.0.0.1:{self.ports.oauth}/introspect
username_attribute = email
active_attribute = active
active_value = true
tls_ca_cert_file = {self.ca_file}
timeout_msecs = 20000
"""

    def describe(self) -> dict[str, object]:
        """Everything a client needs, JSON-serialisable."""
        return {
            "dir": str(self.dir),
            "hosts": list(HOSTS),
            "domain": DOMAIN,
            "ports": asdict(self.ports),
            "ca_file": str(self.ca_file),
            "cert_files": {k: str(v) for k, v in self.cert_files.items()},
            "users": [{"login": addr, "address": addr, "password": pw} for addr, pw in self._passwords.items()],
        }


# --------------------------------------------------------------------------
# python -m tests.rig
# --------------------------------------------------------------------------


def _print_yaml(rig: MailRig) -> None:
    print(f"dir: {rig.dir}")
    print(f"hosts: [{', '.join(HOSTS)}]")
    print(f"domain: {DOMAIN}")
    print(f"ca_file: {rig.ca_file}")
    print("ports:")
    for name, port in asdict(rig.ports).items():
        print(f"  {name}: {port}")
    print("users:")
    for addr in rig.users:
        print(f"  - {{login: {addr}, password: {rig.password(addr)}}}")


def _write_json(path: str, info: dict[str, object]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path)  # readers polling for the file never see it half-written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.rig", description="Run a Postfix+Dovecot mail rig until Ctrl-C/SIGTERM."
    )
    parser.add_argument("--users", type=int, default=5, help="number of users (default 5)")
    parser.add_argument("--print-json", metavar="PATH", help="write ports/CA/users as JSON to PATH")
    args = parser.parse_args(argv)
    signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        # Until sigwait below: unwind (stopping the servers) like Ctrl-C does.
        signal.signal(signum, signal.default_int_handler)
    started = time.monotonic()
    with MailRig(users=args.users) as rig:
        _print_yaml(rig)
        print(f"# started in {time.monotonic() - started:.2f}s; Ctrl-C or SIGTERM stops it", flush=True)
        if args.print_json:
            _write_json(args.print_json, rig.describe())
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        received = signal.sigwait(signals)
        print(f"# got {signal.Signals(received).name}, stopping", flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

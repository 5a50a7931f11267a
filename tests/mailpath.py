"""A realistic mail path for tests: submission Postfix -> MX Postfix with rspamd -> Dovecot with sieve.

The path a letter takes (everything on 127.0.0.1, free ports, one temp dir removed on stop)::

    client --SMTP AUTH + STARTTLS--> submission Postfix (the MailRig's: ports.submission/submissions)
        | milter: OpenDKIM signs mail from example.test (selector ``rig``, a key made at start)
        | relay_transport: smtp to [127.0.0.1]:mx_port, unauthenticated, as between two domains
        v
    MX Postfix (own instance, hostname mx.test)
        | milter: rspamd proxy worker in milter mode checks SPF, DKIM and DMARC against the
        |         loopback DNS server (tests/dnsserver.py) and adds Authentication-Results,
        |         X-Spamd-Result, X-Spam-Status, X-Rspamd-Action and, for spam, ``X-Spam: Yes``
        | unknown recipient: 550 5.1.1 at RCPT -> the submission Postfix bounces at once (DSN)
        v  LMTP
    Dovecot (the MailRig's) with a global sieve script: ``X-Spam: Yes`` -> the \\Junk folder

The DNS server publishes for example.test an SPF record (``ip4:127.0.0.1 -all``), the DKIM public key
at ``rig._domainkey.example.test``, a DMARC record (``p=reject``, strict alignment), an MX and A records.
rspamd asks only it; its network modules (RBL, SURBL, fuzzy, phishing feeds, ASN, DCC, remote
whitelists, freemail maps, ...) are off, redis is not used, greylisting is off.

Spam without a spam score: rspamd treats GTUBE patterns as a forced action. The standard GTUBE
(``GTUBE_REJECT``) is refused at the MX (554 5.7.1) and so comes back as a DSN; ``GTUBE_JUNK`` (rspamd's
"add header" variant, enabled here with ``enable_test_patterns``) is delivered with ``X-Spam: Yes`` and
filed into Junk. rspamd skips all other modules for a GTUBE letter, so it has no SPF/DKIM/DMARC
results; a letter whose body carries ``SPAM_MARK`` (a content rule of the rig's, score 10) is junk after
every check ran, with Authentication-Results and ``X-Spam-Status: Yes``.

``break_spf()``, ``remove_dkim_key()`` and ``restore()`` change what the DNS server publishes, and the
next letter submitted sees the change: SPF and DMARC records have TTL 0 (rspamd then caches nothing),
the DKIM key TTL 1 s, and remove_dkim_key() returns once rspamd's key cache has let go of it (at most
~2 s). With SPF broken DMARC still passes on the aligned DKIM signature;
with both broken it fails. rspamd enforces no DMARC policy here, so all of these reach the INBOX.

Usage (the ``mail_path`` fixture of tests/conftest.py is one such rig for the session)::

    with MailPath() as path:
        with smtplib.SMTP(path.host, path.ports.submission) as smtp:
            smtp.starttls(context=ssl.create_default_context(cafile=path.ca_file))
            smtp.login(path.mailbox, path.password(path.mailbox))
            smtp.sendmail(path.mailbox, [path.mailbox], letter)
        # IMAP on path.ports.imap (STARTTLS) or path.ports.imaps; the spam folder is path.junk_folder

Everything else of MailRig (users, ports, CA, logs) works as there; ``hold()`` holds the relay to
the MX. ``python -m tests.mailpath`` runs one in the foreground. Requires root and the Debian packages
of tests/rig.py plus rspamd, opendkim and dovecot-sieve (scripts/install-deps).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import grp
import math
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from tests.dnsserver import DNSServer, DNSThread, Record, txt
from tests.rig import (
    DOMAIN,
    HOSTNAME,
    OPENSSL,
    POSTFIX,
    START_TIMEOUT,
    MailRig,
    RigError,
    _run,
    _tail,
    free_ports,
    kill_postfix,
    port_open,
    postfix_master_pid,
    retry_if_port_taken,
    terminate,
    write_postfix_master_cf,
)

MX_HOSTNAME = "mx.test"
IMAP_HOSTNAME = "imap.test"  # Dovecot behind the MX
SELECTOR = "rig"
JUNK_FOLDER = "Junk"
SPAM_HEADER = "X-Spam"  # rspamd's proxy worker adds "X-Spam: Yes" for the "add header" action
# rspamd's GTUBE patterns (rspamd.com/doc/gtube_patterns.html): the standard one forces "reject";
# the one with Y forces "add header" but only with enable_test_patterns (rspamd 2.3 .. 3.7).
GTUBE_REJECT = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_JUNK = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# The rig's own content rule: a body with this scores SPAM_MARK_SCORE, between rspamd's add_header (6)
# and reject (15): junk after every check ran, so the letter carries Authentication-Results too.
SPAM_MARK = "MAILPATH-SPAM-TEST-LETTER"
SPAM_MARK_SCORE = 10.0
SPF_PASS = "v=spf1 ip4:127.0.0.1 -all"
SPF_BROKEN = "v=spf1 ip4:192.0.2.1 -all"  # TEST-NET-1: the letters' 127.0.0.1 is not allowed
DMARC = "v=DMARC1; p=reject; adkim=s; aspf=s"
RSPAMD = "/usr/bin/rspamd"
RSPAMD_CONF = "/etc/rspamd/rspamd.conf"
RSPAMD_USER = "_rspamd"
RSPAMD_TLDS = "/usr/share/rspamd/effective_tld_names.dat"
OPENDKIM = "/usr/sbin/opendkim"
SIEVEC = "/usr/bin/sievec"
DKIM_KEY_BITS = 2048
PATH_PORT_COUNT = 3  # MX, OpenDKIM, rspamd
DNS_TTL = 0  # rspamd's SPF library keeps no record with TTL 0 (min_cache_ttl = 0 below): asked anew each letter
# rspamd's DKIM module keeps a key for its TTL, and one of TTL 0 for ever: 1 s, and remove_dkim_key() waits it out.
DKIM_TTL = 1
CLOCK_MARGIN = 0.05

# rspamd modules that ask the network (DNS lists, feeds, remote maps) or need redis: all off.
RSPAMD_MODULES_OFF = (
    "antivirus",
    "arc",
    "asn",
    "bimi",
    "clickhouse",
    "dcc",
    "dkim_signing",
    "elastic",
    "emails",
    "external_services",
    "fuzzy_check",
    "greylist",
    "history_redis",
    "metadata_exporter",
    "metric_exporter",
    "multimap",
    "mx_check",
    "neural",
    "phishing",
    "ratelimit",
    "rbl",
    "replies",
    "reputation",
    "rspamd_update",
    "spamassassin",
    "surbl",
    "url_redirector",
    "whitelist",
)

_SIEVE = f"""\
require ["fileinto", "mailbox"];
# rspamd's verdict "add header": into Junk, the folder Dovecot gives the \\\\Junk special use (RFC 6154).
# (Pigeonhole 0.5.19 has no "special-use" extension, so the folder is named.)
if header :is "{SPAM_HEADER}" "Yes" {{
  fileinto :create "{JUNK_FOLDER}";
  stop;
}}
"""


class PathDNS:
    """What the loopback DNS server publishes for the mail path, with switches to break it."""

    def __init__(self, server: DNSServer, dkim_public_key: str) -> None:
        self.server = server
        self._dkim = f"v=DKIM1; k=rsa; p={dkim_public_key}"
        self.restore()

    @property
    def spec(self) -> str:
        """``127.0.0.1:port``, as the exporter's ``dns.servers`` and rspamd take it."""
        return self.server.spec

    def _txt(self, name: str, text: str) -> None:
        self.server.replace(name, [Record("TXT", txt(text), DNS_TTL)])

    def restore(self) -> None:
        """Publish the good records: SPF, DKIM key, DMARC, MX and A records."""
        self.server.replace(DOMAIN, [Record("TXT", txt(SPF_PASS), DNS_TTL), Record("MX", f"10 {MX_HOSTNAME}.", 300)])
        self.server.replace(self.dkim_name, [Record("TXT", txt(self._dkim), DKIM_TTL)])
        self._txt(f"_dmarc.{DOMAIN}", DMARC)
        for host in (HOSTNAME, MX_HOSTNAME, IMAP_HOSTNAME):  # HOSTNAME: the submission's HELO (SPF of DSNs)
            self.server.replace(host, [Record("A", "127.0.0.1", 300), Record("TXT", txt(SPF_PASS), DNS_TTL)])

    def break_spf(self) -> None:
        """SPF of example.test no longer allows 127.0.0.1: SPF fails, and with it DMARC unless DKIM aligns."""
        self.server.replace(DOMAIN, [Record("TXT", txt(SPF_BROKEN), DNS_TTL), Record("MX", f"10 {MX_HOSTNAME}.", 300)])

    @property
    def dkim_name(self) -> str:
        return f"{SELECTOR}._domainkey.{DOMAIN}"

    def remove_dkim_key(self) -> None:
        """No key at rig._domainkey.example.test: the signature cannot be verified.

        Returns once rspamd's DKIM key cache can no longer hold the key: it keeps a key for its TTL
        counted in whole seconds from the second of the letter that fetched it (at most ~2 s here).
        """
        self.server.remove(self.dkim_name)
        fetched = self.server.last_query.get(self.dkim_name)
        if fetched is not None:
            expired = math.floor(fetched) + DKIM_TTL + 1 + CLOCK_MARGIN
            # Not a guess at how long something takes: the cache's own expiry, computed from its inputs.
            time.sleep(max(0.0, expired - time.time()))


class MailPath(MailRig):
    """MailRig whose Postfix is a submission server relaying to an MX Postfix with rspamd (see module doc)."""

    gtube_junk = GTUBE_JUNK
    gtube_reject = GTUBE_REJECT
    spam_mark = SPAM_MARK
    junk_folder = JUNK_FOLDER
    spam_header = SPAM_HEADER
    selector = SELECTOR
    mx_hostname = MX_HOSTNAME
    imap_hostname = IMAP_HOSTNAME

    def __init__(self, users: int = 3) -> None:
        self.mx_port, self.opendkim_port, self.rspamd_port = free_ports(PATH_PORT_COUNT)
        super().__init__(users)
        self._dns_thread = DNSThread()
        self._dns: PathDNS | None = None
        self._mx_conf = self.dir / "mx" / "conf"
        self._mx_spool = self.dir / "mx" / "spool"
        self._mx_running = False
        self._rspamd_dir = self.dir / "rspamd"
        self._rspamd: subprocess.Popen[bytes] | None = None
        self._opendkim_dir = self.dir / "opendkim"
        self._opendkim: subprocess.Popen[bytes] | None = None
        self._sieve = self.dir / "dovecot" / "sieve" / "junk.sieve"

    # ---- public API -----------------------------------------------------------

    @property
    def dns(self) -> PathDNS:
        """The records rspamd checks against; ``dns.spec`` is the server's ``127.0.0.1:port``."""
        if self._dns is None:
            raise RigError("start() the MailPath first")
        return self._dns

    def break_spf(self) -> None:
        self.dns.break_spf()

    def remove_dkim_key(self) -> None:
        self.dns.remove_dkim_key()

    def restore(self) -> None:
        """Undo break_spf() and remove_dkim_key()."""
        self.dns.restore()

    @property
    def mailbox(self) -> str:
        """The first user: sender and recipient of the exporter's default letter."""
        return self.users[0]

    @property
    def unknown_recipient(self) -> str:
        """An address the MX rejects at RCPT (550 5.1.1), so the submission server bounces at once."""
        return f"nobody@{DOMAIN}"

    def add_users(self, names: Iterable[str], password: str | None = None, userdb_fields: str = "") -> list[str]:
        """As MailRig's; returns once the MX, too, accepts the last new user (its smtpd re-read the map)."""
        added = super().add_users(names, password, userdb_fields)
        if added and self._mx_running:
            _run([POSTFIX, "-c", str(self._mx_conf), "reload"], "postfix reload (MX)", self.logs)
            self.wait_for(
                lambda: self._smtp_accepts_rcpt(added[-1], self.mx_port), START_TIMEOUT, f"the MX to accept {added[-1]}"
            )
        return added

    def junk_maildir(self, user: str) -> Path:
        return self.maildir(user) / f".{JUNK_FOLDER}"

    def clear_mailbox(self, user: str) -> None:
        """Delete every message file in the user's INBOX and Junk folder (Dovecot copes)."""
        super().clear_mailbox(user)
        for sub in ("new", "cur"):
            folder = self.junk_maildir(user) / sub
            for path in folder.iterdir() if folder.is_dir() else ():
                path.unlink(missing_ok=True)

    def pids(self) -> dict[str, int]:
        """The running daemons' main PIDs, the MailRig's included (for tests of the cleanup)."""
        pids = {
            "rspamd": self._rspamd.pid if self._rspamd else None,
            "opendkim": self._opendkim.pid if self._opendkim else None,
            "dovecot": self._dovecot.pid if self._dovecot else None,
            "mx postfix": postfix_master_pid(self._mx_spool),
            "submission postfix": self._postfix_master_pid(),
        }
        return {name: pid for name, pid in pids.items() if pid is not None}

    def logs(self, lines: int = 60) -> str:
        parts = [super().logs(lines)]
        for name in ("mx-postfix.log", "rspamd.log", "opendkim.log"):
            parts.append(f"----- {name} (last {lines} lines) -----")
            parts.append(_tail(self._log_dir / name, lines))
        return "\n".join(parts)

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info.update(
            mx_port=self.mx_port,
            dns=self.dns.spec,
            mailbox=self.mailbox,
            unknown_recipient=self.unknown_recipient,
            junk_folder=JUNK_FOLDER,
            gtube_junk=GTUBE_JUNK,
        )
        return info

    # ---- lifecycle ------------------------------------------------------------

    def _prepare(self) -> None:
        super()._prepare()
        public_key = self._make_dkim_key()
        self._dns = PathDNS(self._dns_thread.start(), public_key)
        for sub in ("mx/conf", "opendkim", "dovecot/sieve"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._mx_spool.mkdir(mode=0o755)
        data = self.dir / "mx" / "data"
        data.mkdir(mode=0o700)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)
        rspamd_uid, rspamd_gid = pwd.getpwnam(RSPAMD_USER).pw_uid, grp.getgrnam(RSPAMD_USER).gr_gid
        for sub in ("db", "run"):
            (self._rspamd_dir / sub).mkdir(parents=True)
            os.chown(self._rspamd_dir / sub, rspamd_uid, rspamd_gid)
        (self._log_dir / "rspamd.log").touch()
        os.chown(self._log_dir / "rspamd.log", rspamd_uid, rspamd_gid)
        self._sieve.write_text(_SIEVE)
        self._write_path_configs()
        _run([SIEVEC, "-c", str(self._dovecot_conf), str(self._sieve)], "sievec", self.logs)

    def _write_server_configs(self) -> None:
        super()._write_server_configs()
        if self._dns is not None:
            self._write_path_configs()

    def _write_path_configs(self) -> None:
        self._write_mx_configs()
        self._write_rspamd_configs()
        self._write_opendkim_config()

    def _start_servers(self, attempts: int = 3) -> None:
        """Start rspamd, OpenDKIM and the MX (new ports if one was taken meanwhile), then the MailRig's."""
        retry_if_port_taken(self._start_path, self._move_path, attempts)
        super()._start_servers(attempts)

    def _start_path(self) -> None:
        # rspamd reads its rules for a second or two: it starts first and is waited for last.
        if self._rspamd is None:
            self._rspamd = self._spawn(self._rspamd_command(), "rspamd.stderr")
        if self._opendkim is None:
            command = [OPENDKIM, "-f", "-x", str(self._opendkim_dir / "opendkim.conf")]
            self._opendkim = self._spawn(command, "opendkim.log")
        self._start_mx()
        for proc, port, what in (
            (self._opendkim, self.opendkim_port, "OpenDKIM"),
            (self._rspamd, self.rspamd_port, "rspamd"),
        ):
            self.wait_for(functools.partial(self._child_listens, proc, port, what), START_TIMEOUT, f"{what} to listen")

    def _move_path(self) -> None:
        self._stop_path()
        self.mx_port, self.opendkim_port, self.rspamd_port = free_ports(PATH_PORT_COUNT)
        self._write_path_configs()

    def _stop_path(self) -> None:
        self._stop_mx()
        if self._rspamd is not None:
            terminate(self._rspamd)
        if self._opendkim is not None:
            # libmilter looks at its stop flag only every 5 s after SIGTERM; OpenDKIM keeps no state here.
            os.killpg(self._opendkim.pid, signal.SIGKILL)
            self._opendkim.wait()
        self._rspamd = self._opendkim = None

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """A daemon in the foreground, in a session of its own (a terminal's Ctrl-C must not reach it)."""
        with (self._log_dir / log_name).open("ab") as log:
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def stop(self) -> None:
        if self._removed:
            return
        errors: list[str] = []
        self._dns = None
        for stopper in (self._stop_path, self._dns_thread.stop):
            try:
                stopper()
            except RigError as exc:
                errors.append(str(exc))
        try:
            super().stop()
        except RigError as exc:
            errors.append(str(exc))
        if errors:
            raise RigError("\n".join(errors))

    def hold(self) -> None:
        """Keep new mail in the submission Postfix's queue (defer the relay to the MX)."""
        self._set_defer_transports("relay")

    # ---- the submission Postfix (the MailRig's) ------------------------------------

    def _postfix_main(self) -> dict[str, str]:
        main = super()._postfix_main()
        main.update(
            {
                # example.test is someone else's here: relay every recipient there; the MX decides.
                "virtual_mailbox_domains": "",
                "relay_domains": DOMAIN,
                "relay_recipient_maps": "",
                "relay_transport": f"relay:[127.0.0.1]:{self.mx_port}",
                "smtp_tls_security_level": "may",
                "smtp_tls_CAfile": str(self.ca_file),
                "smtpd_milters": f"inet:127.0.0.1:{self.opendkim_port}",
                "milter_default_action": "tempfail",
            }
        )
        return main

    # ---- the MX Postfix -----------------------------------------------------------

    def _mx_main(self) -> dict[str, str]:
        main = MailRig._postfix_main(self)  # the MailRig's own: virtual domain, LMTP to Dovecot
        main.update(
            {
                "queue_directory": str(self._mx_spool),
                "data_directory": str(self.dir / "mx" / "data"),
                "syslog_name": f"{main['syslog_name']}-mx",
                "maillog_file": str(self._log_dir / "mx-postfix.log"),
                "myhostname": MX_HOSTNAME,
                "inet_interfaces": "127.0.0.1",
                "inet_protocols": "ipv4",
                "smtpd_banner": "$myhostname ESMTP mail path MX",
                "smtpd_relay_restrictions": "reject_unauth_destination",
                "smtpd_milters": f"inet:127.0.0.1:{self.rspamd_port}",
                "milter_default_action": "tempfail",
                "milter_protocol": "6",
                "milter_mail_macros": "i {mail_addr} {client_addr} {client_name} {auth_authen}",
                "defer_transports": "",
            }
        )
        return main

    def _write_mx_configs(self) -> None:
        path = self._mx_conf / "main.cf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in self._mx_main().items()))
        write_postfix_master_cf(self._mx_conf / "master.cf", [(f"{self.mx_port} inet n - n - - smtpd", [])])

    def _start_mx(self) -> None:
        if self._mx_running:
            return
        _run([POSTFIX, "-c", str(self._mx_conf), "start"], "postfix start (MX)", self.logs)
        self._mx_running = True
        self.wait_for(lambda: port_open(self.host, self.mx_port), START_TIMEOUT, "the MX Postfix to listen")

    def _stop_mx(self) -> None:
        if self._mx_running:
            self._mx_running = False
            kill_postfix(self._mx_spool)

    # ---- OpenDKIM: signs at submission ------------------------------------------------

    def _make_dkim_key(self) -> str:
        """A fresh RSA key for OpenDKIM; returns the base64 DER public key for the DNS record."""
        key = self._opendkim_dir / f"{SELECTOR}.private"
        key.parent.mkdir(parents=True, exist_ok=True)
        _run(
            [OPENSSL, "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{DKIM_KEY_BITS}", "-out", str(key)],
            "openssl genpkey (DKIM)",
        )
        key.chmod(0o600)
        der = subprocess.run(
            [OPENSSL, "pkey", "-in", str(key), "-pubout", "-outform", "DER"], capture_output=True, check=True
        ).stdout
        return base64.b64encode(der).decode()

    def _write_opendkim_config(self) -> None:
        d = self._opendkim_dir
        (d / "opendkim.conf").write_text(
            f"""\
Mode s
Domain {DOMAIN}
Selector {SELECTOR}
KeyFile {d / f"{SELECTOR}.private"}
Socket inet:{self.opendkim_port}@127.0.0.1
PidFile {d / "opendkim.pid"}
Canonicalization relaxed/simple
SignatureAlgorithm rsa-sha256
InternalHosts 127.0.0.1
Syslog no
LogWhy yes
RequireSafeKeys false
"""
        )

    # ---- rspamd: checks at the MX --------------------------------------------------------

    def _rspamd_files(self) -> dict[str, str]:
        """local.d/ and override.d/ files over Debian's /etc/rspamd."""
        files = {f"local.d/{module}.conf": "enabled = false;\n" for module in RSPAMD_MODULES_OFF}
        check_local = "check_local = true;\ncheck_authed = true;\n"  # the MX sees 127.0.0.1
        files.update(
            {
                "local.d/options.inc": f"""\
filters = "chartable,dkim,regexp";
url_tld = "{self._rspamd_dir / "tlds.dat"}";
local_addrs = [];
disable_hyperscan = true;
enable_test_patterns = true;
dns {{
  nameserver = ["{self.dns.spec}"];
  timeout = 1s;
  retransmits = 2;
}}
""",
                "override.d/worker-proxy.inc": f"""\
bind_socket = "127.0.0.1:{self.rspamd_port}";
milter = yes;
timeout = 120s;
count = 1;
spam_header = "{SPAM_HEADER}";
upstream "local" {{
  default = yes;
  self_scan = yes;
}}
""",
                "override.d/worker-normal.inc": "enabled = false;\n",
                "override.d/worker-controller.inc": "enabled = false;\n",
                "override.d/logging.inc": 'type = "file";\nfilename = "$LOGDIR/rspamd.log";\nlevel = "info";\n',
                # The two modules kept that name a remote map: the copy Debian ships instead.
                "override.d/mime_types.conf": 'file = ["${CONFDIR}/maps.d/mime_types.inc"];\n',
                "override.d/mid.conf": 'source {\n  url = ["${CONFDIR}/maps.d/mid.inc"];\n}\n',
                "rspamd.local.lua": f"""\
config['regexp']['MAILPATH_SPAM_MARK'] = {{
  re = '/{SPAM_MARK}/{{sa_body}}',
  score = {SPAM_MARK_SCORE},
  description = 'The mail path test rig: a letter marked as spam',
  group = 'mailpath',
}}
""",
                "local.d/actions.conf": "greylist = null;\n",
                "local.d/spf.conf": check_local + "min_cache_ttl = 0;\n",
                "local.d/dkim.conf": check_local,
                "local.d/dmarc.conf": check_local,
                "local.d/milter_headers.conf": """\
use = ["authentication-results", "x-spamd-result", "x-spam-status", "x-rspamd-action", "x-rspamd-queue-id"];
skip_local = false;
skip_authenticated = false;
""",
            }
        )
        return files

    def _write_rspamd_configs(self) -> None:
        # The public suffix list's top-level names alone: rspamd compiles its 9,600 suffixes for ~6 s at
        # every start (no cache in a fresh DBDIR); the ~1,500 top-level ones still find every URL's host.
        suffixes = Path(RSPAMD_TLDS).read_text().splitlines()
        tlds = [line for line in suffixes if line and not line.startswith("//") and "." not in line]
        (self._rspamd_dir / "tlds.dat").write_text("\n".join(["test", *tlds]) + "\n")
        for name, text in self._rspamd_files().items():
            path = self._rspamd_dir / "conf" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def _rspamd_command(self) -> list[str]:
        variables = {
            "LOCAL_CONFDIR": self._rspamd_dir / "conf",
            "DBDIR": self._rspamd_dir / "db",
            "RUNDIR": self._rspamd_dir / "run",
            "LOGDIR": self._log_dir,
        }
        command = [RSPAMD, "-f", "-c", RSPAMD_CONF, "-u", RSPAMD_USER, "-g", RSPAMD_USER]
        for name, value in variables.items():
            command.append(f"--var={name}={value}")
        return command

    def _child_listens(self, proc: subprocess.Popen[bytes] | None, port: int, what: str) -> bool:
        assert proc is not None
        if proc.poll() is not None:
            raise RigError(f"{what} exited with {proc.returncode}\n{self.logs()}")
        return port_open(self.host, port)

    # ---- Dovecot: sieve and the Junk folder ----------------------------------------------

    def _dovecot_conf_text(self) -> str:
        return (
            super()._dovecot_conf_text()
            + f"""\
namespace inbox {{
  mailbox {JUNK_FOLDER} {{
    special_use = \\Junk
    auto = subscribe
  }}
}}
# The mailbox server's name in the Received header LMTP adds (else the machine's host name).
hostname = {IMAP_HOSTNAME}
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
}}
plugin {{
  sieve_before = {self._sieve}
}}
"""
        )


def main() -> int:
    """Run a MailPath until Ctrl-C or SIGTERM; print what a client needs."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    started = time.monotonic()
    with MailPath() as path:
        for key, value in path.describe().items():
            print(f"{key}: {value}")
        print(f"# started in {time.monotonic() - started:.2f}s; Ctrl-C or SIGTERM stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())

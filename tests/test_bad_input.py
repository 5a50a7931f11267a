"""Bad input is one clear line: never a traceback, a hang, a silent stop, or a password in the output.

Values (NaN, infinities, huge numbers, odd names), files (devices, FIFOs, huge, non-UTF-8), YAML
(deep, alias bombs, cycles), the signing key's mode, and reloads that fail in any way, checked on a
real exporter subprocess (its task points at a closed loopback port: these tests need its reload
path, not a mail server).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import yamlfile
from exporter.config.load import load_config, parse_config
from exporter.config.model import ConfigError
from exporter.letter import keys
from exporter.letter.token import Signer
from exporter.service import Exporter
from tests.rig import free_ports, wait_for

CANARY = "Pa55-bad-input-canary"
HANG_GUARD = 60.0  # seconds: only to turn a hang of the old code into a failure, never reached when it works
MEMORY_GUARD = 1 << 30  # address-space limit of --config.check children: /dev/zero read whole must not OOM the host
RELOAD_METRIC = "mail_roundtrip_exporter_config_last_reload_successful"


def task(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "t1",
        "destination": "probe@example.test",
        "smtp": {"host": "127.0.0.1", "port": 1, "security": "none"},
        "incoming": {
            "protocol": "imap",
            "host": "127.0.0.1",
            "port": 1,
            "security": "none",
            "user": "u",
            "password": CANARY,
        },
    }
    entry.update(overrides)
    return entry


def document(device: dict[str, Any] | None = None, **task_overrides: Any) -> dict[str, Any]:
    return {"devices": [{"name": "d1", "interval": "1h", **(device or {}), "tasks": [task(**task_overrides)]}]}


def with_incoming(**changes: Any) -> dict[str, Any]:
    data = document()
    data["devices"][0]["tasks"][0]["incoming"].update(changes)
    return data


def error_of(data: Any, base_dir: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yml", base_dir)
    return one_line(str(info.value))


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and CANARY not in message, message
    return message


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return one_line(str(info.value))


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_GUARD, MEMORY_GUARD))


def config_check(path: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check-secrets", "--config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=False,
        preexec_fn=_limit_memory,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    one_line(result.stderr)
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


# --- values: the examples through --config.check ----------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "field", "problem"),
    [
        ("interval: .nan", "devices[0].interval", "must be a finite duration"),
        ("interval: .inf", "devices[0].interval", "must be a finite duration"),
        ("interval: 1e308", "devices[0].interval", "must be a duration like"),  # a string to YAML 1.1
        ("interval: 1.0e+308", "devices[0].interval", "must be at most 24h"),
        ("interval: 99999999999999999h", "devices[0].interval", "must be at most 24h"),
        ("email_timeout: .nan", "devices[0].tasks[0].email_timeout", "must be a finite duration"),
        ("completion_timeout: .nan", "devices[0].tasks[0].completion_timeout", "must be a finite duration"),
        ('host: "[::1"', "devices[0].tasks[0].incoming.host", "'[::1' is not host[:port]"),
        ('mailbox: ""', "devices[0].tasks[0].incoming.mailbox", "must not be empty"),
    ],
)
def test_config_check_refuses_the_reported_values(tmp_path: Path, yaml_text: str, field: str, problem: str) -> None:
    key, _, value = yaml_text.partition(": ")
    data = document()
    target = {
        "interval": data["devices"][0],
        "host": data["devices"][0]["tasks"][0]["incoming"],
        "mailbox": data["devices"][0]["tasks"][0]["incoming"],
    }.get(key, data["devices"][0]["tasks"][0])
    target[key] = f"@@{key}@@"
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(data).replace(f"'@@{key}@@'", value))
    assert_refused(config_check(path), f"{path}: {field}: {problem}")


# --- values: neighbours, in process ------------------------------------------------------------------

DURATION_FIELDS = {
    "interval": lambda v: document({"interval": v}),
    "completion_timeout": lambda v: document(completion_timeout=v),
    "email_timeout": lambda v: document(email_timeout=v),
    "poll_interval": lambda v: with_incoming(poll_interval=v),
    "dns.timeout": lambda v: document({"dns": {"timeout": v}}),
}


@pytest.mark.parametrize("field", DURATION_FIELDS)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (float("nan"), "must be a finite duration"),
        (float("inf"), "must be a finite duration"),
        (float("-inf"), "must be a finite duration"),
        (10**400, "must be a finite duration"),  # too large for a float at all
        (0, "must be longer than zero"),
        (-5, "must be longer than zero"),
        ("0s", "must be longer than zero"),
        ("1e999s", "must be a duration like"),
        ("nan", "must be a duration like"),
        (1e300, "must be at most"),
        ("99999999999999999h", "must be at most"),
        ("25h", "must be at most"),
        ("1ms", "must be at least"),
        ([1, [2]], "must be a duration like"),
    ],
)
def test_every_duration_is_finite_and_bounded(field: str, value: Any, problem: str) -> None:
    message = error_of(DURATION_FIELDS[field](value))
    assert f".{field.split('.')[-1]}: " in message and problem in message, message


@pytest.mark.parametrize(
    ("field", "shortest", "longest"),
    [
        ("interval", "1s", "24h"),
        ("completion_timeout", "100ms", "1h"),
        ("email_timeout", "1s", "1h"),
        ("poll_interval", "100ms", "1h"),
        ("dns.timeout", "10ms", "10m"),
    ],
)
def test_duration_bounds_are_inclusive(field: str, shortest: str, longest: str) -> None:
    for edge in (shortest, longest):
        parse_config(DURATION_FIELDS[field](edge))


@pytest.mark.parametrize(
    ("data", "where", "problem"),
    [
        (document(max_in_flight=0), "max_in_flight", "must be an integer 1..100"),
        (document(max_in_flight=101), "max_in_flight", "must be an integer 1..100"),
        (document(max_in_flight=10**30), "max_in_flight", "must be an integer 1..100"),
        (document(max_in_flight=True), "max_in_flight", "must be an integer 1..100"),
        (document(max_in_flight=float("nan")), "max_in_flight", "must be an integer 1..100"),
        (with_incoming(persistent=True, fresh_login_every=0), "incoming.fresh_login_every", "an integer 1..1000"),
        (with_incoming(persistent=True, fresh_login_every=1001), "incoming.fresh_login_every", "an integer 1..1000"),
        (with_incoming(persistent=True, fresh_login_every=True), "incoming.fresh_login_every", "an integer 1..1000"),
        (with_incoming(fresh_login_every=5), "incoming.fresh_login_every", "needs persistent: true"),
        (with_incoming(persistent="maybe"), "incoming.persistent", "must be true/false"),
        (document(smtp={"host": "h", "security": "none", "fresh_login_every": 5}), "smtp.fresh_login_every", "needs"),
        (document(smtp={"host": "h", "persistent": True, "fresh_login_every": 0}), "smtp.fresh_login_every", "1..1000"),
        (document(smtp={"mx": True, "persistent": True}), "smtp.persistent", "anew for every letter"),
        (with_incoming(protocol="pop3", port=995, persistent=True), "incoming.persistent", "POP3 cannot keep"),
        (with_incoming(mailbox=" "), "incoming.mailbox", "must not be empty"),
        (with_incoming(mailbox="IN\x07BOX"), "incoming.mailbox", "contains a control character"),
        (with_incoming(mailbox="INBOX\x7f"), "incoming.mailbox", "contains a control character"),
        (with_incoming(mailbox="INBOX\x1b[2J"), "incoming.mailbox", "contains a control character"),
        (with_incoming(mailbox="A" * 256), "incoming.mailbox", "must be at most 255 characters"),
        (with_incoming(mailbox="INBOX\n"), "incoming.mailbox", "must not contain CR, LF or NUL"),
        (with_incoming(host="[::1"), "incoming.host", "is not host[:port]"),
        (with_incoming(host="[::1]x"), "incoming.host", "is not host[:port]"),
        (with_incoming(host="[]"), "incoming.host", "is not a host name"),
        (with_incoming(host="a" * 254), "incoming.host", "is not a host name"),
        (with_incoming(port=65536), "incoming.port", "must be a port number 1..65535"),
        (with_incoming(port=10**30), "incoming.port", "must be a port number 1..65535"),
        (with_incoming(user=""), "incoming.user", "must not be empty"),
        (with_incoming(user="u" * 256), "incoming.user", "must be at most 255 characters"),
        (with_incoming(password=CANARY * 60), "incoming.password", "must be at most 1024 characters"),
        (document(destination="a" * 250 + "@b.test"), "destination", "must be at most 254 characters"),
        (document(name="n" * 64), "tasks[0].name", "is not a valid name"),
        (document({"dns": {"servers": ["[::1"]}}), "dns.servers[0]", "is not host[:port]"),
        (
            with_incoming(password=None, password_env="X" * 5000),
            "incoming.password_env",
            "must be at most 4096 characters",
        ),
    ],
)
def test_other_values_are_bounded(data: dict[str, Any], where: str, problem: str) -> None:
    message = error_of(data)
    assert f".{where}: " in message and problem in message, message
    assert len(message) < 300, message


def test_values_inside_bounds_still_load() -> None:
    config = parse_config(
        with_incoming(mailbox="Sent Items/Ünicode", host="[::1]:143", port=None, user="u" * 255, password="p" * 1024)
    )
    incoming = config.tasks()[0][1].incoming
    assert (incoming.mailbox, incoming.server.host, incoming.server.port) == ("Sent Items/Ünicode", "::1", 143)


# --- files: password_file, ca_file, the config file itself -----------------------------------------


def _fifo(directory: Path) -> Path:
    path = directory / "fifo"
    os.mkfifo(path)
    return path


def _symlink_to_zero(directory: Path) -> Path:
    path = directory / "zero-link"
    path.symlink_to("/dev/zero")
    return path


SPECIAL_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "/dev/zero": (lambda _: Path("/dev/zero"), "is a character device, not a regular file"),
    "symlink to /dev/zero": (_symlink_to_zero, "is a character device, not a regular file"),
    "FIFO": (_fifo, "is a FIFO, not a regular file"),
    "directory": (lambda d: d, "is a directory, not a regular file"),
}


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_password_file_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    make, problem = SPECIAL_FILES[kind]
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(with_incoming(password=None, password_file=str(make(tmp_path)))))
    assert_refused(config_check(path), "incoming.password_file: cannot read", problem)


@pytest.mark.parametrize("kind", SPECIAL_FILES)
def test_config_file_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    make, problem = SPECIAL_FILES[kind]
    special = make(tmp_path)
    assert_refused(config_check(special), f"{special}: cannot read: {problem}")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"x" * 4097, "is larger than 4 KiB"),
        (b"caf\xe9-" + CANARY.encode(), "is not UTF-8: invalid byte at line 1, column 4"),
        (CANARY.encode() + b"\nsecond line\n", "the password must not contain CR, LF or NUL"),
        (CANARY.encode() + b"\0", "the password must not contain CR, LF or NUL"),
    ],
)
def test_password_file_content_is_checked_without_showing_it(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "pw").write_bytes(content)
    message = error_of(with_incoming(password=None, password_file="pw"), tmp_path)
    assert ".incoming.password_file: " in message and problem in message, message
    assert "second" not in message, message


def test_password_file_at_the_size_limit_loads(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("p" * 1024 + "\n")
    config = parse_config(with_incoming(password=None, password_file="pw"), base_dir=tmp_path)
    assert config.tasks()[0][1].incoming.server.password is not None


def _self_signed(directory: Path) -> Path:
    cert = directory / "ca.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            str(directory / "ca.key"),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a certificate\n", "is not a PEM certificate bundle: no certificate or crl found"),
        (b"", "is not a PEM certificate bundle"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "is not a PEM certificate bundle"),
        (b"\x00" * (1024 * 1024 + 1), "is larger than 1 MiB"),
    ],
)
def test_ca_file_must_hold_a_certificate(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "ca.pem").write_bytes(content)
    message = error_of(with_incoming(ca_file="ca.pem"), tmp_path)
    assert ".incoming.ca_file: file " in message and problem in message, message


@pytest.mark.parametrize("kind", ["/dev/zero", "FIFO"])
def test_ca_file_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    make, problem = SPECIAL_FILES[kind]
    message = error_of(with_incoming(ca_file=str(make(tmp_path))), tmp_path)
    assert ".incoming.ca_file: file " in message and problem in message, message


def test_a_real_ca_file_loads(tmp_path: Path) -> None:
    cert = _self_signed(tmp_path)
    assert parse_config(with_incoming(ca_file=str(cert))).tasks()[0][1].incoming.server.tls.ca_file == str(cert)


def test_non_utf8_config_names_the_position_never_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    text = yaml.safe_dump(document())
    path.write_bytes(b"# caf\xe9 au lait\n" + text.encode())
    assert_refused(config_check(path), f"{path}: cannot read: is not UTF-8: invalid byte at line 1, column 6")


def test_config_file_over_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document()) + "#" * (2 * 1024 * 1024))
    assert load_error(path) == f"{path}: cannot read: is larger than 2 MiB"


# --- YAML: depth, alias bombs, cycles ---------------------------------------------------------------


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """Billion laughs, as the interval: quoting it in an error message would take for ever."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    device = {"name": "d1", "interval": "@@", "tasks": [task()]}
    devices = yaml.safe_dump([device], default_flow_style=True).replace("'@@'", f"*a{levels - 1}")
    return "\n".join(lines) + f"\ndevices: {devices}\n"


def _wide_bomb(size: int = 90_000) -> str:
    """~90 KB: devices of tasks of aliases, each level multiplying; the config walker reaches all of it."""
    task_yaml = yaml.safe_dump(task(), default_flow_style=True).strip()
    tasks = ",".join(["*t"] * 3000)
    devices = ",".join(["*d"] * ((size - len(tasks)) // 3))
    return f"t: &t {task_yaml}\nd: &d {{name: d, tasks: [{tasks}]}}\ndevices: [{devices}]\n"


def _merge_bomb() -> str:
    """Merge keys copy what they merge: each level multiplies the mapping by 4."""
    lines = ["m0: &m0 {k: 1}"] + [
        f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 4)}], k{i}: 1}}" for i in range(1, 20)
    ]
    return "\n".join(lines) + "\ndevices: []\n"


YAML_CASES = {
    "flow nested 100,000 deep": ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", "nesting depth"),
    "flow nested 100 deep": ("a: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 64 levels"),
    "block nested 100 deep": (
        "".join("  " * i + "- \n" for i in range(99)) + "  " * 99 + "- x\n",
        "nested deeper than 64 levels",
    ),
    "sequences 100,000 deep": ("- " * 100_000 + "x\n", "nesting depth"),
    "alias bomb": (_alias_bomb(), "more than 200000 values once aliases are expanded"),
    "90 KB alias bomb": (_wide_bomb(), "more than 200000 values once aliases are expanded"),
    "merge-key bomb": (_merge_bomb(), "more than 200000 values once aliases are expanded"),
    "alias inside itself": ("devices: &d [*d]\n", "an alias refers to a node that contains it"),
    "mapping inside itself": ("devices: &d [{name: x, tasks: *d}]\n", "an alias refers to a node that contains it"),
    "control character": (f"x: {CANARY}\x07\n", "a control character is not allowed in YAML"),
}


@pytest.mark.parametrize("case", YAML_CASES)
def test_hostile_yaml_is_one_line(tmp_path: Path, case: str) -> None:
    text, problem = YAML_CASES[case]
    path = tmp_path / "config.yml"
    path.write_text(text)
    result = config_check(path)  # a subprocess: a hang or a crash of the old code fails, not stalls, the run
    assert_refused(result, f"{path}: line ", problem)
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("value", ["1" + "0" * 5000, "2024-13-45"])
def test_yaml_values_python_cannot_build(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document()).replace("interval: 1h", f"interval: {value}"))
    assert_refused(config_check(path), f"{path}: a number, date or tagged value cannot be converted")


@pytest.mark.parametrize("text", ["!!int", "x: !!int ''", "x: !!float nope"])
def test_yaml_tags_python_cannot_build(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(text + "\n")
    assert load_error(path) == f"{path}: a number, date or tagged value cannot be converted"


@pytest.mark.parametrize(
    "case",
    [
        "flow nested 100 deep",
        "block nested 100 deep",
        "alias bomb",
        "90 KB alias bomb",
        "merge-key bomb",
        "alias inside itself",
    ],
)
def test_hostile_yaml_without_libyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """The pure-Python loader (PyYAML without libyaml) is bounded the same way."""
    monkeypatch.setattr(yamlfile, "_Loader", yaml.SafeLoader)
    text, problem = YAML_CASES[case]
    path = tmp_path / "config.yml"
    path.write_text(text)
    assert problem in load_error(path)


def test_python_loader_recursion_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlfile, "_Loader", yaml.SafeLoader)
    path = tmp_path / "config.yml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert load_error(path) == f"{path}: nested deeper than 64 levels"


def test_anchors_within_bounds_still_work(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    first = yaml.safe_dump(task(), default_flow_style=True).strip()
    path.write_text(f"devices:\n- name: d1\n  tasks:\n  - &first {first}\n  - <<: *first\n    name: t2\n")
    assert [t.name for _, t in load_config(path).tasks()] == ["t1", "t2"]


# --- the signing key --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_signing_key_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "signing.key"
    path.write_text("ab" * 32 + "\n")
    path.chmod(mode)
    with pytest.raises(keys.SigningKeyError) as info:
        keys.load_or_create(path)
    assert str(info.value) == (
        f"{path}: the signing key is open to group or others (mode {mode:04o}); make it private with chmod 600"
    )


def test_signing_key_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "signing.key"
    old = os.umask(0)
    try:
        key = keys.load_or_create(path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.load_or_create(path) == key


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"ab" * 5000, "is larger than 4 KiB"),
        (b"\xe9" + b"ab" * 32, "is not UTF-8: invalid byte at line 1, column 1"),
        (b"zz" * 32, "non-hexadecimal number found"),
    ],
)
def test_bad_signing_key_file_is_one_line(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(keys.SigningKeyError, match=problem):
        keys.load_or_create(path)


@pytest.mark.parametrize("target", ["/dev/zero", "missing"])
def test_signing_key_symlinked_elsewhere_is_one_line(tmp_path: Path, target: str) -> None:
    path = tmp_path / "signing.key"
    path.symlink_to(target if target.startswith("/") else tmp_path / target)
    with pytest.raises(keys.SigningKeyError, match="signing key"):
        keys.load_or_create(path)


# --- reload: in process, an unexpected exception ------------------------------------------------------


async def test_any_reload_failure_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(document()))
    exporter = Exporter(path, load_config(path), Signer(b"k" * 32))

    def broken(_: Path) -> None:
        raise RuntimeError(f"a bug that quotes the file: password: {CANARY}")

    monkeypatch.setattr("exporter.service.load_config", broken)
    lost: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: lost.append(context))
    caplog.set_level(logging.INFO, logger="exporter")
    exporter._reload_on_signal()  # what SIGHUP does
    signalled = set(exporter._signal_reloads)
    error = await exporter.reload()  # what POST /-/reload does
    await asyncio.gather(*signalled)
    assert error is not None and one_line(error).startswith(f"{path}: unexpected RuntimeError at ")
    assert exporter.reload_status.successful is False
    failures = [r for r in caplog.records if r.getMessage() == "config reload failed"]
    assert len(failures) == 2 and all(CANARY not in str(vars(r)) for r in failures)
    assert not lost


# --- reload: a real exporter ------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    config: Path
    output: Path  # a file, not a pipe: nobody reads a pipe while the test runs, and a full one would block

    def fetch(self, path: str, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def reload_metric(self) -> float | None:
        for family in text_string_to_metric_families(self.fetch("/metrics")[1]):
            for sample in family.samples:
                if sample.name == RELOAD_METRIC:
                    return float(sample.value)
        return None

    def answers(self) -> bool:
        try:
            return self.fetch("/-/ready")[0] == 200
        except OSError:
            return False


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(document()))
    port = free_ports(1)[0]
    output = tmp_path / "exporter.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                "--config.file",
                str(config),
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--signing.key-file",
                str(tmp_path / "key"),
                "--log.level",
                "debug",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    running = Served(process, f"http://127.0.0.1:{port}", config, output)
    try:
        wait_for(running.answers, 30, "the exporter to answer")
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _bad_configs(directory: Path) -> dict[str, tuple[bytes, str]]:
    """What each bad file holds, and the line the exporter must answer with."""
    good = yaml.safe_dump(document()).encode()
    (directory / "latin1-pw").write_bytes(b"caf\xe9-" + CANARY.encode())
    password_file = yaml.safe_dump(with_incoming(password=None, password_file="latin1-pw")).encode()
    return {
        "Latin-1 comment": (b"# caf\xe9\n" + good, "cannot read: is not UTF-8: invalid byte at line 1, column 6"),
        "Latin-1 password_file": (
            password_file,
            "cannot read '" + str(directory / "latin1-pw") + "': is not UTF-8: invalid byte at line 1, column 4",
        ),
        "alias bomb": (_wide_bomb().encode(), "more than 200000 values once aliases are expanded"),
        "nested 100,000 deep": (b"a: " + b"[" * 100_000 + b"]" * 100_000, "nesting depth"),
        "interval .nan": (good.replace(b"interval: 1h", b"interval: .nan"), "interval: must be a finite duration"),
    }


def test_failed_reloads_are_one_line_metric_zero_and_500(served: Served, tmp_path: Path) -> None:
    assert served.reload_metric() == 1.0
    good = served.config.read_bytes()
    for case, (content, line) in _bad_configs(tmp_path).items():
        served.config.write_bytes(content)
        served.process.send_signal(signal.SIGHUP)
        wait_for(lambda: served.reload_metric() == 0.0, 30, f"the metric to show the failed reload ({case})")
        status, body = served.fetch("/-/reload", method="POST")
        assert status == 500 and body.startswith(f"reload failed: {served.config}: ") and line in body, (case, body)
        one_line(body)
        served.config.write_bytes(good)  # and back: the next case starts from a successful reload
        served.process.send_signal(signal.SIGHUP)
        wait_for(lambda: served.reload_metric() == 1.0, 30, f"the good reload after {case}")
    served.process.send_signal(signal.SIGTERM)
    served.process.wait(timeout=30)
    output = served.output.read_text(errors="replace")
    assert served.process.returncode == 0, output
    for banned in ("Traceback", "Task exception was never retrieved", CANARY, "caf"):
        assert banned not in output, f"{banned!r} in the exporter's output:\n{output}"
    failures = [line for line in output.splitlines() if "config reload failed" in line]
    assert len(failures) == 2 * len(_bad_configs(tmp_path)), output  # one per SIGHUP and one per POST

"""--web.config.file: TLS, client certificates, basic auth, headers, slow clients and bad files.

The exporter runs as a subprocess with a task pointing at a closed loopback port (interval 1h): these
tests need its web server, not a working mail server.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter import cli
from exporter.web.guard import BasicAuth
from exporter.web.webconfig import load_web_config
from tests.rig import free_ports, wait_for
from tests.tasks import unreachable_task

USER, PASSWORD = "prometheus", "scrape-pw-1"
# Cost 4 (the minimum): the tests check behaviour, not bcrypt's strength, and stay fast.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
STARTUP_TIMEOUT = 30.0


# --- certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PKI:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate from a CA the server does not trust
    rogue_key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
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
        f"/CN={name}",
        "-keyout",
        key,
        "-out",
        cert,
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    return cert, key


def _issue(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (directory / f"{name}{suffix}" for suffix in (".crt", ".key", ".csr", ".ext"))
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        key,
        "-out",
        csr,
    )
    ext.write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        csr,
        "-CA",
        ca[0],
        "-CAkey",
        ca[1],
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        ext,
        "-out",
        cert,
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca, rogue_ca = _ca(directory, "test-ca"), _ca(directory, "rogue-ca")
    server = _issue(directory, "server", ca, "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    client = _issue(directory, "client", ca, "extendedKeyUsage=clientAuth\n")
    rogue = _issue(directory, "rogue", rogue_ca, "extendedKeyUsage=clientAuth\n")
    return PKI(ca[0], *server, *client, *rogue)


# --- the exporter as a process -----------------------------------------------------------------------


def write_config(directory: Path) -> Path:
    task = unreachable_task(free_ports(1)[0])
    path = directory / "config.yml"
    path.write_text(yaml.safe_dump({"devices": [{"name": "d", "interval": "1h", "tasks": [task]}]}))
    return path


@dataclass
class Exporter:
    process: subprocess.Popen[str]
    port: int
    tls: bool

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def client_context(pki: PKI, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def get(
    exporter: Exporter,
    path: str = "/metrics",
    *,
    context: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = (USER, PASSWORD),
) -> tuple[int, dict[str, str], str]:
    """One request on a fresh connection: status, headers, body."""
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    connection: http.client.HTTPConnection
    if exporter.tls:
        connection = http.client.HTTPSConnection("127.0.0.1", exporter.port, context=context, timeout=10)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=10)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        connection.close()


def start(tmp_path: Path, web_config: dict[str, Any] | None, ready: Callable[[Exporter], object]) -> Exporter:
    args = [
        sys.executable,
        "-m",
        "exporter",
        "--config.file",
        str(write_config(tmp_path)),
        "--signing.key-file",
        str(tmp_path / "key"),
    ]
    if web_config is not None:
        (tmp_path / "web.yml").write_text(yaml.safe_dump(web_config))
        args += ["--web.config.file", str(tmp_path / "web.yml")]
    port = free_ports(1)[0]
    process = subprocess.Popen(
        [*args, "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    exporter = Exporter(process, port, tls=web_config is not None and "tls_server_config" in web_config)

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"exporter exited {process.returncode}: {process.communicate()[0]}")
        try:
            ready(exporter)
            return True
        except OSError:
            return False

    wait_for(answers, STARTUP_TIMEOUT, "the exporter to answer")
    return exporter


def stop(exporter: Exporter) -> str:
    exporter.process.terminate()
    output, _ = exporter.process.communicate(timeout=15)
    return output


@pytest.fixture
def tls_auth(pki: PKI, tmp_path: Path) -> Iterator[Exporter]:
    """TLS without client certificates, basic auth and one extra header."""
    web_config = {
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": {USER: HASH},
        "http_server_config": {"headers": {"X-Frame-Options": "deny"}, "http2": True},
    }
    exporter = start(tmp_path, web_config, lambda e: get(e, "/-/ready", context=client_context(pki)))
    yield exporter
    output = stop(exporter)
    assert "Traceback" not in output, output


@pytest.fixture
def mtls(pki: PKI, tmp_path: Path) -> Iterator[Exporter]:
    web_config = {
        "tls_server_config": {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "client_auth_type": "RequireAndVerifyClientCert",
            "client_ca_file": str(pki.ca),
        }
    }
    with_cert = client_context(pki, (pki.client_cert, pki.client_key))
    exporter = start(tmp_path, web_config, lambda e: get(e, "/-/ready", context=with_cert, auth=None))
    yield exporter
    stop(exporter)


# --- TLS -----------------------------------------------------------------------------------------


def test_https_scrape_with_the_ca(pki: PKI, tls_auth: Exporter) -> None:
    status, headers, body = get(tls_auth, context=client_context(pki))
    assert status == 200 and "mail_roundtrip_probe_success" in body
    assert headers.get("X-Frame-Options") == "deny"


def test_untrusted_server_certificate_is_refused_by_the_client(tls_auth: Exporter) -> None:
    # The server's CA is not in the system store: a client without --ca must not get through.
    with pytest.raises(ssl.SSLCertVerificationError):
        get(tls_auth, context=ssl.create_default_context())


def test_plain_http_to_the_tls_port_gets_no_http_answer(tls_auth: Exporter) -> None:
    with socket.create_connection(("127.0.0.1", tls_auth.port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            answer = sock.recv(100)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"HTTP/")


def test_tls13_only(pki: PKI, tmp_path: Path) -> None:
    web_config = {
        "tls_server_config": {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "min_version": "TLS13",
        }
    }
    exporter = start(tmp_path, web_config, lambda e: get(e, "/-/ready", context=client_context(pki), auth=None))
    try:
        old = client_context(pki)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            get(exporter, context=old, auth=None)
    finally:
        stop(exporter)


def test_cipher_suites_are_applied_to_tls12(pki: PKI, tmp_path: Path) -> None:
    web_config = {
        "tls_server_config": {
            "cert_file": str(pki.server_cert),
            "key_file": str(pki.server_key),
            "max_version": "TLS12",
            "cipher_suites": ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"],
        }
    }
    exporter = start(tmp_path, web_config, lambda e: get(e, "/-/ready", context=client_context(pki), auth=None))
    try:
        with (
            socket.create_connection(("127.0.0.1", exporter.port), timeout=10) as raw,
            client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.2"
            cipher = tls.cipher()
            assert cipher is not None and cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
        other = client_context(pki)
        other.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with pytest.raises(ssl.SSLError):
            get(exporter, context=other, auth=None)
    finally:
        stop(exporter)


# --- client certificates -------------------------------------------------------------------------


def test_client_certificate_required(pki: PKI, mtls: Exporter) -> None:
    # With TLS 1.3 the server judges the client certificate after the client's handshake is done,
    # so the refusal may surface on the first read rather than in connect: either is a failure.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(mtls, context=client_context(pki), auth=None)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(mtls, context=client_context(pki, (pki.rogue_cert, pki.rogue_key)), auth=None)
    status, _, body = get(mtls, context=client_context(pki, (pki.client_cert, pki.client_key)), auth=None)
    assert status == 200 and "mail_roundtrip_probe_success" in body


# --- basic auth ----------------------------------------------------------------------------------


def test_basic_auth(pki: PKI, tls_auth: Exporter) -> None:
    context = client_context(pki)
    assert get(tls_auth, context=context)[0] == 200
    assert get(tls_auth, context=context)[0] == 200  # again: now from the cache
    for auth in [(USER, "wrong"), ("nobody", PASSWORD), (USER, ""), (USER, PASSWORD + "x"), None]:
        status, headers, _ = get(tls_auth, context=context, auth=auth)
        assert status == 401, auth
        assert headers.get("WWW-Authenticate") == "Basic"
        assert headers.get("X-Frame-Options") == "deny"  # configured headers on refusals too


@pytest.mark.parametrize("path", ["/", "/-/healthy", "/-/ready", "/no-such-page"])
def test_basic_auth_protects_every_path(pki: PKI, tls_auth: Exporter, path: str) -> None:
    assert get(tls_auth, path, context=client_context(pki), auth=None)[0] == 401


@pytest.mark.parametrize(
    "header",
    [
        "Bearer abc",
        "Basic",
        "Basic !!!notbase64",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(f"{USER}:{'x' * 100}".encode()).decode(),  # past bcrypt's 72 bytes
    ],
)
async def test_malformed_authorization_is_refused(header: str) -> None:
    assert not await BasicAuth({USER: HASH.encode()}).check(header)


async def test_successful_check_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    checkpw = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(password)
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    auth = BasicAuth({USER: HASH.encode()})
    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(f"{USER}:nope".encode()).decode()
    assert await auth.check(good) and await auth.check(good) and await auth.check(good)
    assert not await auth.check(bad) and not await auth.check(bad)
    assert len(calls) == 3  # one for the good password, then every wrong one


async def test_bcrypt_does_not_block_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bcrypt check held up in its thread leaves the loop free: this coroutine goes on and releases it."""
    release = threading.Event()
    checkpw = bcrypt.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        release.wait(30)  # a blocking implementation would hang the loop here and fail below
        return checkpw(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", held)
    check = asyncio.create_task(
        BasicAuth({USER: HASH.encode()}).check("Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    )
    for _ in range(5):
        await asyncio.sleep(0)
    assert not check.done()
    release.set()
    assert await check


# --- slow and silent clients ---------------------------------------------------------------------


def _silent_clients(port: int, stack: ExitStack) -> None:
    """Connections that never finish a request: idle, half a request line, half a TLS record."""
    for payload in [b"", b"GET /metr", b"\x16\x03\x01\x02", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"]:
        for _ in range(5):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            if payload:
                sock.sendall(payload)


def test_idle_and_slowloris_clients_do_not_block_plain_http(tmp_path: Path) -> None:
    exporter = start(tmp_path, None, lambda e: get(e, "/-/ready", auth=None))
    try:
        with ExitStack() as stack:
            _silent_clients(exporter.port, stack)
            status, _, body = get(exporter, auth=None)
            assert status == 200 and "mail_roundtrip_probe_success" in body
    finally:
        stop(exporter)


def test_idle_and_slowloris_clients_do_not_block_tls(pki: PKI, tls_auth: Exporter) -> None:
    with ExitStack() as stack:
        _silent_clients(tls_auth.port, stack)
        # And a client that finishes the handshake, then dribbles half a request.
        raw = stack.enter_context(socket.create_connection(("127.0.0.1", tls_auth.port), timeout=10))
        tls = stack.enter_context(client_context(pki).wrap_socket(raw, server_hostname="127.0.0.1"))
        tls.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthor")
        status, _, body = get(tls_auth, context=client_context(pki))
        assert status == 200 and "mail_roundtrip_probe_success" in body


# --- bad web config files ----------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any] | str, str]] = [
    ("unknown-top", {"basic_auth_user": {}}, "<top level>: unknown key 'basic_auth_user'"),
    ("rate-limit", {"rate_limit": {"interval": "1s", "burst": 20}}, "rate_limit: is not supported"),
    ("not-mapping", "- a\n- b\n", "<top level>: must be a mapping, got a list"),
    ("yaml", "tls_server_config: [\n", "line 2, column 1"),
    ("no-key", {"tls_server_config": {"cert_file": "{cert}"}}, "tls_server_config.key_file: is required"),
    ("no-cert", {"tls_server_config": {"key_file": "{key}"}}, "tls_server_config.cert_file: is required"),
    (
        "missing-cert",
        {"tls_server_config": {"cert_file": "/nonexistent/x.crt", "key_file": "{key}"}},
        "tls_server_config.cert_file: file '/nonexistent/x.crt' does not exist",
    ),
    (
        "garbage-cert",
        {"tls_server_config": {"cert_file": "{garbage}", "key_file": "{key}"}},
        "tls_server_config.cert_file: cannot load certificate and key",
    ),
    (
        "wrong-key",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{client_key}"}},
        "tls_server_config.cert_file: cannot load certificate and key",
    ),
    (
        "inline-cert",
        {"tls_server_config": {"cert": "-----BEGIN", "key_file": "{key}"}},
        "tls_server_config.cert: inline certificates are not supported",
    ),
    (
        "tls-unknown",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "foo": 1}},
        "tls_server_config: unknown key 'foo'",
    ),
    (
        "client-auth",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "client_auth_type": "Yes"}},
        "tls_server_config.client_auth_type: must be one of",
    ),
    (
        "require-any",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "client_auth_type": "RequireAnyClientCert"}},
        "tls_server_config.client_auth_type: is not supported",
    ),
    (
        "verify-no-ca",
        {
            "tls_server_config": {
                "cert_file": "{cert}",
                "key_file": "{key}",
                "client_auth_type": "RequireAndVerifyClientCert",
            }
        },
        "tls_server_config.client_ca_file: is required with client_auth_type RequireAndVerifyClientCert",
    ),
    (
        "ca-without-auth",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "client_ca_file": "{ca}"}},
        "tls_server_config.client_ca_file: is given but client_auth_type is NoClientCert",
    ),
    (
        "min-version",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "min_version": "TLS99"}},
        "tls_server_config.min_version: must be one of TLS10|TLS11|TLS12|TLS13, got 'TLS99'",
    ),
    (
        "max-below-min",
        {
            "tls_server_config": {
                "cert_file": "{cert}",
                "key_file": "{key}",
                "min_version": "TLS13",
                "max_version": "TLS12",
            }
        },
        "tls_server_config.max_version: is lower than min_version",
    ),
    (
        "cipher",
        {
            "tls_server_config": {
                "cert_file": "{cert}",
                "key_file": "{key}",
                "cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"],
            }
        },
        "tls_server_config.cipher_suites[0]: unknown or insecure cipher suite 'TLS_RSA_WITH_RC4_128_SHA'",
    ),
    (
        "cipher-type",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "cipher_suites": [{"a": 1}]}},
        "tls_server_config.cipher_suites[0]: unknown or insecure cipher suite {'a': 1}",
    ),
    (
        "prefer",
        {"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "prefer_server_cipher_suites": "maybe"}},
        "tls_server_config.prefer_server_cipher_suites: must be true/false",
    ),
    (
        "header",
        {"http_server_config": {"headers": {"X-Powered-By": "me"}}},
        "http_server_config.headers: HTTP header 'X-Powered-By' cannot be configured",
    ),
    (
        "header-value",
        {"http_server_config": {"headers": {"X-Frame-Options": "allow"}}},
        "http_server_config.headers.X-Frame-Options: must be one of deny|sameorigin",
    ),
    ("http-unknown", {"http_server_config": {"keepalive": True}}, "http_server_config: unknown key 'keepalive'"),
    ("users-list", {"basic_auth_users": ["alice"]}, "basic_auth_users: must be a mapping, got a list"),
    (
        "plain-password",
        {"basic_auth_users": {"alice": "hunter2-plain"}},
        "basic_auth_users.alice: must be a bcrypt hash",
    ),
    ("colon-user", {"basic_auth_users": {"a:b": HASH}}, "basic_auth_users.a:b: a basic auth user name cannot"),
]


def _write_bad(tmp_path: Path, pki: PKI, content: dict[str, Any] | str) -> Path:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = {
        "cert": pki.server_cert,
        "key": pki.server_key,
        "client_key": pki.client_key,
        "ca": pki.ca,
        "garbage": garbage,
    }
    text = content if isinstance(content, str) else yaml.safe_dump(content)
    for name, path in files.items():
        text = text.replace("{" + name + "}", str(path))
    path = tmp_path / "web.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("content", "expected"), [(c, e) for _, c, e in BAD], ids=[i for i, _, _ in BAD])
def test_bad_web_config_is_a_usage_error(
    pki: PKI, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: dict[str, Any] | str, expected: str
) -> None:
    path = _write_bad(tmp_path, pki, content)
    code = cli.main(
        [
            "--config.file",
            str(write_config(tmp_path)),
            "--web.config.file",
            str(path),
            "--signing.key-file",
            str(tmp_path / "key"),
            "--config.check",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == cli.EXIT_USAGE, err
    assert "\n" not in err and err.startswith(f"error: {path}: ") and expected in err, err
    assert "hunter2-plain" not in err  # a password pasted where a hash belongs is never echoed


def test_bad_web_config_as_a_process(pki: PKI, tmp_path: Path) -> None:
    path = _write_bad(tmp_path, pki, {"tls_server_config": {"cert_file": "/nonexistent/x.crt", "key_file": "{key}"}})
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.file",
            str(write_config(tmp_path)),
            "--web.config.file",
            str(path),
            "--signing.key-file",
            str(tmp_path / "key"),
            "--web.listen-address",
            listen,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {path}: tls_server_config.cert_file: file '/nonexistent/x.crt' does not exist"]


def test_missing_web_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "--config.file",
            str(write_config(tmp_path)),
            "--web.config.file",
            str(tmp_path / "nope.yml"),
            "--config.check",
        ]
    )
    assert code == cli.EXIT_USAGE
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yml'}: cannot read: No such file or directory"


def test_relative_paths_are_relative_to_the_web_config(pki: PKI, tmp_path: Path) -> None:
    for source, name in [(pki.server_cert, "s.crt"), (pki.server_key, "s.key")]:
        (tmp_path / name).write_bytes(source.read_bytes())
    path = tmp_path / "web.yml"
    path.write_text(
        f"tls_server_config:\n  cert_file: s.crt\n  key_file: s.key\nbasic_auth_users:\n  {USER}: '{HASH}'\n"
    )
    config = load_web_config(path)
    assert config.ssl_context is not None and set(config.users) == {USER}
    assert HASH not in repr(config)


# --- the web config is read again on reload ----------------------------------------------------------


def post_reload(exporter: Exporter, context: ssl.SSLContext | None) -> tuple[int, str]:
    connection = http.client.HTTPSConnection("127.0.0.1", exporter.port, context=context, timeout=30)
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    try:
        connection.request("POST", "/-/reload", headers={"Authorization": auth})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def served_certificate(exporter: Exporter, context: ssl.SSLContext) -> str:
    """The common name of the certificate a new connection gets."""
    with (
        socket.create_connection(("127.0.0.1", exporter.port), timeout=10) as sock,
        context.wrap_socket(sock, server_hostname="127.0.0.1") as tls,
    ):
        certificate: dict[str, Any] = dict(tls.getpeercert() or {})
    names = [value for rdn in certificate["subject"] for key, value in rdn if key == "commonName"]
    return str(names[0])


def reload_metric(exporter: Exporter, context: ssl.SSLContext, auth: tuple[str, str]) -> str:
    body = get(exporter, context=context, auth=auth)[2]
    line = next(line for line in body.splitlines() if line.startswith("mail_roundtrip_exporter_config_last_reload_s"))
    return line.split()[-1]


def test_reload_puts_a_renewed_certificate_and_new_users_in_force(pki: PKI, tmp_path: Path) -> None:
    web_config: dict[str, Any] = {
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": {USER: HASH},
    }
    context = client_context(pki)
    exporter = start(tmp_path, web_config, lambda e: get(e, "/-/ready", context=context))
    try:
        assert served_certificate(exporter, context) == "server"
        renewed = _issue(tmp_path, "renewed", (pki.ca, pki.ca.with_suffix(".key")), "subjectAltName=IP:127.0.0.1\n")
        new_password = "scrape-pw-2"
        web_config["tls_server_config"] = {"cert_file": str(renewed[0]), "key_file": str(renewed[1])}
        web_config["basic_auth_users"] = {USER: bcrypt.hashpw(new_password.encode(), bcrypt.gensalt(4)).decode()}
        (tmp_path / "web.yml").write_text(yaml.safe_dump(web_config))
        assert post_reload(exporter, context) == (200, "config reloaded\n")
        assert served_certificate(exporter, context) == "renewed"  # no restart
        assert get(exporter, context=context)[0] == 401  # the old password no longer
        assert get(exporter, context=context, auth=(USER, new_password))[0] == 200
        assert reload_metric(exporter, context, (USER, new_password)) == "1.0"
    finally:
        stop(exporter)


@pytest.mark.parametrize(
    ("broken", "problem"),
    [
        ({"tls_server_config": {"cert_file": "nowhere.crt", "key_file": "nowhere.key"}}, "does not exist"),
        ({"basic_auth_users": {USER: "not-a-hash"}}, "must be a bcrypt hash"),
        (None, "turning TLS on or off needs a restart"),  # no TLS any more: the listeners cannot change
    ],
)
def test_a_broken_web_config_keeps_the_old_one(
    pki: PKI, tmp_path: Path, broken: dict[str, Any] | None, problem: str
) -> None:
    web_config = {
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": {USER: HASH},
    }
    context = client_context(pki)
    exporter = start(tmp_path, web_config, lambda e: get(e, "/-/ready", context=context))
    try:
        new = {**web_config, **broken} if broken is not None else {"basic_auth_users": {USER: HASH}}
        (tmp_path / "web.yml").write_text(yaml.safe_dump(new))
        status, text = post_reload(exporter, context)
        assert status == 500 and "web.yml" in text and problem in text, text
        assert text.count("\n") == 1
        assert served_certificate(exporter, context) == "server"
        assert get(exporter, context=context)[0] == 200  # the old users still in force
        assert reload_metric(exporter, context, (USER, PASSWORD)) == "0.0"
    finally:
        output = stop(exporter)
    assert "Traceback" not in output and "config reload failed" in output, output

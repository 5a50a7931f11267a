"""``--web.config.file``: TLS and basic auth in the file format of Prometheus' exporter-toolkit (a subset).

Users reuse the web config they already have for node_exporter & co. What this exporter cannot do the
same way is rejected, never silently ignored: a security setting that is quietly dropped is worse than
a refusal to start. The file is read at start and again on every reload (web.guard puts it in force).
Errors are one line naming the file and the field, as in ``exporter.config``.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.config.fields import Node, as_bool, as_string, choice, existing_file, ssl_reason
from exporter.config.yamlfile import read_yaml

log = logging.getLogger(__name__)

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's names (crypto/tls.CipherSuites(), the only ones exporter-toolkit accepts) -> OpenSSL's names.
_CIPHERS_TLS12 = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",  # Go's older alias
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
# TLS 1.3 suites are not configurable, in Go as in OpenSSL's cipher list: accepted and ignored, as Go does.
_CIPHERS_TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}

# client_auth_type -> verify mode. Go's RequestClientCert asks for a certificate but never checks it,
# so nothing can depend on it: not asking is the same access. RequireAnyClientCert (any certificate,
# unverified) cannot be expressed with Python's ssl module and is rejected below.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_UNSUPPORTED = {
    "RequireAnyClientCert": "is not supported (Python's ssl module cannot require a certificate without "
    "verifying it); use RequireAndVerifyClientCert with client_ca_file",
}

# Headers exporter-toolkit lets a web config set; it rejects every other name, and so do we, so that a
# file stays valid for both. Allowed values where the toolkit restricts them (lower case).
_HEADERS: dict[str, set[str] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": {"deny", "sameorigin"},
    "X-Content-Type-Options": {"nosniff"},
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

# exporter-toolkit keys we know but do not implement: refused when set (empty values are the defaults).
_UNSUPPORTED_TOP = {"rate_limit": "is not supported by mail-roundtrip-exporter"}
_UNSUPPORTED_TLS = {
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
    "client_ca": "inline CA certificates are not supported; use client_ca_file",
    "client_allowed_sans": "is not supported by mail-roundtrip-exporter",
    "curve_preferences": "is not supported by mail-roundtrip-exporter",
}

_BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")  # cost 4..31


@dataclass(frozen=True)
class WebConfig:
    source: str
    ssl_context: ssl.SSLContext | None = None  # None: plain HTTP
    users: Mapping[str, bytes] = field(default_factory=dict, repr=False)  # user -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()


# --- loading ---------------------------------------------------------------------------------------


def load_web_config(path: str | Path) -> WebConfig:
    path = Path(path)
    return parse_web_config(read_yaml(path), str(path), path.parent)


def parse_web_config(data: object, source: str, base_dir: Path) -> WebConfig:
    root = Node(data if data is not None else {}, "", source)
    _refuse_unsupported(root, _UNSUPPORTED_TOP)
    context = _tls(root.child("tls_server_config"), base_dir) if root.has("tls_server_config") else None
    headers = _http(root.child("http_server_config"))
    users = _users(root.child("basic_auth_users"))
    root.finish()
    return WebConfig(source=source, ssl_context=context, users=users, headers=headers)


def _refuse_unsupported(node: Node, keys: Mapping[str, str]) -> None:
    for key, why in keys.items():
        node.used.add(key)
        if node.data.get(key):
            raise node.error(why, key)


def _tls(node: Node, base_dir: Path) -> ssl.SSLContext:
    _refuse_unsupported(node, _UNSUPPORTED_TLS)
    cert_file = node.require("cert_file", existing_file(base_dir))
    key_file = node.require("key_file", existing_file(base_dir))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A passphrase prompt on the terminal would hang a service: an encrypted key is an error.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except (ssl.SSLError, OSError) as exc:
        raise node.error(f"cannot load certificate and key: {ssl_reason(exc)}", "cert_file") from None
    _client_auth(node, context, base_dir)
    _versions(node, context)
    _ciphers(node, context)
    if node.get("prefer_server_cipher_suites", as_bool, True):
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    node.finish()
    return context


def _client_auth(node: Node, context: ssl.SSLContext, base_dir: Path) -> None:
    names = {name: name for name in [*_CLIENT_AUTH, *_CLIENT_AUTH_UNSUPPORTED]}
    name = node.get("client_auth_type", choice(names), "NoClientCert")
    if name in _CLIENT_AUTH_UNSUPPORTED:
        raise node.error(_CLIENT_AUTH_UNSUPPORTED[name], "client_auth_type")
    ca_file = node.get("client_ca_file", existing_file(base_dir), None)
    if ca_file is not None and name == "NoClientCert":
        raise node.error(
            "is given but client_auth_type is NoClientCert (no certificate is asked for)", "client_ca_file"
        )
    mode = _CLIENT_AUTH[name]
    if mode is not ssl.CERT_NONE and ca_file is None:
        raise node.error(f"is required with client_auth_type {name}", "client_ca_file")
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise node.error(f"cannot load CA certificates: {ssl_reason(exc)}", "client_ca_file") from None
    context.verify_mode = mode


def _versions(node: Node, context: ssl.SSLContext) -> None:
    minimum = node.get("min_version", choice(_TLS_VERSIONS), ssl.TLSVersion.TLSv1_2)
    maximum = node.get("max_version", choice(_TLS_VERSIONS), None)
    if maximum is not None and maximum < minimum:
        raise node.error("is lower than min_version", "max_version")
    context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum


def _ciphers(node: Node, context: ssl.SSLContext) -> None:
    names = node.values("cipher_suites")
    openssl_names = []
    for i, name in enumerate(names):
        key = name if isinstance(name, str) else ""
        if key in _CIPHERS_TLS12:
            openssl_names.append(_CIPHERS_TLS12[key])
        elif key not in _CIPHERS_TLS13:
            raise node.error(f"unknown or insecure cipher suite {name!r}", f"cipher_suites[{i}]")
    if openssl_names:
        try:
            context.set_ciphers(":".join(openssl_names))
        except ssl.SSLError:
            raise node.error("none of these cipher suites is available in this OpenSSL", "cipher_suites") from None


def _http(node: Node) -> tuple[tuple[str, str], ...]:
    node.get("http2", as_bool, True)  # aiohttp speaks HTTP/1.1 only; accepted so shared files stay valid
    headers_node = node.child("headers")
    headers = []
    for name in map(str, headers_node.data):
        if name not in _HEADERS:
            raise headers_node.error(f"HTTP header {name!r} cannot be configured (only {', '.join(_HEADERS)})")
        allowed = _HEADERS[name]
        value = headers_node.get(name, as_string, "")
        if value and allowed is not None and value.lower() not in allowed:
            raise headers_node.error(f"must be one of {'|'.join(sorted(allowed))}, got {value!r}", name)
        if value:  # blank means unset, as in exporter-toolkit
            headers.append((name, value))
    headers_node.finish()
    node.finish()
    return tuple(headers)


def _users(node: Node) -> dict[str, bytes]:
    users = {}
    for key, value in node.data.items():
        user = str(key)
        if ":" in user:
            raise node.error("a basic auth user name cannot contain ':'", user)
        # Never echo the value: it is a password hash, or (a common mistake) the password itself.
        if not isinstance(value, str) or not _BCRYPT_HASH.match(value):
            raise node.error("must be a bcrypt hash ($2a$, $2b$ or $2y$, cost 4..31), got something else", user)
        users[user] = value.encode()
    return users

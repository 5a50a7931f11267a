"""TLS contexts: cached per setting, yet a CA file rotated in place is read again (a reload must not
keep trusting the old CA)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from exporter.config.model import TLSOptions
from exporter.net.tls import client_context


def self_signed(directory: Path, name: str) -> bytes:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_bytes()


def subjects(options: TLSOptions) -> list[object]:
    return [cert["subject"] for cert in client_context(options).get_ca_certs()]


def test_same_setting_same_context(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed(tmp_path, "first-ca"))
    options = TLSOptions(ca_file=str(ca))
    assert client_context(options) is client_context(TLSOptions(ca_file=str(ca)))


def test_a_ca_file_rotated_in_place_is_read_again(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed(tmp_path, "first-ca"))
    options = TLSOptions(ca_file=str(ca))
    assert subjects(options) == [((("commonName", "first-ca"),),)]
    second = self_signed(tmp_path, "second-ca")
    replacement = tmp_path / "ca.pem.new"
    replacement.write_bytes(second)
    os.replace(replacement, ca)  # how a deploy tool swaps a file: a new inode under the old name
    assert subjects(options) == [((("commonName", "second-ca"),),)]
    with ca.open("wb") as rewritten:  # rewritten in place: same inode, new content and mtime
        rewritten.write(self_signed(tmp_path, "third-ca"))
    os.utime(ca, ns=(0, 1))  # a different mtime, whatever the file system's clock resolution
    assert subjects(options) == [((("commonName", "third-ca"),),)]

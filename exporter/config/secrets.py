"""Secrets in a config: given inline, by an environment variable or in a file, read within bounds.

A password, an OAuth2 client secret and a refresh token are each one secret with three sources
(``password``, ``password_env``, ``password_file``; ``client_secret``...). ``--config.check`` checks
a config's shape on a machine that does not hold its secrets: then the env and file sources are
checked but not read, and stand as UNREAD_SECRET.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from exporter import files
from exporter.config.fields import Node, as_string, shown
from exporter.config.model import Secret

UNREAD_SECRET = Secret("")  # a *_env or *_file source that a check without secrets did not read


@dataclass(frozen=True)
class Reading:
    """How a file is being read: where its relative paths start, and whether secrets are read too."""

    base_dir: Path
    secrets: bool = True


@dataclass(frozen=True)
class SecretKind:
    """One kind of secret: its key (``password``; the sources add ``_env`` and ``_file``), how to
    check a value (without quoting it), and how big its file may be."""

    key: str
    check: Callable[[object], str]
    file_limit: int

    @property
    def sources(self) -> tuple[str, str, str]:
        return (self.key, f"{self.key}_env", f"{self.key}_file")


def read_secret(node: Node, reading: Reading, kind: SecretKind) -> Secret | None:
    """The secret from whichever one source the node gives; None if it gives none."""
    keys = kind.sources
    node.used.update(keys)  # one of them written as null is no source, and no unknown key either
    given = [key for key in keys if node.has(key)]
    if len(given) > 1:
        raise node.error(f"give only one of {', '.join(keys)} (got {', '.join(given)})")
    if not given:
        return None
    key = given[0]
    if key == kind.key:
        return Secret(node.get(key, kind.check, ""))
    text = node.get(key, as_string, "")
    if not reading.secrets:
        return UNREAD_SECRET
    if key.endswith("_env"):
        if text not in os.environ:
            raise node.error(f"environment variable {shown(text)} is not set", key)
        value = os.environ[text]
    else:
        value = read_secret_file(node, key, secret_path(reading, text), kind.file_limit)
    try:  # the same rules as a value written in the config: it goes into protocol lines
        return Secret(kind.check(value))
    except ValueError as exc:
        raise node.error(f"the {kind.key.replace('_', ' ')} {exc}", key) from None


def secret_path(reading: Reading, text: str) -> Path:
    return reading.base_dir / text


def read_secret_file(node: Node, key: str, path: Path, limit: int) -> str:
    """The file's text without its trailing newline; an error names the file, never its content."""
    try:
        return files.read_text(path, limit).rstrip("\r\n")
    except files.FileError as exc:
        raise node.error(f"cannot read {str(path)!r}: {exc}", key) from None

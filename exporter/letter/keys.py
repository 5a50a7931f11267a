"""The install's signing key: proves a letter in the mailbox was sent by this exporter.

Generated on first start and kept in a file (0600), so letters of an earlier run (a crash, a restart
while letters travelled) are still recognised as ours and can be cleaned up.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from exporter import files

KEY_BYTES = 32
MAX_KEY_FILE_BYTES = 4 * files.KIB


class SigningKeyError(Exception):
    """The key file exists but cannot be used."""


def default_key_path() -> Path:
    # systemd's StateDirectory=mail-roundtrip-exporter sets $STATE_DIRECTORY to that very folder
    # (/var/lib/mail-roundtrip-exporter); with several StateDirectory= entries it lists them, ':'-separated.
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / "signing.key"
    base = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local/state"))
    return base / "mail-roundtrip-exporter" / "signing.key"


def load_or_create(path: Path) -> bytes:
    if not os.path.lexists(path):
        return _create(path)
    try:
        _refuse_shared(path)
        key = bytes.fromhex(files.read_text(path, MAX_KEY_FILE_BYTES).strip())
    except ValueError as exc:  # FileError is one; fromhex names the position, never the key's text
        raise SigningKeyError(f"{path}: cannot read the signing key: {exc}") from None
    if len(key) < 16:
        raise SigningKeyError(f"{path}: the signing key is shorter than 16 bytes")
    return key


def _refuse_shared(path: Path) -> None:
    """Whoever can read the key can sign letters the sweep then deletes as ours: only the owner may."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot read the signing key: {exc.strerror}") from None
    if mode & 0o077:
        raise SigningKeyError(
            f"{path}: the signing key is open to group or others (mode {mode:04o}); make it private with chmod 600"
        )


def _create(path: Path) -> bytes:
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex() + "\n")
    except FileExistsError:
        return load_or_create(path)  # another process made it first: use theirs
    except OSError as exc:
        raise SigningKeyError(f"{path}: cannot create the signing key: {exc.strerror}") from None
    return key

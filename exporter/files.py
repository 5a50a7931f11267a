"""Reading the files a user names (config, passwords, keys, certificates): bounded and never echoed.

A path may point anywhere: at /dev/zero, a FIFO nobody writes to, a log that grew to gigabytes, or a
file in another encoding. Each read is capped, only regular files are opened, and a problem is one
line that never quotes the file's content (it may hold passwords).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB


class FileError(ValueError):
    """The file cannot be used; the message says why, without the path (callers add it) or content."""


def _kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _refuse_special(mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise FileError(f"is {_kind(mode)}, not a regular file")


def _size_text(limit: int) -> str:
    return f"{limit // MIB} MiB" if limit % MIB == 0 else f"{limit // KIB} KiB"


def check_regular(path: Path, limit: int) -> os.stat_result:
    """For a file another library reads by name (OpenSSL): it exists, is regular and not too big."""
    try:
        info = os.stat(path)  # follows symlinks: a link to /dev/zero is a character device
    except OSError as exc:
        raise FileError(exc.strerror or "cannot be read") from None
    _refuse_special(info.st_mode)
    if info.st_size > limit:
        raise FileError(f"is larger than {_size_text(limit)}")
    return info


def read_bytes(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file; a longer file is an error, not silently cut."""
    check_regular(path, limit)  # before opening: opening some devices already does something
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the check, open() must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileError(exc.strerror or "cannot be read") from None
    with os.fdopen(fd, "rb") as handle:
        _refuse_special(os.fstat(fd).st_mode)
        data = handle.read(limit + 1)  # /proc and growing files report a size that may be wrong
    if len(data) > limit:
        raise FileError(f"is larger than {_size_text(limit)}")
    return data


def read_text(path: Path, limit: int) -> str:
    return decode_utf8(read_bytes(path, limit))


def decode_utf8(data: bytes) -> str:
    """The text, or an error naming where the first invalid byte is (never the byte or its neighbours)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FileError(f"is not UTF-8: invalid byte at line {line}, column {column}") from None

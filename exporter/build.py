"""What this build is: version, source revision, Python and platform, for build_info and --version."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from exporter import __version__

REVISION_ENV = "MAIL_ROUNDTRIP_EXPORTER_REVISION"  # set by a package or image build that knows it
_CHECKOUT = Path(__file__).resolve().parent.parent  # a git checkout when run from source


@functools.cache
def revision() -> str:
    """The git commit this code is from: the build's word for it, else the checkout's, else "unknown"."""
    given = os.environ.get(REVISION_ENV, "").strip()
    if given and given.isprintable():
        return given[:40]
    if not (_CHECKOUT / ".git").exists():
        return "unknown"
    try:
        run = subprocess.run(
            ["git", "-C", str(_CHECKOUT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = run.stdout.strip()
    return commit if commit.isalnum() else "unknown"


def machine() -> str:
    """``linux/amd64``, as Prometheus' exporters print their platform."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine().lower())
    return f"{platform.system().lower()}/{arch}"


def version_text(program: str) -> str:
    """--version, in the shape of Prometheus' exporters."""
    return (
        f"{program}, version {__version__} (revision: {revision()})\n"
        f"  python version:   {platform.python_version()} ({platform.python_implementation()})\n"
        f"  platform:         {machine()}"
    )

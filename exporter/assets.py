"""The files the package carries besides code: the Grafana dashboard, the Prometheus rules, the example config.

Each lives once in the repository (grafana/, prometheus/, the top level), where Grafana provisioning,
promtool and the README use it; exporter/data/ holds symlinks to them, which the wheel turns into copies.
So an installed exporter can hand out the very files its release was tested with (``--print``).
"""

from __future__ import annotations

import os
import sys
from importlib import resources

FILES = {
    "dashboard": "mail-roundtrip.json",
    "rules": "rules.yml",
    "config": "config.example.yml",
}
NAMES = tuple(FILES)


def read(name: str) -> bytes:
    """The asset's bytes as shipped (KeyError for an unknown name)."""
    return (resources.files("exporter") / "data" / FILES[name]).read_bytes()


def print_asset(name: str) -> int:
    """Write the asset to stdout unchanged (bytes, no newline added); the exit code for main."""
    try:
        sys.stdout.buffer.write(read(name))
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left early (`--print rules | head`): not an error. Point stdout at /dev/null so the
        # interpreter's own flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

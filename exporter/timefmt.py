"""Times as people read them in our outputs: the status page and the --once report."""

from __future__ import annotations

import time


def utc_time(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(unix))

"""A task's recent probes, kept in memory for the console: the last N results (without their
transcripts), when the current run of failures began, and the last failed probe with its transcript.

Bounded like blackbox_exporter's ``--history.limit``: N results per task, one kept transcript for the
last probe (``TaskStats.last``) and one for the last failure, whatever the task does."""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator

from exporter.probe.result import ProbeResult

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000  # --history.limit's bound: 1,000 tasks x 1,000 probes is already a few GB


class ProbeHistory:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._results: deque[ProbeResult] = deque(maxlen=limit)
        self.failing_since: float | None = None  # when the first probe of the current failures started
        self.last_failure: ProbeResult | None = None  # with its transcript

    def add(self, result: ProbeResult) -> None:
        # A copy without the transcript: N transcripts per task would be most of the exporter's memory.
        self._results.append(dataclasses.replace(result, transcript=None))
        if result.success:
            self.failing_since = None
            return
        if self.failing_since is None:
            self.failing_since = result.started
        self.last_failure = result

    def newest_first(self) -> Iterator[ProbeResult]:
        return reversed(self._results)

    def __len__(self) -> int:
        return len(self._results)

"""The running exporter: config, scheduler and metrics registry, with reload and clean shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import exposition as text_exposition
from prometheus_client.openmetrics import exposition as openmetrics_exposition

from exporter.config.load import describe_failure, load_config
from exporter.config.model import Config
from exporter.exposition.render import Exposition, SelfCollector
from exporter.exposition.stats import ReloadStatus, TaskStats
from exporter.letter.token import Signer
from exporter.probe.history import DEFAULT_LIMIT as DEFAULT_HISTORY_LIMIT
from exporter.scheduler import Scheduler
from exporter.sharding import Shard

log = logging.getLogger(__name__)
SHUTDOWN_SECONDS = 5.0


def warn_unverified(config: Config) -> None:
    for leg in config.unverified_legs():
        log.warning("TLS certificate verification is OFF (insecure_skip_verify)", extra={"leg": leg})


class Reloadable(Protocol):
    """Another file a reload reads again (the web config): ``prepare`` loads and checks it, raising if
    it is broken, and returns what puts it in force. Nothing changes unless every file loads."""

    def prepare(self) -> Callable[[], None]: ...


class Exporter:
    def __init__(
        self,
        config_path: Path,
        config: Config,
        signer: Signer,
        also: Sequence[Reloadable] = (),
        shard: Shard = Shard(),  # noqa: B008 (frozen: one instance is as good as any)
        history_limit: int = DEFAULT_HISTORY_LIMIT,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.shard = shard
        self.also_reloaded = also
        self.ready = False  # the config is loaded and the scheduler runs: /-/ready says 200
        self.scheduler = Scheduler(signer, history_limit=history_limit)
        self.reload_status = ReloadStatus()
        self.registry = CollectorRegistry()  # the exporter's own and the process's metrics
        self.registry.register(SelfCollector(self.reload_status, shard))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._reload_lock = asyncio.Lock()
        self._signal_reloads: set[asyncio.Task[str | None]] = set()  # held: the loop keeps only weak references
        self.stopping = asyncio.Event()

    def render_metrics(self, stats: list[TaskStats], openmetrics: bool) -> Exposition:
        """The whole scrape: task metrics rendered directly, then the registry's (ending in # EOF for OpenMetrics)."""
        registry: bytes = (openmetrics_exposition if openmetrics else text_exposition).generate_latest(self.registry)
        return Exposition.of(stats, openmetrics, registry)

    async def start(self) -> None:
        await self.scheduler.apply(self.shard.select(self.config))
        self.ready = True
        log.info("exporter started", extra={"tasks": len(self.config.tasks()), "devices": len(self.config.devices)})

    async def reload(self) -> str | None:
        """Load the config file (and the web config) again; if either is bad, both old ones keep running.
        Never raises: whatever goes wrong is the metric at 0, one log line and the returned line (POST
        /-/reload's 500)."""
        async with self._reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
                commits = [await asyncio.to_thread(other.prepare) for other in self.also_reloaded]
                warn_unverified(config)
                await self.scheduler.apply(self.shard.select(config))
                for commit in commits:
                    commit()
            except Exception as exc:  # not only ConfigError: a bug must not become a lost task's traceback
                error = describe_failure(self.config_path, exc)
                self.reload_status.successful = False
                self.reload_status.error, self.reload_status.failed_at = error, time.time()
                log.error("config reload failed", extra={"error": error})
                return error
            self.config = config
            self.reload_status.successful = True
            self.reload_status.error = None
            self.reload_status.last_success = time.time()
            log.info("config reloaded", extra={"tasks": len(config.tasks())})
            return None

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._reload_on_signal)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)

    def _reload_on_signal(self) -> None:
        task = asyncio.ensure_future(self.reload())
        self._signal_reloads.add(task)
        task.add_done_callback(self._signal_reloads.discard)

    async def stop(self) -> None:
        """Cancel probes and close their connections; a server that ignores our goodbyes cannot
        hold up the exit for long (each polite LOGOUT/QUIT is bounded too)."""
        try:
            async with asyncio.timeout(SHUTDOWN_SECONDS):
                await self.scheduler.stop()
        except TimeoutError:
            log.warning("probes did not finish closing in time; exiting anyway", extra={"seconds": SHUTDOWN_SECONDS})
        log.info("exporter stopped")

"""Sharding, as kube-state-metrics does it: N exporters share one config, each probing the tasks
whose stable hash of device/task falls into its shard, so every task is probed by exactly one."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

from exporter.config.model import Config

MAX_SHARDS = 1000


@dataclass(frozen=True)
class Shard:
    ordinal: int = 0
    total: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.total <= MAX_SHARDS:
            raise ValueError(f"--total-shards must be 1..{MAX_SHARDS}, got {self.total}")
        if not 0 <= self.ordinal < self.total:
            raise ValueError(f"--shard must be 0..{self.total - 1} (--total-shards {self.total}), got {self.ordinal}")

    def owns(self, device: str, task: str) -> bool:
        # sha256, not hash(): the same on every machine, Python version and start.
        digest = hashlib.sha256(f"{device}\0{task}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % self.total == self.ordinal

    def select(self, config: Config) -> Config:
        """The part of ``config`` this shard probes (devices without a task of its own left out)."""
        if self.total == 1:
            return config
        devices = []
        for device in config.devices:
            tasks = tuple(task for task in device.tasks if self.owns(device.name, task.name))
            if tasks:
                devices.append(dataclasses.replace(device, tasks=tasks))
        return dataclasses.replace(config, devices=tuple(devices))

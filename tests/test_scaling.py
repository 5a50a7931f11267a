"""Many mailboxes: labels you choose on every series, include: of a conf.d, and sharding (each task
probed by exactly one of N exporters, checked on live exporters)."""

from __future__ import annotations

import functools
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.config.dump import dump_config
from exporter.config.load import load_config, parse_config
from exporter.config.model import ConfigError
from exporter.exposition.render import render_tasks
from exporter.exposition.stats import TaskStats
from exporter.sharding import Shard
from tests.rig import free_ports, wait_for
from tests.tasks import exporter_command, unreachable_task
from tests.test_config import error_of


def config_with(device_labels: Any = None, task_labels: Any = None) -> dict[str, Any]:
    task = unreachable_task(1, "t")
    if task_labels is not None:
        task["labels"] = task_labels
    device: dict[str, Any] = {"name": "d", "tasks": [task]}
    if device_labels is not None:
        device["labels"] = device_labels
    return {"devices": [device]}


# --- labels --------------------------------------------------------------------------------------


def test_task_labels_add_to_and_override_the_device_labels() -> None:
    config = parse_config(config_with({"site": "fra1", "path": "inbound"}, {"path": "m365-inbound", "tier": "1"}))
    device, task = config.tasks()[0]
    assert device.labels_of(task) == (("site", "fra1"), ("path", "m365-inbound"), ("tier", "1"))
    assert "site: fra1" in dump_config(config) and "tier: '1'" in dump_config(config)


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        ({"device": "x"}, "label name 'device' is the exporter's own"),
        ({"smtp_host": "x"}, "is the exporter's own"),
        ({"__meta": "x"}, "is not a Prometheus label name"),
        ({"1site": "x"}, "is not a Prometheus label name"),
        ({"site-name": "x"}, "is not a Prometheus label name"),
        ({"site": ""}, "the value must be 1..128 printable characters"),
        ({"site": "x" * 129}, "the value must be 1..128 printable characters"),
        ({"site": "tab\there"}, "the value must be 1..128 printable characters"),
        ({f"l{i}": "x" for i in range(17)}, "at most 16 labels"),
        (["site"], "must be a mapping of label names to values"),
    ],
)
def test_bad_labels_are_one_line(labels: Any, problem: str) -> None:
    assert problem in error_of(config_with(task_labels=labels))
    assert "devices[0].labels" in error_of(config_with(device_labels=labels))


def test_labels_are_on_every_series_of_the_task() -> None:
    stats = TaskStats("d", "t", 60.0, 600.0, labels=(("site", "fra1"), ("path", 'quote " and \\')))
    text = render_tasks([stats], openmetrics=False)
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    assert samples
    assert all(s.labels["site"] == "fra1" and s.labels["path"] == 'quote " and \\' for s in samples)


# --- include -------------------------------------------------------------------------------------


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def devices_file(*names: str) -> dict[str, Any]:
    return {"devices": [{"name": name, "tasks": [unreachable_task(1, f"{name}-t")]} for name in names]}


def test_include_reads_a_conf_d(tmp_path: Path) -> None:
    write(tmp_path / "conf.d" / "b.yml", devices_file("b1", "b2"))
    write(tmp_path / "conf.d" / "a.yml", devices_file("a1"))
    write(tmp_path / "conf.d" / "notes.txt", "not yaml: [")  # not matched by the pattern
    main = write(tmp_path / "config.yml", {"include": ["conf.d/*.yml"], **devices_file("main")})
    config = load_config(main)
    assert [device.name for device in config.devices] == ["main", "a1", "b1", "b2"]  # files in name order


def test_errors_in_an_included_file_name_that_file(tmp_path: Path) -> None:
    broken = devices_file("x")
    broken["devices"][0]["tasks"][0]["incoming"]["port"] = "abc"
    write(tmp_path / "conf.d" / "x.yml", broken)
    main = write(tmp_path / "config.yml", {"include": ["conf.d/*.yml"]})
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert str(caught.value).startswith(f"{tmp_path / 'conf.d' / 'x.yml'}: devices[0].tasks[0].incoming.port: ")


@pytest.mark.parametrize(
    ("files", "include", "problem"),
    [
        ({"conf.d/a.yml": devices_file("same"), "conf.d/b.yml": devices_file("same")}, ["conf.d/*.yml"], "duplicate"),
        ({"conf.d/a.yml": {"include": ["x"], **devices_file("a")}}, ["conf.d/*.yml"], "unknown key 'include'"),
        ({}, ["conf.d/*.yml"], "needs at least one device"),
        ({}, [""], "include[0]: must be a file name or glob pattern"),
        ({}, "conf.d", "include: must be a list"),
    ],
)
def test_include_problems(tmp_path: Path, files: dict[str, Any], include: Any, problem: str) -> None:
    for name, data in files.items():
        write(tmp_path / name, data)
    main = write(tmp_path / "config.yml", {"include": include})
    with pytest.raises(ConfigError) as caught:
        load_config(main)
    assert problem in str(caught.value)


# --- sharding ------------------------------------------------------------------------------------


def ninety_tasks() -> dict[str, Any]:
    closed = free_ports(1)[0]
    devices = [
        {"name": f"dev{d}", "interval": "1h", "tasks": [unreachable_task(closed, f"task{t}") for t in range(15)]}
        for d in range(6)
    ]
    return {"devices": devices}


def test_every_task_has_exactly_one_shard() -> None:
    config = parse_config(ninety_tasks())
    shards = [Shard(n, 3).select(config) for n in range(3)]
    owned = [{(device.name, task.name) for device, task in shard.tasks()} for shard in shards]
    everything = {(device.name, task.name) for device, task in config.tasks()}
    assert len(everything) == 90 and sum(map(len, owned)) == 90 and set().union(*owned) == everything
    assert all(owned), [len(tasks) for tasks in owned]  # 90 tasks: no shard is empty by the hash's luck


@pytest.mark.parametrize(("ordinal", "total"), [(3, 3), (-1, 3), (0, 0), (0, 1001)])
def test_bad_shards_are_refused(ordinal: int, total: int) -> None:
    with pytest.raises(ValueError, match="shard"):
        Shard(ordinal, total)


def shard_flags(port: int, ordinal: int) -> list[str]:
    return ["--web.listen-address", f"127.0.0.1:{port}", "--shard", str(ordinal), "--total-shards", "3"]


@pytest.fixture
def three_shards(tmp_path: Path) -> Iterator[list[str]]:
    config = write(tmp_path / "config.yml", ninety_tasks())
    ports = free_ports(3)
    processes = [
        subprocess.Popen(
            exporter_command(
                config,
                tmp_path / "key",
                "--web.listen-address",
                f"127.0.0.1:{port}",
                "--shard",
                str(n),
                "--total-shards",
                "3",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for n, port in enumerate(ports)
    ]
    try:
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=15)


def scrape(url: str) -> str | None:
    """The exporter's metrics, or None while it does not answer yet."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_three_live_shards_probe_every_task_exactly_once(three_shards: list[str]) -> None:
    texts = [wait_for(functools.partial(scrape, url), 30, f"{url} to answer") for url in three_shards]
    owned: list[set[tuple[str, str]]] = []
    for ordinal, text in enumerate(texts):
        families = {family.name: family for family in text_string_to_metric_families(text)}
        assert families["mail_roundtrip_exporter_shard_ordinal"].samples[0].value == ordinal
        assert families["mail_roundtrip_exporter_total_shards"].samples[0].value == 3
        tasks = {(s.labels["device"], s.labels["task"]) for s in families["mail_roundtrip_probe_success"].samples}
        owned.append(tasks)
    assert sum(map(len, owned)) == 90 and len(set().union(*owned)) == 90


def test_the_kubernetes_example_shards_by_pod_ordinal() -> None:
    manifest = Path(__file__).resolve().parent.parent / "docs" / "kubernetes" / "mail-roundtrip-exporter.yml"
    documents = list(yaml.safe_load_all(manifest.read_text()))
    (statefulset,) = [doc for doc in documents if doc["kind"] == "StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert f"--total-shards={statefulset['spec']['replicas']}" in container["args"]
    assert "--shard=$(SHARD)" in container["args"]
    (shard,) = [env for env in container["env"] if env["name"] == "SHARD"]
    assert shard["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"

"""The Python package: sdist and wheel as `python -m build` makes them, their metadata, the files they
carry, and `--print` from an installed wheel.

The build runs without isolation (setuptools, build and twine come with the test extras), on a copy of
the source tree in a temporary directory, so it needs no network and leaves nothing in the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter import __version__, assets

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".*_cache", ".hypothesis"
)
# Where each shipped asset lives in the repository: the one copy Grafana, promtool and the README use.
ASSET_SOURCES = {
    "dashboard": ROOT / "grafana" / "mail-roundtrip.json",
    "rules": ROOT / "prometheus" / "rules.yml",
    "config": ROOT / "config.example.yml",
}
# What the tests of an unpacked sdist read besides the package itself.
SDIST_CARRIES = ("tests", "prometheus", "grafana", "docs", "scripts", "packaging", "exporter")
SDIST_FILES = ("config.example.yml", "README.md", "LICENSE", "Containerfile", ".containerignore")
PROGRAM = "mail-roundtrip-exporter"


@dataclass(frozen=True)
class Dists:
    source: Path  # the copy of the tree the dists were built from
    sdist: Path
    wheel: Path


def _run(args: list[str | Path]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    tmp = tmp_path_factory.mktemp("dists")
    source = tmp / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=NOT_SOURCE)  # exporter/data/ stays symlinks
    out = tmp / "out"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, source])
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dists(source, sdist, wheel)


def test_sdist_and_wheel_pass_twine_check(dists: Dists) -> None:
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", dists.sdist, dists.wheel])
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    print(f"wheel {dists.wheel.name}: {dists.wheel.stat().st_size} bytes; sdist {dists.sdist.stat().st_size} bytes")


def test_wheel_carries_the_assets_as_files(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        for name, source in ASSET_SOURCES.items():
            info = wheel.getinfo(f"exporter/data/{assets.FILES[name]}")
            # A regular file with the repository's bytes, not a symlink (external_attr holds the mode).
            assert (info.external_attr >> 16) & 0o170000 in (0, 0o100000)
            assert wheel.read(info) == source.read_bytes()


def test_wheel_metadata(dists: Dists) -> None:
    with zipfile.ZipFile(dists.wheel) as wheel:
        metadata = wheel.read(f"mail_roundtrip_exporter-{__version__}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Topic :: System :: Monitoring" in metadata
    assert "Requires-Dist: aioimaplib==2.0.3" in metadata


def test_sdist_carries_what_its_tests_need(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as sdist:
        prefix = sdist.getnames()[0].split("/")[0]
        shipped = {name.removeprefix(prefix + "/") for name in sdist.getnames()}
    wanted = {str(p.relative_to(dists.source)) for d in SDIST_CARRIES for p in (dists.source / d).rglob("*")}
    wanted |= set(SDIST_FILES)
    assert sorted(wanted - shipped) == []
    assert {"tests/rig.py", "tests/conftest.py", "tests/hostile.py", "tests/imapfake.py"} <= shipped


@pytest.fixture(scope="module")
def installed(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (without pip: the test's pip installs into it) holding the wheel alone, no dependencies."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", dists.wheel])
    return python


def test_installed_wheel_serves_its_assets(installed: Path) -> None:
    # exporter.assets needs nothing but the standard library: this runs with the wheel and no dependency.
    # The working directory is the venv's, not the checkout (`python -c` looks there first).
    code = "import sys, exporter.assets as a; print(a.__file__); sys.stdout.flush(); a.print_asset(sys.argv[1])"
    for name, source in ASSET_SOURCES.items():
        proc = subprocess.run(
            [installed, "-c", code, name], capture_output=True, cwd=installed.parent, check=False, timeout=60
        )
        where, _, printed = proc.stdout.partition(b"\n")
        assert proc.returncode == 0, proc.stderr
        assert Path(where.decode()).is_relative_to(installed.parent.parent)  # the wheel's copy, not the tree
        assert printed == source.read_bytes()


def test_installed_program_prints_assets(installed: Path) -> None:
    """The console script of the installed wheel; its dependencies come from the test venv's site-packages
    (PYTHONPATH does not run that venv's .pth files, so the tree of the editable install stays out)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    for name, source in ASSET_SOURCES.items():
        proc = subprocess.run(
            [installed.parent / PROGRAM, "--print", name],
            capture_output=True,
            env=env,
            cwd=installed.parent,  # not the checkout: Python looks for modules in the working directory first
            check=False,
            timeout=60,
        )
        assert (proc.returncode, proc.stderr) == (0, b"")
        assert proc.stdout == source.read_bytes()
    where = subprocess.run(
        [installed, "-c", "import exporter.cli as c; print(c.__file__)"],
        capture_output=True,
        env=env,
        cwd=installed.parent,
        text=True,
        check=False,
    )
    assert Path(where.stdout.strip()).is_relative_to(installed.parent.parent), where.stderr


@pytest.mark.parametrize("name", assets.NAMES)
def test_print_from_the_checkout(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--print", name], capture_output=True, check=False, timeout=60
    )
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, b"", ASSET_SOURCES[name].read_bytes())


def test_print_refuses_an_unknown_asset() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--print", "alerts"], capture_output=True, check=False, timeout=60
    )
    assert proc.returncode == 2
    assert b"invalid choice: 'alerts'" in proc.stderr


def test_print_into_a_closed_pipe_is_quiet() -> None:
    """`--print dashboard | head -1`: the reader has gone, the exporter exits 0 without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # before the child writes: its write meets EPIPE whatever the timing
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--print", "dashboard"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, b"")


def test_data_links_point_at_the_one_copy() -> None:
    """exporter/data/ holds symlinks, never copies that could drift from the files Grafana and promtool use.
    (An unpacked sdist has copies, made from those files when it was built.)"""
    in_repository = (ROOT / ".git").exists()
    for name, source in ASSET_SOURCES.items():
        link = ROOT / "exporter" / "data" / assets.FILES[name]
        if in_repository:
            assert link.is_symlink()
            assert link.resolve() == source.resolve()
        assert link.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (ROOT / "exporter" / "data").iterdir()) == sorted(assets.FILES.values())

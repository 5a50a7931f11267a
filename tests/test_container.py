"""The container image (Containerfile), built and run for real against the test rig.

No image registry is reachable here, so the base image is made from Debian packages: debootstrap makes a
minimal bookworm root filesystem with python3 (from deb.debian.org, signatures checked against the
archive keyring), `podman import` turns its tar into an image, and the Containerfile is built FROM it
(`--build-arg BASE=...`). The Containerfile's pip would fetch the dependencies from PyPI; here the test
fetches their wheels with the host's pip (and its settings) beforehand and hands them to the build with
podman's own flags: a wheel directory and a pip.conf (no-index, find-links) mounted for the RUN steps
alone, so the image is built offline from the same files and the Containerfile stays as users run it.
The container runs with the host's network, so the exporter in it probes the rig's Postfix and Dovecot on
127.0.0.1, and the test reads `mail_roundtrip_probe_success 1` from its /metrics.

podman runs with a configuration of its own under the test's temporary directory (storage, run and
temporary directories, cgroupfs, file events, runc) and never touches /etc/containers. The places podman
4.3 writes to as root whatever it is told (its blob-info cache in /var/lib/containers, temporary files in
/var/tmp, runc's state in /run/runc, which the container's cleanup writes without podman's flags) are
covered, for podman's processes alone, by the test's own directories in a private mount namespace
(unshare). The base tar is cached in .cache/container-base/ (git-ignored), keyed by a hash of
everything that makes it and rebuilt when older than BASE_MAX_AGE: a clean clone builds it afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.rig import MailRig, free_ports, wait_for
from tests.tasks import FreshUsers, task_dict

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "container-base"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What the Containerfile needs of its base: python3 with venv (and useradd, which minbase has).
PACKAGES = ("python3", "python3-venv")
# Left out of the base tar: apt's downloads and lists, documentation (a third of its size).
PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale")
RECIPE = 1  # bump when the way the base is made changes in a way the key does not see
BASE_MAX_AGE = 30 * 86400  # a month: then Debian's updates are fetched again
KEY_DIR = "/var/lib/mail-roundtrip-exporter"
CONFIG_DIR = "/etc/mail-roundtrip-exporter"
HEALTH_ENV = "MAIL_ROUNDTRIP_HEALTH_URL"
VENV = "/opt/mail-roundtrip-exporter"
GPL_CHECK = """import importlib.metadata as m
d = m.distribution("aioimaplib")
print(d.metadata["License-Expression"])
print(any(f.name == "LICENSE.txt" and d.locate_file(f).is_file() for f in d.files or []))
print(all(d.locate_file(f).is_file() for f in d.files or [] if f.suffix == ".py"))"""
WHEELS = "/wheels"  # where the build's RUN steps see the wheelhouse
PROBE_SUCCESS = re.compile(r'^mail_roundtrip_probe_success\{[^}]*task="(?P<task>[^"]+)"[^}]*\} (?P<value>\S+)$', re.M)


def _timed(what: str, started: float) -> None:
    print(f"container test: {what} took {time.monotonic() - started:.1f}s")  # shown with pytest -s


def _check(args: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    if proc.returncode != 0:
        tail = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        pytest.fail(f"{what} failed ({proc.returncode}): {' '.join(args)}\n{tail}")
    return proc.stdout


# ---- the Debian base ------------------------------------------------------------------------------


def _base_key() -> str:
    debootstrap = _check(["dpkg-query", "-W", "-f=${Version}", "debootstrap"], "dpkg-query", 30)
    arch = _check(["dpkg", "--print-architecture"], "dpkg", 30).strip()
    recipe = {"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES, "prune": PRUNE, "recipe": RECIPE}
    recipe |= {"debootstrap": debootstrap, "arch": arch, "variant": "minbase"}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below path (debootstrap mounts /proc and /sys in the target while it works)."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def _remove_build_dir(path: Path) -> None:
    # Only mounts below our own directory, deepest first: rmtree must never walk into a mounted /proc.
    for point in sorted(_mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, timeout=60)
    assert not _mounts_below(path), f"still mounted below {path}"
    shutil.rmtree(path, ignore_errors=True)


def base_tarball() -> tuple[Path, bool]:
    """The base root filesystem as a tar, and whether it came from the cache."""
    tarball = CACHE / f"debian-{SUITE}-{_base_key()}.tar"
    if tarball.exists() and time.time() - tarball.stat().st_mtime < BASE_MAX_AGE:
        return tarball, True
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"build-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        rootfs = work / "rootfs"
        include = ",".join(PACKAGES)
        args = ["debootstrap", "--variant=minbase", f"--include={include}", SUITE, str(rootfs), MIRROR]
        _check(args, "debootstrap", 1200)
        for sub in PRUNE:
            shutil.rmtree(rootfs / sub, ignore_errors=True)
        part = work / "base.tar"
        _check(["tar", "--numeric-owner", "--one-file-system", "-C", str(rootfs), "-cf", str(part), "."], "tar", 600)
        os.replace(part, tarball)  # complete or absent: a run that dies half-way leaves no bad cache
    finally:
        _remove_build_dir(work)
    for stale in CACHE.glob(f"debian-{SUITE}-*.tar"):
        if stale != tarball:
            stale.unlink(missing_ok=True)
    return tarball, False


# ---- podman with a configuration of its own -------------------------------------------------------


# podman (and the conmon and runc it starts) see the test's directories over /var/lib, /var/tmp and /run;
# the host's stay untouched. The same directories in every call: runc finds its state of a container again.
PRIVATE_MOUNTS = (
    'mount --bind "$1/var-lib" /var/lib && mount --bind "$1/var-tmp" /var/tmp && mount --bind "$1/host-run" /run'
    ' && shift && exec "$@"'
)


class Podman:
    def __init__(self, home: Path) -> None:
        self.home = home
        for sub in ("storage", "run", "tmp", "libpod", "net", "var-lib", "var-tmp", "host-run"):
            (home / sub).mkdir(parents=True)
        # No CAP_SYS_RESOURCE on this machine: podman's default limits (nofile 1048576, nproc unlimited) cannot
        # be set, so the containers keep the hard limit on files this process has, and 4,096 processes.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        (home / "containers.conf").write_text(
            f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
            # cgroupfs: no systemd as PID 1; runc: crun refuses this machine's hybrid cgroup v1/v2 layout.
            f'[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            f'events_logfile_path = "{home}/events.log"\nruntime = "runc"\n'
            f'tmp_dir = "{home}/libpod"\nimage_copy_tmp_dir = "{home}/tmp"\n'
            f'[network]\nnetwork_config_dir = "{home}/net"\n'
        )
        (home / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{home}/storage"\nrunroot = "{home}/run"\n'
        )
        (home / "registries.conf").write_text("unqualified-search-registries = []\n")
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(home / "containers.conf"),
            "CONTAINERS_STORAGE_CONF": str(home / "storage.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(home / "registries.conf"),
            "TMPDIR": str(home / "tmp"),
        }

    def command(self, *args: str) -> list[str]:
        private = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", PRIVATE_MOUNTS, "sh"]
        return [*private, str(self.home), "podman", *args]

    def __call__(self, *args: str, timeout: float = 120) -> str:
        return _check(self.command(*args), f"podman {args[0]}", timeout, env=self.env).strip()

    def quietly(self, *args: str) -> subprocess.CompletedProcess[str]:
        """For cleanup and diagnostics: never fails the test by itself."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, env=self.env, check=False, timeout=120
        )

    def processes(self) -> list[int]:
        """PIDs of live processes naming this podman's directories (conmon, the container): none after cleanup."""
        found = []
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if entry.name.isdigit() and str(self.home).encode() in cmdline and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        return found


def wheelhouse(directory: Path) -> Path:
    """Wheels of every dependency and of the build backend, as the Containerfile's pip would fetch them."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [*project["build-system"]["requires"], *project["project"]["dependencies"]]
    args = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--dest", str(directory)]
    _check([*args, *wanted], "pip download", 600)
    (directory / "pip.conf").write_text(f"[global]\nno-index = true\nfind-links = {WHEELS}\n")
    return directory


@dataclass(frozen=True)
class Image:
    podman: Podman
    image_id: str


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    for tool in ("podman", "runc", "debootstrap", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not installed (scripts/install-deps installs it)")
    podman = Podman(tmp_path_factory.mktemp("podman"))
    created: list[str] = []
    try:
        started = time.monotonic()
        tarball, cached = base_tarball()
        _timed(
            f"base root filesystem ({'cached' if cached else 'debootstrap'}, {tarball.stat().st_size} bytes)", started
        )
        started = time.monotonic()
        wheels = wheelhouse(tmp_path_factory.mktemp("wheels"))
        _timed(f"pip download ({len(list(wheels.glob('*.whl')))} wheels)", started)
        started = time.monotonic()
        base = f"localhost/mail-roundtrip-exporter-test-base:{secrets.token_hex(4)}"
        created.append(podman("import", str(tarball), base))
        built = podman.home / "image-id"
        # chroot isolation: RUN steps need no OCI runtime (runc would keep its state in /run/runc).
        # docker format: the OCI image format has no HEALTHCHECK (podman drops it with a warning).
        podman(
            "build", "--pull=never", "--isolation=chroot", "--format=docker",
            f"--build-arg=BASE={base}", f"--iidfile={built}",
            f"--volume={wheels}:{WHEELS}:ro", f"--volume={wheels}/pip.conf:/etc/pip.conf:ro",
            "--file", str(ROOT / "Containerfile"), str(ROOT),
            timeout=900,
        )  # fmt: skip
        created.append(built.read_text().strip())
        _timed("podman import + build", started)
        yield Image(podman, created[-1])
    finally:
        for image_id in reversed(created):
            podman.quietly("rmi", "--force", image_id)
        leftovers = podman.processes()
        shutil.rmtree(podman.home, ignore_errors=True)
        assert leftovers == [], f"processes of this test's podman still running: {leftovers}"


# ---- the container against the rig ----------------------------------------------------------------


def _container_config(rig: MailRig, users: list[str], interval: str) -> dict[str, object]:
    tasks = []
    for user, mailbox in zip(users, ("imaps", "pop3s"), strict=True):
        task = task_dict(rig, user, mailbox=mailbox, name=mailbox, email_timeout="60s")
        for leg in ("smtp", "incoming"):
            task[leg] = {**task[leg], "host": task[leg]["host"].replace("localhost", "127.0.0.1")}
            task[leg]["ca_file"] = f"{CONFIG_DIR}/ca.crt"  # where the container sees the rig's CA
        tasks.append(task)
    return {"devices": [{"name": "container", "interval": interval, "tasks": tasks}]}


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return str(answer.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def _all_succeeded(url: str, tasks: set[str]) -> dict[str, str] | None:
    body = _scrape(url)
    found = {m["task"]: m["value"] for m in PROBE_SUCCESS.finditer(body or "")}
    return found if {t for t, v in found.items() if v == "1"} >= tasks else None


def test_image_runs_as_non_root_and_probes_the_rig(
    image: Image, rig: MailRig, fresh_users: FreshUsers, tmp_path: Path
) -> None:
    podman = image.podman
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    config = _container_config(rig, [fresh_users.take(), fresh_users.take()], interval="2s")
    (config_dir / "config.yml").write_text(yaml.safe_dump(config))
    shutil.copyfile(rig.ca_file, config_dir / "ca.crt")
    for path in (config_dir, *config_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the container's user (9925) reads them
    port = free_ports(1)[0]
    volume = f"mail-roundtrip-exporter-test-{secrets.token_hex(4)}"
    started = time.monotonic()
    container = podman(
        "run", "--detach", "--network=host", f"--volume={volume}:{KEY_DIR}",
        f"--volume={config_dir}/config.yml:{CONFIG_DIR}/config.yml:ro",
        f"--volume={config_dir}/ca.crt:{CONFIG_DIR}/ca.crt:ro",
        f"--env={HEALTH_ENV}=http://127.0.0.1:{port}/-/healthy",
        # No timer for the health check (that needs systemd); the test runs it itself below.
        "--health-interval=disable",
        image.image_id, f"--web.listen-address=127.0.0.1:{port}",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        found = wait_for(lambda: _all_succeeded(url, {"imaps", "pop3s"}), 120, "both tasks to succeed in the container")
        _timed("container start until both tasks succeeded", started)
        assert found == {"imaps": "1", "pop3s": "1"}
        _check_inside(podman, container)
    except BaseException:
        logs = podman.quietly("logs", container)
        print(f"container logs:\n{logs.stdout}{logs.stderr}")  # pytest shows them with the failure
        raise
    finally:
        podman.quietly("rm", "--force", "--time=5", container)  # by its ID, which `run` printed
        podman.quietly("volume", "rm", "--force", volume)


def _check_inside(podman: Podman, container: str) -> None:
    assert podman("exec", container, "id", "-u") == "9925"
    mode = podman("exec", container, "stat", "-c", "%u %a", f"{KEY_DIR}/signing.key")
    assert mode == "9925 600"  # created by the exporter in the volume, private
    # What the README says of the image's license: aioimaplib's complete source and license text are in it.
    licence = podman("exec", container, f"{VENV}/bin/python", "-c", GPL_CHECK)
    assert licence.splitlines() == ["GPL-3.0-only", "True", "True"]
    podman("healthcheck", "run", container)  # exit 0: healthy (podman 4.3 prints nothing then)
    # The image's health command fails when nothing answers (same command, a closed port).
    image_id = podman("inspect", "--format={{.Image}}", container)
    test = json.loads(podman("image", "inspect", image_id))[0]["Healthcheck"]["Test"]
    assert test[0] == "CMD"
    closed = free_ports(1)[0]
    failing = subprocess.run(
        podman.command("exec", f"--env={HEALTH_ENV}=http://127.0.0.1:{closed}/-/healthy", container, *test[1:]),
        capture_output=True, env=podman.env, check=False, timeout=60,
    )  # fmt: skip
    assert failing.returncode != 0

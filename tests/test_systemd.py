"""The systemd unit (packaging/systemd/) and the key path it relies on.

systemd-analyze checks the unit offline: no systemd as PID 1 is needed, nothing is installed or started.
`verify` loads the unit as the service manager would (unknown keys, bad values, a missing ExecStart
binary) and `security --offline` scores its sandbox. Both must be able to fail: broken copies of the
unit are checked to be reported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.letter import keys

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "packaging" / "systemd" / "mail-roundtrip-exporter.service"
INSTALLED_BINARY = "/opt/mail-roundtrip-exporter/bin/mail-roundtrip-exporter"
# The exporter's console script in the venv running the tests: a real file for ExecStart.
TEST_BINARY = Path(sys.executable).parent / "mail-roundtrip-exporter"
# systemd-analyze's exposure scale is 0..100 (shown as 0.0..10.0); "OK" ends at 2.0 (20).
MAX_EXPOSURE = 20
HARDENING = re.compile(
    r"^(DynamicUser|Protect\w+|Private\w+|NoNewPrivileges|CapabilityBoundingSet|AmbientCapabilities|Restrict\w+|"
    r"SystemCall\w+|LockPersonality|MemoryDenyWriteExecute|RemoveIPC|DevicePolicy|ProcSubset|UMask)="
)


# ---- the key path ----------------------------------------------------------------------------------


def test_key_is_directly_in_systemds_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    # StateDirectory=mail-roundtrip-exporter: $STATE_DIRECTORY already is /var/lib/mail-roundtrip-exporter.
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mail-roundtrip-exporter")
    assert keys.default_key_path() == Path("/var/lib/mail-roundtrip-exporter/signing.key")


def test_key_in_the_first_of_several_state_directories(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mail-roundtrip-exporter:/var/lib/other")
    assert keys.default_key_path() == Path("/var/lib/mail-roundtrip-exporter/signing.key")


def test_key_outside_systemd_is_under_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert keys.default_key_path() == tmp_path / "mail-roundtrip-exporter" / "signing.key"


def test_key_outside_systemd_without_xdg_is_in_the_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert keys.default_key_path() == tmp_path / ".local/state/mail-roundtrip-exporter/signing.key"


def test_the_unit_leaves_the_key_to_the_state_directory() -> None:
    """The unit passes no --signing.key-file: the key is $STATE_DIRECTORY/signing.key, which
    DynamicUser= owns and which outlives the dynamic user (systemd keeps it under /var/lib/private)."""
    service = _section(UNIT.read_text(), "Service")
    assert "StateDirectory=mail-roundtrip-exporter" in service.splitlines()
    assert "--signing.key-file" not in service


# ---- systemd-analyze ------------------------------------------------------------------------------


def _section(text: str, name: str) -> str:
    lines: list[str] = []
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == name and line and not line.startswith("#"):
            lines.append(line)
    return "\n".join(lines)


def _testable(tmp_path: Path, text: str) -> Path:
    """The unit under its own name in tmp_path, ExecStart pointing at the exporter installed for the tests
    (verify refuses a unit whose binary does not exist)."""
    assert TEST_BINARY.is_file(), f"{TEST_BINARY} missing: install the package (scripts/install-deps)"
    assert INSTALLED_BINARY in text
    path = tmp_path / UNIT.name
    path.write_text(text.replace(INSTALLED_BINARY, str(TEST_BINARY)))
    return path


# systemd-analyze's offline manager still stamps /run/systemd/systemd-units-load: in a mount namespace of its
# own it stamps a throwaway tmpfs instead of the host's /run.
PRIVATE_RUN = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
PRIVATE_RUN += ['mount -t tmpfs -o size=1m tmpfs /run && exec "$@"', "sh"]


def _analyze(*args: str) -> tuple[int, str]:
    env = {**os.environ, "LANG": "C", "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    command = [*PRIVATE_RUN, "systemd-analyze", *args]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def verify(unit: Path) -> tuple[int, str]:
    return _analyze("verify", "--man=no", str(unit))


def test_unit_verifies_without_a_word(tmp_path: Path) -> None:
    assert verify(_testable(tmp_path, UNIT.read_text())) == (0, "")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("ProtectSystem=strict", "ProtectSytem=strict"), "Unknown key 'ProtectSytem'"),
        (("Restart=on-failure", "Restart=sometimes"), "Failed to parse service restart specifier"),
        (("Type=exec", "Type=forking-ish"), "Failed to parse service type"),
    ],
)
def test_verify_reports_a_broken_unit(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    text = UNIT.read_text()
    assert change[0] in text
    _, output = verify(_testable(tmp_path, text.replace(change[0], change[1])))
    assert expected in output


def test_verify_fails_on_a_missing_binary(tmp_path: Path) -> None:
    path = tmp_path / UNIT.name
    path.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(tmp_path / "no-such-binary")))
    code, output = verify(path)
    assert code != 0
    assert "no-such-binary" in output


def security(unit: Path) -> tuple[int, str]:
    return _analyze("security", "--offline=yes", f"--threshold={MAX_EXPOSURE}", "--no-pager", str(unit))


def test_unit_sandbox_scores_ok(tmp_path: Path) -> None:
    code, output = security(_testable(tmp_path, UNIT.read_text()))
    assert code == 0, output
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", output)
    assert score is not None, output
    print(f"systemd-analyze security: {score.group(0)}")  # shown with pytest -s
    assert float(score.group(1)) * 10 <= MAX_EXPOSURE


def test_security_fails_for_the_unit_without_its_sandbox(tmp_path: Path) -> None:
    bare = "\n".join(line for line in UNIT.read_text().splitlines() if not HARDENING.match(line)) + "\n"
    assert "ProtectSystem" not in bare
    code, output = security(_testable(tmp_path, bare))
    assert code != 0, output

"""Never lose mail: a mailbox full of foreign letters, some mimicking ours, survives many probes
byte for byte, while leftovers of earlier runs (signed with our key) are swept."""

from __future__ import annotations

import time

import pytest

from exporter.letter.compose import build_letter
from exporter.letter.token import Signer
from exporter.probe.watch import SWEEP_AGE, Mailbox
from tests.rig import MailRig
from tests.tasks import SIGNER, probe_once, task_dict, task_of

FOREIGN_PER_KIND = 25
PROBES_PER_PROTOCOL = 15


def foreign_letters() -> list[bytes]:
    """Letters the exporter must never touch: plain mail, mimics of the probe letter, other installs' probes."""
    letters = []
    for i in range(FOREIGN_PER_KIND):
        letters.append(f"From: a@example.test\r\nSubject: hello {i}\r\n\r\nordinary letter {i}\r\n".encode())
        letters.append(
            build_letter(Signer(b"another-install").new_token(), "x@example.test", "y@example.test", "d", f"t{i}")
        )
        ours = build_letter(SIGNER.new_token(), "x@example.test", "y@example.test", "d", f"t{i}")
        token = ours.split(b"X-Mail-Roundtrip-Probe: ")[1][:51]
        letters.append(ours.replace(token, token[:-6] + b"000000"))  # our shape, broken signature
        letters.append(
            b"From: a@example.test\r\nSubject: [mail-roundtrip-exporter] test letter mrt-1700000000-"
            + f"{i:016x}".encode()
            + b"-00000000000000000000\r\nX-Mail-Roundtrip-Probe: forged\r\n\r\nmimic\r\n"
        )
    return letters


def leftovers_of_earlier_runs(count: int) -> list[bytes]:
    """Signed with our key, older than any probe could wait for: the sweep removes them."""
    old = time.time() - SWEEP_AGE - 600
    return [build_letter(SIGNER.new_token(now=old), "x@example.test", "y@example.test", "d", "t") for _ in range(count)]


@pytest.mark.parametrize("mailbox", ["imaps", "pop3s"])
async def test_soak_foreign_letters_survive(rig: MailRig, mailbox: str) -> None:
    user = f"soak-{mailbox}"
    rig.add_users([user])
    rig.clear_mailbox(user)
    originals = foreign_letters()
    for raw in originals + leftovers_of_earlier_runs(5):
        rig.deliver_raw(user, raw)
    task = task_dict(rig, user, mailbox=mailbox)
    box = Mailbox(task_of(task).incoming, SIGNER)
    started = time.monotonic()
    swept = 0
    for _ in range(PROBES_PER_PROTOCOL):
        result = await probe_once(task, box)
        assert result.success, result.error
        swept += result.swept
    elapsed = time.monotonic() - started
    remaining = sorted(path.read_bytes() for path in rig.messages(user))
    assert remaining == sorted(originals), "a foreign letter was changed or deleted, or a probe letter was left"
    assert swept == 5
    print(
        f"\nsoak {mailbox}: {len(originals)} foreign letters, {PROBES_PER_PROTOCOL} probes in {elapsed:.1f}s, "
        f"{swept} leftovers swept, {len(remaining)} foreign letters intact"
    )

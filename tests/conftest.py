"""Shared pytest fixtures. Add new fixtures in their own delimited block."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.rig import MailRig

# ============================================================================
# Mail rig: one real Postfix + Dovecot (tests/rig.py) for the whole session.
# Rig-level tests use user4/user5; user1..user3 are free for other tests.
# ============================================================================


@pytest.fixture(scope="session")
def rig() -> Iterator[MailRig]:
    """A started MailRig with user1..user5@example.test, stopped at session end."""
    with MailRig(users=5) as mail_rig:
        yield mail_rig


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the rig's log tail to the report of every failing test that used it."""
    report = yield
    mail_rig = getattr(item, "funcargs", {}).get("rig")
    if report.failed and isinstance(mail_rig, MailRig):
        report.sections.append(("mail rig logs", mail_rig.logs()))
    return report


# ============================================================================
# End of mail rig block.
# ============================================================================


# ============================================================================
# Fresh mailbox users: a test that takes one is the only test ever to use that
# mailbox, so a letter it leaves behind (a failure, a letter still held in the
# Postfix queue) can never turn up in another test's mailbox.
# ============================================================================


class FreshUsers:
    """Hands out users no test has had yet, created in batches: each batch costs one reload of both
    servers (a second or more on a loaded machine), each user only a line in their user files."""

    BATCH = 8

    def __init__(self, rig: MailRig) -> None:
        self.rig = rig
        self._created = 0
        self._unused: list[str] = []

    def take(self) -> str:
        if not self._unused:
            names = [f"fresh-{self._created + i}" for i in range(1, self.BATCH + 1)]
            self.rig.add_users(names)
            self._created += self.BATCH
            self._unused = names
        return self._unused.pop(0)


@pytest.fixture(scope="session")
def fresh_users(rig: MailRig) -> FreshUsers:
    return FreshUsers(rig)


@pytest.fixture
def fresh_user(fresh_users: FreshUsers) -> str:
    """A mailbox user of this test alone (empty, never used before)."""
    return fresh_users.take()


# ============================================================================
# End of fresh mailbox users block.
# ============================================================================

"""Shared pytest fixtures. Add new fixtures in their own delimited block."""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest

from tests.mailpath import MailPath
from tests.rig import MailRig
from tests.tasks import FreshUsers

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
    for name in ("rig", "mail_path"):
        mail_rig = getattr(item, "funcargs", {}).get(name)
        if report.failed and isinstance(mail_rig, MailRig):
            report.sections.append((f"{name} logs", mail_rig.logs()))
    return report


# ============================================================================
# End of mail rig block.
# ============================================================================


# ============================================================================
# Fresh mailbox users: a test that takes one is the only test ever to use that
# mailbox, so a letter it leaves behind (a failure, a letter still held in the
# Postfix queue) can never turn up in another test's mailbox.
# ============================================================================


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


# ============================================================================
# Mail path (tests/mailpath.py): submission Postfix -> MX Postfix with rspamd ->
# Dovecot with sieve, and the DNS server rspamd asks. Started only by the tests
# that ask for it, once per session. path.mailbox (user1) is for end-to-end
# tests of the exporter; tests/test_mailpath.py uses user2 and user3.
# ============================================================================


@pytest.fixture(scope="session")
def mail_path() -> Iterator[MailPath]:
    """A started MailPath with user1..user3@example.test, stopped at session end."""
    with MailPath(users=3) as path:
        yield path


# ============================================================================
# End of mail path block.
# ============================================================================

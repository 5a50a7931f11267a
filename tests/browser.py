"""Headless Chromium for the console's tests: Debian's /usr/bin/chromium driven by Playwright (no browser
download: ``playwright install`` is never run). The flags keep it from reaching out to the network
(this machine has none: without them it tries Google's update, sync and field-trial servers)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",  # the tests run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
SCREENSHOTS_ENV = "CONSOLE_SCREENSHOTS"  # a folder to copy the screenshots to as well (docs/console/)


@contextmanager
def chromium() -> Iterator[Browser]:
    """Chromium, headless, with a fresh profile (Playwright makes a temporary --user-data-dir and removes it)."""
    if not Path(CHROMIUM).exists():
        raise AssertionError(f"{CHROMIUM} is missing: scripts/install-deps installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, directory: Path, name: str, full_page: bool = True) -> Path:
    """A PNG of the page (or of what the window shows) among the test's artefacts (and in
    $CONSOLE_SCREENSHOTS, if set)."""
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")
    extra = os.environ.get(SCREENSHOTS_ENV)
    if extra:
        shutil.copy(path, Path(extra) / path.name)
    return path

"""A headless Chromium for the web UI tests, driven by Playwright. It is Debian's own
browser: `playwright install` downloads one, which this network does not allow. A bare CI
machine (Debian, root) gets it from apt; where that cannot work the test fails, saying why."""

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APT_TIMEOUT_S = 600


def _apt_get(*args: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"`{' '.join(command)}` failed:\n{result.stderr[-2000:]}", pytrace=False)


def ensure_chromium() -> Path:
    """/usr/bin/chromium, installed with apt-get when it is missing."""
    if CHROMIUM.exists():
        return CHROMIUM
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(
            f"the web UI tests need Chromium at {CHROMIUM}: install Debian's `chromium` "
            "package (this machine has no apt-get or is not root)",
            pytrace=False,
        )
    _apt_get("update")
    _apt_get("install", "-y", "--no-install-recommends", "chromium")
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium, yet {CHROMIUM} is missing", pytrace=False)
    return CHROMIUM


@contextmanager
def chromium() -> Iterator[Browser]:
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()

"""Headless Chromium for the browser tests, driven by Debian's chromedriver, that can reach no host but 127.0.0.1.

Import it after `pytest.importorskip("selenium.webdriver")`, so a module that needs it skips where
selenium is absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from tests.integration.conftest import require_service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_TIMEOUT = 20.0
# Every host name but 127.0.0.1 fails to resolve: a page that needed a CDN would not render.
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
)


def chromium_options(profile: str) -> webdriver.ChromeOptions:
    """Options for a headless Chromium with its profile in `profile`, logging the console and the network."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return options


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    """A headless Chromium with a throwaway profile; skips (or fails, with RUNNER_REQUIRE_SERVICES=1) without one."""
    found = CHROMIUM if Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists() else None
    require_service(found, "chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not try to download a driver
    profile = tempfile.mkdtemp(prefix="runner-chromium-")
    try:
        driver = webdriver.Chrome(options=chromium_options(profile), service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(PAGE_TIMEOUT)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)

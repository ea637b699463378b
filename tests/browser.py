"""Headless Debian Chromium driven through its ChromeDriver (Selenium), for tests of the project's web pages."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from tests.system_tools import require_tool

INSTALL = "apt-get install -y chromium chromium-driver"
# No network beyond localhost here: without these, Chromium keeps trying Google's hosts at every start.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--window-size=1200,900")


@contextmanager
def headless_chromium() -> Iterator[object]:
    """A `selenium.webdriver.Chrome` on the system's Chromium with a fresh profile; quit on exit."""
    chromium = require_tool("chromium", INSTALL)
    chromedriver = require_tool("chromedriver", INSTALL)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # Both paths given: Selenium Manager has nothing to look up or download.
        driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        try:
            yield driver
        finally:
            driver.quit()

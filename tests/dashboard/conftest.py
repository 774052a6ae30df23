"""Fixtures of the dashboard tests; the helpers they use are in dashboard_support.py.

One headless Chromium for the whole session, driven by Selenium through Debian's /usr/bin/chromedriver
(nothing is downloaded); engines with a listener opened per test and closed after it.
"""

from __future__ import annotations

import os
import shutil

import pytest

from dashboard_support import CHROMEDRIVER, CHROMIUM, LAPTOP, Dashboard, Trackers


@pytest.fixture
def trackers():
    t = Trackers()
    yield t
    t.close_all()


def _need(path: str, package: str) -> None:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        message = f"{path} is missing: the browser tests need Debian's {package} (scripts/setup.sh installs it)"
        if os.environ.get("PROGRESS_SKIP_BROWSER_TESTS") == "1":
            pytest.skip(message)
        pytest.fail(message + "; set PROGRESS_SKIP_BROWSER_TESTS=1 to skip them", pytrace=False)


@pytest.fixture(scope="session")
def driver():
    _need(CHROMIUM, "chromium")
    _need(CHROMEDRIVER, "chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--force-color-profile=srgb",
        "--hide-scrollbars",
        f"--window-size={LAPTOP[0]},{LAPTOP[1]}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    d.set_page_load_timeout(15)
    d.set_script_timeout(10)
    yield d
    d.quit()


@pytest.fixture
def dash(driver):
    """The shared browser at laptop size, on a blank page, its console drained."""
    driver.set_window_size(*LAPTOP)
    driver.get("about:blank")
    d = Dashboard(driver)
    d.console()
    yield d
    d.reset_viewport()
    driver.get("about:blank")  # closes the page's WebSocket before the test's engines close


@pytest.fixture
def preview_dir(tmp_path):
    path = tmp_path / "previews"
    path.mkdir()
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)



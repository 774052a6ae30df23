"""Helpers of the dashboard tests (conftest.py holds the fixtures): real engines with a listener (the Python binding over
libProgressEngine.so) and one headless Chromium, driven by Selenium through Debian's system chromedriver.

Nothing is downloaded: the driver is /usr/bin/chromedriver and the browser /usr/bin/chromium (scripts/setup.sh
installs both). Every wait is explicit and bounded (WebDriverWait), so a broken page fails a test instead of
hanging the suite. Screenshots go to artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
sys.path.insert(0, str(ROOT / "tests"))
from live_support import http  # noqa: E402,F401 (re-exported for the tests; puts the binding on sys.path)

from progress_engine import EngineIOError, ProgressTracker  # noqa: E402

CHROMIUM = os.environ.get("PROGRESS_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PROGRESS_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 10.0
LAPTOP = (1280, 900)
PHONE = (390, 844)


class Trackers:
    """Opens engines with a listener and closes them all at the end of the test."""

    def __init__(self) -> None:
        self.open: List[ProgressTracker] = []

    def __call__(self, port: int = 0, **config: Any) -> ProgressTracker:
        deadline = time.monotonic() + 5
        while True:
            try:
                tracker = ProgressTracker(listen=f"127.0.0.1:{port}", **config)
                break
            except EngineIOError:
                # Reopening the port of a listener that just closed: give the kernel a moment.
                if port == 0 or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.open.append(tracker)
        return tracker

    def close_all(self) -> None:
        for tracker in self.open:
            tracker.close()


class Dashboard:
    """The page under test in the shared browser, with the waits the tests need."""

    def __init__(self, driver) -> None:
        self.driver = driver

    # ---- navigation and waits ----

    def open(self, tracker: ProgressTracker, token: Optional[str] = None, wait_live: bool = True) -> None:
        url = tracker.url + "/" + (f"?token={token}" if token is not None else "")
        self.driver.get(url)
        if wait_live:
            self.wait(lambda: self.conn_state() == "live", "the page to connect")

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        def check(_):
            try:
                return condition()
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(check)
        except TimeoutException:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; connection: "
                                 f"{self.conn_text()!r}, console: {self.console()}") from None

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    # ---- reading the page ----

    def conn_state(self) -> str:
        return self.js("return document.getElementById('conn').dataset.state")

    def conn_text(self) -> str:
        return self.js("return document.getElementById('conn').textContent")

    def card(self, task_id: str):
        """The task's card element, or None (found by its data attribute, compared in JS: any id works)."""
        return self.js(
            "for (const c of document.querySelectorAll('article.task')) if (c.dataset.taskId === arguments[0]) return c;"
            " return null;",
            task_id,
        )

    def wait_card(self, task_id: str, what: str = "", timeout: float = WAIT_S):
        return self.wait(lambda: self.card(task_id), what or f"the card of {task_id!r}", timeout)

    def card_info(self, task_id: str) -> Optional[Dict[str, Any]]:
        return self.js(
            """
            let card = null;
            for (const c of document.querySelectorAll('article.task')) if (c.dataset.taskId === arguments[0]) card = c;
            if (!card) return null;
            const q = (s) => card.querySelector(s);
            const err = q('.task-error');
            return {
              status: card.dataset.status,
              progress: Number(card.dataset.progress),
              title: q('.task-id').textContent,
              pct: q('.pct').textContent,
              stage: q('.stage').textContent,
              msg: q('.msg').textContent,
              error: err.hidden ? null : err.textContent,
              eta: q('.eta').textContent,
              elapsed: q('.elapsed').textContent,
              selected: card.getAttribute('aria-current'),
              batch: card.closest('section.batch') ? card.closest('section.batch').dataset.batchId : null,
            };
            """,
            task_id,
        )

    def segments(self, task_id: str) -> List[Dict[str, Any]]:
        return self.js(
            """
            let card = null;
            for (const c of document.querySelectorAll('article.task')) if (c.dataset.taskId === arguments[0]) card = c;
            const bar = card.querySelector('.bar');
            const total = bar.getBoundingClientRect().width;
            return Array.from(bar.querySelectorAll('.seg')).map((s) => ({
              stage: Number(s.dataset.stage), weight: Number(s.dataset.weight), status: s.dataset.status,
              width: s.getBoundingClientRect().width, total: total,
              inner: s.getBoundingClientRect().width - parseFloat(getComputedStyle(s).borderRightWidth),
              fill: s.querySelector('.seg-fill').getBoundingClientRect().width,
            }));
            """,
            task_id,
        )

    def task_shown(self, task_id: str):
        """The task's card, or its row in the table (drawn only while in view), or None."""
        return self.js(
            "for (const c of document.querySelectorAll('article.task, .vt-row:not([hidden])'))"
            " if (c.dataset.taskId === arguments[0]) return c; return null;",
            task_id,
        )

    def rows(self) -> List[Dict[str, Any]]:
        """The table's drawn rows, top to bottom: what each shows."""
        return self.js(
            """
            return Array.from(document.querySelectorAll('.vt-row:not([hidden])'))
              .map((r) => ({index: Number(r.getAttribute('aria-rowindex')), id: r.dataset.taskId,
                            status: r.dataset.status, template: r.querySelector('.c-template').textContent,
                            pct: r.querySelector('.mini-pct').textContent, stage: r.querySelector('.c-stage').textContent,
                            eta: r.querySelector('.c-eta').textContent, active: r.dataset.active === 'true',
                            top: r.getBoundingClientRect().top, bottom: r.getBoundingClientRect().bottom}))
              .sort((a, b) => a.index - b.index);
            """)

    def row(self, task_id: str):
        return self.js("for (const r of document.querySelectorAll('.vt-row:not([hidden])'))"
                       " if (r.dataset.taskId === arguments[0]) return r; return null;", task_id)

    def chart_points(self, box_id: str, series: str) -> List[List[float]]:
        """A chart's series read back in data units ([x in ms, y]) from its SVG coordinates and axis ranges."""
        return self.js(
            """
            const svg = document.querySelector('#' + arguments[0] + ' svg');
            const line = svg.querySelector('polyline.' + arguments[1]);
            const dots = Array.from(svg.querySelectorAll('circle.' + arguments[1]));
            const [l, t, w, h] = svg.dataset.plot.split(',').map(Number);
            const d = svg.dataset, x0 = Number(d.x0), x1 = Number(d.x1), y0 = Number(d.y0), y1 = Number(d.y1);
            const pts = line ? line.getAttribute('points').split(' ').map((p) => p.split(',').map(Number))
                             : dots.map((c) => [Number(c.getAttribute('cx')), Number(c.getAttribute('cy'))]);
            return pts.map(([x, y]) => [x0 + (x - l) / w * (x1 - x0), y0 + (t + h - y) / h * (y1 - y0)]);
            """,
            box_id, series,
        )

    def console(self) -> List[Dict[str, Any]]:
        """Browser console entries since the last call (reading drains them)."""
        return self.driver.get_log("browser")

    def console_errors(self, allow: Iterable[str] = ()) -> List[str]:
        allow = tuple(allow)
        return [e["message"] for e in self.console()
                if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)]

    def viewport(self, width: int, height: int, mobile: bool = False) -> None:
        """Emulates a viewport of exactly this size (a headless window has a minimum width)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})

    def reset_viewport(self) -> None:
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def overflowing(self) -> List[str]:
        """Elements that stick out of the viewport's width (a page that scrolls sideways)."""
        return self.js(
            "const w = document.documentElement.clientWidth; return Array.from(document.querySelectorAll('body *'))"
            ".filter(e => e.getClientRects().length && e.getBoundingClientRect().right > w + 0.5)"
            ".map(e => e.tagName.toLowerCase() + '.' + e.getAttribute('class') + ' right=' +"
            " Math.round(e.getBoundingClientRect().right)).slice(0, 10)")

    def screenshot(self, name: str, max_height: int = 3000) -> Path:
        """The whole page (up to max_height CSS pixels) as PNG in artifacts/."""
        import base64

        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        size = self.js("return [document.documentElement.clientWidth,"
                       " Math.max(document.documentElement.scrollHeight, window.innerHeight)]")
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size[0], "height": min(size[1], max_height), "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def tab_to(dash: Dashboard, element, backwards: bool = False, limit: int = 30) -> None:
    """Presses Tab (or Shift+Tab) until `element` has the focus."""
    import pytest
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(limit):
        if backwards:
            ActionChains(dash.driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
        else:
            ActionChains(dash.driver).send_keys(Keys.TAB).perform()
        if dash.js("return document.activeElement === arguments[0]", element):
            return
    pytest.fail(f"{element} cannot be reached with {'Shift+' if backwards else ''}Tab")


def gradient(width: int = 96, height: int = 64) -> tuple:
    """An RGB test image as a (bytes, width, height, channels) tuple."""
    pixels = bytearray()
    for y in range(height):
        for x in range(width):
            pixels += bytes((x * 255 // (width - 1), y * 255 // (height - 1), 160))
    return bytes(pixels), width, height, 3

"""The dashboard on the task listing (docs/API.md, "Task listing"; docs/DASHBOARD.md, "Pages and filters") and its
Cancel buttons (docs/API.md, "Cancel"), in headless Chromium against real engines: pages of 1,000 tasks, the server's
filters (status, template, text in the id), a fleet's finished tasks, and a cancel request from a card and from a
task's page reaching the runner.
"""

from __future__ import annotations

import time

import pytest

from dashboard_support import ARTIFACTS
from live_support import RedisServer, wait_until
from progress_engine import ProgressTracker

PAGE_SIZE = 1000  # app.js


def order(dash) -> list:
    return dash.js("return window.progressDashboard.order")


def pager(dash) -> dict:
    return dash.js("""
        const b = (id) => document.getElementById(id).disabled;
        return {label: document.getElementById('page-label').textContent, newest: b('page-newest'),
                newer: b('page-newer'), older: b('page-older'),
                state: document.getElementById('pager').dataset.state,
                shown: document.getElementById('shown').textContent};""")


def choose(dash, select_id: str, value: str) -> None:
    dash.js("const s = document.getElementById(arguments[0]); s.value = arguments[1];"
            " s.dispatchEvent(new Event('change'))", select_id, value)


def click(dash, element_id: str) -> None:
    dash.js("document.getElementById(arguments[0]).click()", element_id)


def test_pages_of_the_listing_with_the_servers_filters(dash, trackers):
    tracker = trackers(retention_seconds=3600)
    n = PAGE_SIZE + 20
    for i in range(n):
        tracker.create_task_progress_sync(f"p-{i:04d}", "alpha" if i % 2 == 0 else "beta", timestamp=1_000 + i)
    dash.open(tracker)
    newest = [f"p-{i:04d}" for i in range(n - 1, -1, -1)]
    dash.wait(lambda: order(dash) == newest[:PAGE_SIZE], "the first page: the newest 1,000")
    assert pager(dash) == {"label": "Page 1", "newest": True, "newer": True, "older": False, "state": "idle",
                           "shown": f"{PAGE_SIZE} tasks on this page"}
    # A task created now is newer than every listed one: it appears at the top of the first page, live.
    tracker.create_task_progress_sync("p-late", "alpha")
    dash.wait(lambda: order(dash)[:2] == ["p-late", newest[0]], "the new task at the top of the first page")

    click(dash, "page-older")
    dash.wait(lambda: order(dash) == newest[PAGE_SIZE:], "the second page: the oldest 20")
    assert pager(dash)["label"] == "Page 2" and pager(dash)["older"] and not pager(dash)["newer"]
    assert dash.rows()[0]["id"] == newest[PAGE_SIZE]
    # Its tasks stay live.
    tracker.update_progress_sync("p-0005", 3, 30, "Step 3/30")
    dash.wait(lambda: [r["status"] for r in dash.rows() if r["id"] == "p-0005"] == ["executing"], "a live row on page 2")

    click(dash, "page-newer")
    # Read again: the new task is on it now, so the page ends one task earlier.
    dash.wait(lambda: order(dash) == ["p-late"] + newest[:PAGE_SIZE - 1], "the first page again")

    # Filters go to the server: the template's 260 tasks fit one page; text in the id narrows them, in any case.
    choose(dash, "filter-template", "beta")
    beta = [i for i in newest if int(i[2:]) % 2 == 1]
    dash.wait(lambda: order(dash) == beta, "the beta tasks")
    assert pager(dash)["older"] and pager(dash)["shown"] == f"{len(beta)} of {n + 1} tasks"
    dash.driver.find_element("id", "filter-text").send_keys("P-00")
    dash.wait(lambda: order(dash) == [i for i in beta if i.startswith("p-00")], "beta tasks with p-00 in the id")
    dash.driver.find_element("id", "filter-text").clear()
    dash.js("document.getElementById('filter-text').dispatchEvent(new Event('input'))")
    choose(dash, "filter-template", "")
    choose(dash, "filter-status", "executing")
    dash.wait(lambda: order(dash) == ["p-0005"], "the executing task, from the second page's place")
    assert dash.console_errors() == []


def test_a_fleets_finished_tasks_come_from_the_listing(dash, tmp_path):
    """Runner A (no listener) finished its tasks before listener B started: B's dashboard lists them with B's own,
    in creation order, with their final states, and the status filter picks A's failed ones."""
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
            for i in range(12):
                a.create_task_progress_sync(f"done-{i:02d}", "render")
                time.sleep(0.002)  # distinct creation times: the order is checked below
                if i % 3 == 0:
                    a.fail_task_sync(f"done-{i:02d}", "out of memory")
                else:
                    a.complete_task_sync(f"done-{i:02d}")
            wait_until(lambda: a.stats_sync()["redis_queue_depth"] == 0 and a.stats_sync()["redis_connected"] == 1, timeout=10, what="A's writes in Redis")
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as b:
            b.create_task_progress_sync("own-task", "render")
            dash.open(b)
            click(dash, "view-table")
            dash.wait(lambda: len(order(dash)) == 13, "B's task and A's twelve")
            assert order(dash) == ["own-task"] + [f"done-{i:02d}" for i in range(11, -1, -1)]
            choose(dash, "filter-status", "failed")
            dash.wait(lambda: order(dash) == ["done-09", "done-06", "done-03", "done-00"], "A's failed tasks")
            row = [r for r in dash.rows() if r["id"] == "done-06"][0]
            assert row["status"] == "failed"
    finally:
        redis.stop()
    assert dash.console_errors() == []


def test_cancel_from_a_card_and_from_a_tasks_page(dash, trackers):
    tracker = trackers(resource_interval_ms=3600000)
    tracker.create_task_progress_sync("cancel-card", "sdxl")
    tracker.update_progress_sync("cancel-card", 2, 30, "Step 2/30")
    tracker.create_task_progress_sync("cancel-page", "sdxl")
    tracker.update_progress_sync("cancel-page", 4, 30, "Step 4/30")
    dash.open(tracker)
    button = lambda task_id: dash.js(  # noqa: E731
        "for (const c of document.querySelectorAll('article.task')) if (c.dataset.taskId === arguments[0]) {"
        " const b = c.querySelector('.cancel-btn'); return {hidden: b.hidden, disabled: b.disabled, text: b.textContent}; }"
        " return null;", task_id)
    dash.wait(lambda: button("cancel-card") == {"hidden": False, "disabled": False, "text": "Cancel"}, "a Cancel button")

    # From the card: the request is recorded, shown, and reaches the runner; the engine does not stop the task.
    dash.js("for (const c of document.querySelectorAll('article.task')) if (c.dataset.taskId === 'cancel-card')"
            " c.querySelector('.cancel-btn').click()")
    wait_until(lambda: tracker.cancel_requested("cancel-card"), what="the request in the runner's engine")
    dash.wait(lambda: button("cancel-card") == {"hidden": False, "disabled": True, "text": "Cancel requested"},
              "the card showing the standing request")
    assert dash.card_info("cancel-card")["status"] == "executing"
    assert dash.card_info("cancel-page")["status"] == "executing"  # only the one asked for
    assert not tracker.cancel_requested("cancel-page")
    tracker.cancel_task_sync("cancel-card", "cancelled from the dashboard")
    dash.wait(lambda: dash.card_info("cancel-card")["status"] == "cancelled", "the runner's answer")
    assert button("cancel-card")["hidden"]
    assert dash.card_info("cancel-card")["error"] == "Cancelled: cancelled from the dashboard"

    # From the task's page.
    dash.driver.get(dash.driver.current_url.split("#")[0] + "#/task/cancel-page")
    dash.wait(lambda: dash.js("return !document.getElementById('tv-cancel').hidden"), "the page's Cancel button")
    click(dash, "tv-cancel")
    wait_until(lambda: tracker.cancel_requested("cancel-page"), what="the request from the task's page")
    dash.wait(lambda: dash.js("return document.getElementById('tv-cancel').textContent") == "Cancel requested",
              "the page showing the request")
    assert tracker.get_task_progress_sync("cancel-page")["cancel_reason"] == "cancelled from the dashboard"
    ARTIFACTS.mkdir(exist_ok=True)
    dash.driver.save_screenshot(str(ARTIFACTS / "dashboard-cancel-requested.png"))
    tracker.cancel_task_sync("cancel-page", "stopped")
    dash.wait(lambda: dash.js("return document.getElementById('tv-cancel').hidden"), "no button once cancelled")
    assert dash.console_errors() == []


def test_a_refused_cancel_is_said_and_changes_nothing(dash, trackers):
    tracker = trackers(resource_interval_ms=3600000)
    tracker.create_task_progress_sync("finished", "sdxl")
    state = tracker.get_task_progress_sync("finished")
    tracker.complete_task_sync("finished")
    dash.open(tracker)
    dash.wait(lambda: dash.card_info("finished") and dash.card_info("finished")["status"] == "completed", "the card")
    # The page's state is behind (as when the task finished while the button was clicked): still queued there.
    dash.js("window.progressDashboard.ingest({type: 'progress.update', task_id: 'finished', seq: 1, data: arguments[0]})",
            state)
    dash.wait(lambda: dash.card_info("finished")["status"] == "queued", "the stale state on the card")
    dash.js("for (const c of document.querySelectorAll('article.task')) if (c.dataset.taskId === 'finished')"
            " c.querySelector('.cancel-btn').click()")
    dash.wait(lambda: "already finished" in dash.js("return document.getElementById('banner').textContent"),
              "the refusal in the banner")
    assert dash.js("return document.getElementById('banner').dataset.kind") == "warn"
    assert tracker.get_task_progress_sync("finished")["status"] == "completed"
    assert dash.console_errors() == []


@pytest.fixture(autouse=True)
def _forget_view(dash):
    yield
    dash.js("localStorage.clear()")

"""The table view (virtualised, sorted, filtered), a task's page (#/task/<id>: stage timeline, progress, step rate,
ETA against the actual end, resources, previews, log) and the way between them by mouse, keyboard and link, at
laptop and phone width, against real engines.

Charts are read back in data units from their SVG (dashboard_support.Dashboard.chart_points) and compared with the
listener's own history route, so a chart that drew other numbers fails.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from urllib.parse import quote

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from dashboard_support import LAPTOP, PHONE, gradient, http, tab_to

CUSTOM_STAGES = [
    {"name": "preprocessing", "description": "Preparing data", "weight": 0.2},
    {"name": "analysis", "description": "Analyzing content", "weight": 0.3},
    {"name": "synthesis", "description": "Synthesizing output", "weight": 0.4},
    {"name": "validation", "description": "Validating results", "weight": 0.1},
]


def ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def duration(seconds: float) -> str:
    """The page's formatDuration."""
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    s = round(seconds)
    h, m, sec = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def rest(tracker, path: str):
    r = http(tracker.port, "/api/v1/progress/tasks/" + quote(path, safe="/?=&"))
    assert r.status == 200, (path, r.status, r.body[:200])
    return json.loads(r.body)


def pick_view(dash, view: str) -> None:
    dash.js("document.getElementById(arguments[0]).click()", "view-" + view)
    dash.wait(lambda: dash.js("return window.progressDashboard.view") == view, f"the {view} view")


def forget_view(dash) -> None:
    """The picked view is remembered per origin; a later test on a reused port must start from the default."""
    dash.js("localStorage.clear()")


def row_capacity(dash) -> int:
    """How many rows the table may draw: those in view and the overscan above and below (OVERSCAN in app.js)."""
    h, row_h = dash.js("const v = document.getElementById('vt-viewport');"
                       " return [v.clientHeight, parseFloat(getComputedStyle(v).getPropertyValue('--row-h'))]")
    return math.ceil(h / row_h) + 1 + 2 * 6


def test_the_table_is_the_default_for_a_fleet_and_draws_only_the_rows_in_view(dash, trackers):
    tracker = trackers(retention_seconds=3600)
    for i in range(25):
        tracker.create_task_progress_sync(f"t-{i:04d}", "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    dash.wait(lambda: dash.js("return window.progressDashboard.view") == "table" and dash.rows(), "the table")
    # Rows from the top, enough to fill the viewport and no more than it and the overscan.
    dash.wait(lambda: [r["id"] for r in dash.rows()][:2] == ["t-0024", "t-0023"], "the newest rows")
    in_view = dash.js("const v = document.getElementById('vt-viewport');"
                      " return Math.floor(v.clientHeight / parseFloat(getComputedStyle(v).getPropertyValue('--row-h')))")
    assert min(25, in_view) <= len(dash.rows()) <= row_capacity(dash)
    assert dash.js("return document.querySelectorAll('article.task').length") == 0
    nodes_small = dash.js("return document.getElementsByTagName('*').length")

    for i in range(25, 2000):
        tracker.create_task_progress_sync(f"t-{i:04d}", "video-gen-v1", "video_generation")
    dash.wait(lambda: dash.js("return document.getElementById('shown').textContent") == "2000 tasks", "2000 tasks",
              timeout=30)
    rows = dash.rows()
    # Newest first, and only the rows in view (plus the overscan): the page's nodes do not grow with the fleet.
    assert [r["id"] for r in rows[:3]] == ["t-1999", "t-1998", "t-1997"]
    assert len(rows) <= row_capacity(dash)
    nodes_large = dash.js("return document.getElementsByTagName('*').length")
    assert nodes_large <= nodes_small + 20 * row_capacity(dash), (nodes_small, nodes_large)
    assert nodes_large < 1500, nodes_large

    # Scrolled to the end: the oldest task, still only a window of rows, laid out in order without gaps.
    dash.js("const v = document.getElementById('vt-viewport'); v.scrollTop = v.scrollHeight")
    dash.wait(lambda: dash.rows() and dash.rows()[-1]["id"] == "t-0000", "the oldest task at the bottom")
    rows = dash.rows()
    assert len(rows) <= row_capacity(dash)
    assert [r["index"] for r in rows] == list(range(rows[0]["index"], rows[0]["index"] + len(rows)))
    assert all(abs(b["top"] - a["bottom"]) < 1.5 for a, b in zip(rows, rows[1:]))

    # A visible row follows its task live.
    tracker.update_progress_sync("t-0000", 15, 30, "Step 15/30")
    want = tracker.get_task_progress_sync("t-0000")["overall_progress"]
    dash.wait(lambda: (dash.rows()[-1]["pct"], dash.rows()[-1]["status"]) == (f"{want:.1f} %", "executing"),
              "the live row")
    assert dash.rows()[-1]["stage"] == "generation (3/4)"
    assert dash.console_errors() == []


def test_the_picked_view_is_remembered(dash, trackers):
    tracker = trackers()
    for i in range(3):
        tracker.create_task_progress_sync(f"few-{i}", "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    dash.wait(lambda: dash.js("return document.querySelectorAll('article.task').length") == 3, "three cards")
    assert dash.js("return window.progressDashboard.view") == "cards"
    assert dash.js("return document.getElementById('view-cards').getAttribute('aria-pressed')") == "true"
    try:
        pick_view(dash, "table")
        dash.wait(lambda: len(dash.rows()) == 3, "three rows")
        assert dash.js("return document.querySelectorAll('article.task').length") == 0
        dash.open(tracker)
        dash.wait(lambda: len(dash.rows()) == 3, "the table again after a reload")
        assert dash.js("return document.getElementById('view-table').getAttribute('aria-pressed')") == "true"
        pick_view(dash, "cards")
        dash.wait(lambda: dash.card_info("few-2") is not None, "the cards back")
        assert dash.js("return document.querySelectorAll('.vt-row').length") == 0  # no row left behind
        assert dash.card_info("few-1")["status"] == "queued"
        dash.open(tracker)
        dash.wait(lambda: dash.js("return document.querySelectorAll('article.task').length") == 3, "cards after reload")
        assert dash.rows() == []
    finally:
        forget_view(dash)
    assert dash.console_errors() == []


def ingest_eta(dash, state: dict, task_id: str, eta_seconds, seq: int = 5) -> None:
    """A state with a fed ETA, as the listener sends it, handed to the page's message handler."""
    data = dict(state, task_id=task_id, status="executing", eta_seconds=eta_seconds, eta_confidence=0.5,
                eta=None, updated_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + ".000Z")
    dash.js("window.progressDashboard.ingest({type: 'progress.update', task_id: arguments[0], seq: arguments[1],"
            " data: arguments[2]})", task_id, seq, data)


def test_sorting_by_status_updated_and_eta_and_filtering(dash, trackers):
    tracker = trackers()
    tracker.create_task_progress_sync("s-queued", "audio-gen", "audio_generation")
    tracker.create_task_progress_sync("s-exec", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("s-exec", 5, 30, "Step 5/30")
    tracker.create_task_progress_sync("s-done", "stable-diffusion-xl", "image_generation")
    tracker.complete_task_sync("s-done")
    tracker.create_task_progress_sync("s-failed", "video-gen-v1", "video_generation")
    tracker.fail_task_sync("s-failed", "boom")
    dash.open(tracker)
    try:
        pick_view(dash, "table")
        dash.wait(lambda: len(dash.rows()) == 4, "four rows")
        order = lambda: dash.js("return window.progressDashboard.order")  # noqa: E731
        drawn = lambda: [r["id"] for r in dash.rows()]  # noqa: E731
        assert order() == ["s-failed", "s-done", "s-exec", "s-queued"]  # newest first
        assert drawn() == order()

        dash.js("const s = document.getElementById('sort'); s.value = 'status'; s.dispatchEvent(new Event('change'))")
        dash.wait(lambda: drawn() == ["s-failed", "s-exec", "s-queued", "s-done"], "sorted by status")
        assert dash.js("return document.querySelector('.vt-head .c-status').getAttribute('aria-sort')") == "ascending"

        # Last updated first: the queued task moves to the top (live sorts reorder at most once a second).
        dash.js("const s = document.getElementById('sort'); s.value = 'updated'; s.dispatchEvent(new Event('change'))")
        time.sleep(0.05)
        tracker.update_progress_sync("s-queued", 1, 30, "Step 1/30")
        dash.wait(lambda: drawn()[0] == "s-queued", "the updated task first", timeout=5)

        # ETA: soonest first, tasks without an ETA after every task with one; the header reverses it.
        state = tracker.get_task_progress_sync("s-exec")
        for task_id, eta in (("e-300", 300.0), ("e-30", 30.0), ("e-3000", 3000.0)):
            ingest_eta(dash, state, task_id, eta)
        dash.js("document.querySelector('.vt-head button[data-sort=eta]').click()")
        with_eta = lambda: [i for i in drawn() if i.startswith("e-")]  # noqa: E731
        def etas_first():
            shown = [r["eta"] for r in dash.rows()]
            known = [e not in ("—", "Done") for e in shown]
            return known == sorted(known, reverse=True)

        dash.wait(lambda: with_eta() == ["e-30", "e-300", "e-3000"], "sorted by ETA")
        assert etas_first()
        assert [r["eta"] for r in dash.rows() if r["id"] == "e-30"][0] in ("0:30", "0:29", "0:28")
        dash.js("document.querySelector('.vt-head button[data-sort=eta]').click()")
        dash.wait(lambda: with_eta() == ["e-3000", "e-300", "e-30"], "sorted by ETA, latest first")
        assert etas_first()  # no ETA sorts last either way
        assert dash.js("return document.querySelector('.vt-head .c-eta').getAttribute('aria-sort')") == "descending"

        # Filters: by status, and by text in the id or template.
        dash.js("const s = document.getElementById('filter-status'); s.value = 'failed';"
                " s.dispatchEvent(new Event('change'))")
        dash.wait(lambda: drawn() == ["s-failed"], "only the failed task")
        assert dash.js("return document.getElementById('shown').textContent") == "1 of 7 tasks"
        dash.js("const s = document.getElementById('filter-status'); s.value = '';"
                " s.dispatchEvent(new Event('change'))")
        dash.wait(lambda: dash.js("return Array.from(document.getElementById('filter-template').options)"
                                  ".map(o => o.value)") == ["", "audio-gen", "stable-diffusion-xl", "video-gen-v1"],
                  "the templates seen as the template filter's choices")
        dash.js("const s = document.getElementById('filter-template'); s.value = 'audio-gen';"
                " s.dispatchEvent(new Event('change'))")
        dash.wait(lambda: drawn() == ["s-queued"], "the template filter")
        dash.js("const s = document.getElementById('filter-template'); s.value = '';"
                " s.dispatchEvent(new Event('change'))")
        dash.driver.find_element("id", "filter-text").send_keys("S-E")
        dash.wait(lambda: sorted(drawn()) == ["s-exec"], "the text filter on the id, in any case")
    finally:
        forget_view(dash)
    assert dash.console_errors() == []


def run_steps(tracker, task_id: str, steps, total: int, pause: float) -> None:
    for step in steps:
        tracker.update_progress_sync(task_id, step, total, f"Step {step}/{total}")
        time.sleep(pause)


def check_charts_match_history(dash, tracker, task_id: str) -> dict:
    """The page's charts and stage table against the listener's history and state; returns the state."""
    history = rest(tracker, f"{task_id}/history")["events"]
    state = rest(tracker, task_id)
    dash.wait(lambda: dash.js("return Number(document.getElementById('task-view').dataset.lastSeq || 0)")
              >= history[-1]["seq"], "the history on the page")
    # Every event of the history is a point of the chart. The page may hold more: it reads only the events after
    # the last it has, and the engine may since have thinned a run of steps it had already sent.
    dash.wait(lambda: len(dash.chart_points("tv-progress", "s-progress")) >= len(history), "the progress chart")
    points = dash.chart_points("tv-progress", "s-progress")
    assert [p[0] for p in points] == sorted(p[0] for p in points)
    for e in history:
        at = ms(e["timestamp"])
        # Within a few ms and 0.15 % at this scale (the SVG keeps two decimals of a pixel).
        assert any(abs(x - at) < 25 and abs(y - e["overall_progress"]) < 0.15 for x, y in points), (e, points)
    # Stage table: weight, start (from the task's start), duration, as the state says.
    start = ms(state["created_at"])
    rows = dash.js("return Array.from(document.querySelectorAll('#tv-stages-body tr')).map(r =>"
                   " Array.from(r.cells).map(c => c.textContent))")
    assert len(rows) == len(state["stages"])
    for i, row in enumerate(rows):
        s = state["stages"][str(i)]
        assert row[0] == s["name"]
        assert row[1] == f"{round(s['weight'] * 1000) / 10:g} %"
        if s["started_at"]:
            assert row[2] == "+" + duration((ms(s["started_at"]) - start) / 1000)
        if s["duration"] is not None:
            assert row[3] == duration(s["duration"])
    # Timeline: one bar per started stage, from its start.
    bars = dash.js("return Array.from(document.querySelectorAll('#tv-timeline rect.stage-bar')).map(b =>"
                   " [Number(b.dataset.stage), Number(b.dataset.start), Number(b.dataset.end)])")
    started = [i for i in range(len(state["stages"])) if state["stages"][str(i)]["started_at"]]
    assert [b[0] for b in bars] == started
    for stage, begin, end in bars:
        s = state["stages"][str(stage)]
        assert begin == pytest.approx(ms(s["started_at"]), abs=1)
        if s["completed_at"]:
            assert end == pytest.approx(ms(s["completed_at"]), abs=1)
    return state


def test_task_page_of_a_running_task(dash, trackers, preview_dir):
    tracker = trackers(preview_dir=preview_dir, resource_interval_ms=50)
    tracker.register_template_stages_sync("custom", CUSTOM_STAGES)
    tracker.create_task_progress_sync("run-1", "custom", "custom")
    tracker.create_task_progress_sync("other", "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    try:
        pick_view(dash, "table")
        tracker.update_stage_sync("run-1", 0, progress=1.0, message="prepared")
        tracker.log_sync("run-1", "info", "data prepared")
        tracker.update_stage_sync("run-1", 1, progress=0.5, message="half analysed")
        time.sleep(0.3)
        tracker.update_stage_sync("run-1", 2, progress=0.1, message="synthesis")
        for i in range(2, 9):
            tracker.update_stage_sync("run-1", 2, progress=i / 10, message=f"synthesis {i}")
            tracker.send_event_sync("run-1", "resources", {"gpu_percent": 40 + 5 * i, "gpu_memory_mb": 4096})
            if i == 5:
                tracker.update_preview_sync("run-1", gradient(64, 64))
            time.sleep(0.3)
        tracker.log_sync("run-1", "warning", "VRAM at 91 %")
        dash.wait(lambda: dash.row("run-1"), "the row")
        dash.row("run-1").click()
        dash.wait(lambda: dash.js("return !document.getElementById('task-view').hidden"), "the task's page")
        assert dash.js("return location.hash") == "#/task/run-1"
        assert dash.driver.title == "run-1 — ProgressEngine"
        assert dash.js("return document.getElementById('tv-title').textContent") == "run-1"
        assert dash.js("return document.getElementById('analytics').getClientRects().length") == 0

        state = check_charts_match_history(dash, tracker, "run-1")
        assert state["status"] == "executing"
        dash.wait(lambda: dash.js("return document.getElementById('tv-log').dataset.count") == "2", "the log")
        assert dash.js("return Array.from(document.querySelectorAll('#tv-log .log-msg')).map(e => e.textContent)") == [
            "data prepared", "VRAM at 91 %"]
        # The step rate is drawn from the same events, and resources and the preview are there.
        assert len(dash.chart_points("tv-rate", "s-rate")) >= 1
        assert int(dash.js("return document.querySelector('#tv-res svg').dataset.samples")) >= 3
        dash.wait(lambda: dash.js("return Array.from(document.querySelectorAll('#tv-previews img'))"
                                  ".filter(i => i.complete && i.naturalWidth === 64).length") == 1, "the preview")
        if state["eta"] is not None:
            assert int(dash.js("return document.querySelector('#tv-eta svg').dataset.predictions")) >= 1

        # Live: new steps reach the page's charts through the history route.
        tracker.update_stage_sync("run-1", 2, progress=0.95, message="almost")
        want = tracker.get_task_progress_sync("run-1")["overall_progress"]
        dash.wait(lambda: dash.chart_points("tv-progress", "s-progress")[-1][1] == pytest.approx(want, abs=0.15),
                  "the new step on the chart", timeout=5)
        dash.wait(lambda: dash.js("return document.getElementById('tv-summary').textContent").startswith(
            f"{want:.1f} %"), "the summary")
        dash.js("document.activeElement.blur(); window.scrollTo(0, 0)")
        dash.screenshot("dashboard-task.png", max_height=2400)
    finally:
        forget_view(dash)
    assert dash.console_errors() == []


def test_task_page_of_a_finished_task_shows_the_eta_against_the_end(dash, trackers):
    tracker = trackers(retention_seconds=3600)
    tracker.create_task_progress_sync("done-1", "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    # The page watches the run: the ETA the engine predicts at each step is what the ETA chart shows.
    run_steps(tracker, "done-1", range(1, 13), 12, 0.25)
    tracker.complete_task_sync("done-1")
    dash.wait(lambda: (dash.card_info("done-1") or {}).get("status") == "completed", "completed")
    # From the card view: the selected card's panel links to the task's page.
    dash.card("done-1").click()
    link = dash.wait(lambda: dash.js("const a = document.getElementById('detail-link');"
                                     " return a.getClientRects().length ? a : null"), "the link to the task's page")
    assert link.get_attribute("href").endswith("/#/task/done-1")
    link.click()
    dash.wait(lambda: dash.js("return document.getElementById('task-view').dataset.status") == "completed",
              "the finished task's page")
    state = check_charts_match_history(dash, tracker, "done-1")
    assert dash.chart_points("tv-progress", "s-progress")[-1][1] == pytest.approx(100, abs=0.15)
    end = ms(state["completed_at"])
    predictions = int(dash.js("return document.querySelector('#tv-eta svg').dataset.predictions"))
    assert predictions >= 2, "the engine predicted no ETA while the task ran"
    predicted = dash.chart_points("tv-eta", "s-eta")
    assert len(predicted) == predictions
    # The actual remaining time: from the start down to zero at the actual end.
    actual = dash.chart_points("tv-eta", "s-actual")
    assert actual[-1][0] == pytest.approx(end, abs=25) and actual[-1][1] == pytest.approx(0, abs=0.05)
    assert actual[0][1] == pytest.approx((end - actual[0][0]) / 1000, abs=0.05)
    # The mean error the page states is that of the drawn predictions against the actual end.
    errors = [abs(x + y * 1000 - end) / 1000 for x, y in predicted]
    stated = float(dash.js("return document.querySelector('#tv-eta svg').dataset.meanError"))
    assert stated == pytest.approx(sum(errors) / len(errors), abs=0.05)

    # A link to it opened in a new page: the same story from the history; no ETA prediction was seen by this page.
    dash.driver.get("about:blank")
    dash.driver.get(tracker.url + "/#/task/done-1")
    dash.wait(lambda: dash.js("return document.getElementById('task-view').dataset.status") == "completed",
              "the page opened on the link")
    check_charts_match_history(dash, tracker, "done-1")
    assert "No prediction received by this page" in dash.js("return document.getElementById('tv-eta').textContent")
    # An unknown task's link says so.
    dash.driver.get(tracker.url + "/#/task/" + quote("no such/task", safe=""))
    dash.wait(lambda: "does not know this task" in dash.js("return document.getElementById('tv-note').textContent"),
              "the unknown task's note")
    assert dash.js("return document.getElementById('tv-title').textContent") == "no such/task"
    assert dash.console_errors(allow=("404",)) == []


def test_keyboard_moves_in_the_table_and_opens_and_leaves_a_task(dash, trackers):
    tracker = trackers()
    ids = [f"kb-{i:02d}" for i in range(40)]
    for task_id in ids:
        tracker.create_task_progress_sync(task_id, "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    dash.wait(lambda: len(dash.rows()) > 10, "the table")
    viewport = dash.driver.find_element("id", "vt-viewport")
    dash.js("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    tab_to(dash, viewport)
    active = lambda: [r["id"] for r in dash.rows() if r["active"]]  # noqa: E731
    dash.wait(lambda: active() == ["kb-39"], "the first row active on focus")
    described = dash.js("return document.getElementById(arguments[0].getAttribute('aria-activedescendant'))"
                        ".dataset.taskId", viewport)
    assert described == "kb-39"
    outline = dash.js("const r = document.querySelector('.vt-row[data-active=true]'); const s = getComputedStyle(r);"
                      " return [s.outlineStyle, s.outlineWidth]")
    assert outline[0] != "none" and outline[1] != "0px", outline
    keys = lambda *k: ActionChains(dash.driver).send_keys(*k).perform()  # noqa: E731
    keys(Keys.ARROW_DOWN, Keys.ARROW_DOWN, Keys.ARROW_DOWN)
    dash.wait(lambda: active() == ["kb-36"], "three rows down")
    keys(Keys.END)
    dash.wait(lambda: active() == ["kb-00"], "the last row")
    last = [r for r in dash.rows() if r["active"]][0]
    bottom = dash.js("return arguments[0].getBoundingClientRect().bottom", viewport)
    assert last["bottom"] <= bottom + 1, "the active row scrolled into view"
    keys(Keys.ARROW_UP)
    dash.wait(lambda: active() == ["kb-01"], "one up")
    keys(Keys.ENTER)
    dash.wait(lambda: dash.js("return location.hash") == "#/task/kb-01", "the task's page by Enter")
    assert dash.js("return document.activeElement.id") == "tv-title"
    keys(Keys.ESCAPE)
    dash.wait(lambda: dash.js("return document.getElementById('task-view').hidden"), "back to the list by Esc")
    assert dash.driver.title == "ProgressEngine — live dashboard"
    dash.wait(lambda: dash.js("return document.activeElement === arguments[0]", viewport), "the focus back")
    assert active() == ["kb-01"]
    assert dash.js("return location.hash") in ("", "#/")
    # The browser's Back leaves the task's page too.
    keys(Keys.HOME, Keys.ENTER)
    dash.wait(lambda: dash.js("return location.hash") == "#/task/kb-39", "the first task's page")
    dash.driver.back()
    dash.wait(lambda: dash.js("return document.getElementById('task-view').hidden"), "back to the list by Back")
    assert dash.console_errors() == []


def test_table_and_task_page_at_phone_width(dash, trackers):
    tracker = trackers()
    for i in range(40):
        tracker.create_task_progress_sync(f"phone-task-with-a-long-id-{i:02d}", "stable-diffusion-xl",
                                          "image_generation")
        tracker.update_progress_sync(f"phone-task-with-a-long-id-{i:02d}", i % 30, 30, "Step")
    dash.open(tracker)
    dash.wait(lambda: len(dash.rows()) > 5, "the table")
    dash.viewport(*PHONE, mobile=True)
    dash.wait(lambda: dash.js("return matchMedia('(max-width: 600px)').matches"), "the phone width")
    dash.wait(lambda: dash.rows() and dash.rows()[1]["top"] - dash.rows()[0]["top"] == pytest.approx(52, abs=1),
              "two-line rows")
    overflow = dash.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at phone width: {dash.overflowing()}"
    # Every drawn row's id, status and ETA fit the width.
    assert dash.js("return Array.from(document.querySelectorAll('.vt-row:not([hidden]) > span')).every(c =>"
                   " !c.getClientRects().length || c.getBoundingClientRect().right <= window.innerWidth + 0.5)")
    dash.js("window.scrollTo(0, 0)")
    dash.screenshot("dashboard-table-phone.png")
    dash.row("phone-task-with-a-long-id-39").click()
    dash.wait(lambda: dash.js("return !document.getElementById('task-view').hidden"), "the task's page")
    dash.wait(lambda: dash.js("return document.querySelectorAll('#tv-progress polyline').length") == 1, "charts")
    overflow = dash.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the task's page scrolls sideways by {overflow} px: {dash.overflowing()}"
    dash.js("document.activeElement.blur(); window.scrollTo(0, 0)")
    dash.screenshot("dashboard-task-phone.png")
    dash.viewport(*LAPTOP)
    assert dash.console_errors() == []


def test_task_page_log_takes_a_burst_keeps_the_newest_and_appends(dash, trackers):
    """2,000 lines logged at once while the task's page is open: the page shows the newest 1,000 (what the engine
    keeps of a task), in order. It used to lose the lines beyond the 300 the card keeps between two renders, keep
    every line it ever got, and draw the whole list again for each new one: a line now appends to what is drawn."""
    tracker = trackers()
    tracker.create_task_progress_sync("chatty", "stable-diffusion-xl", "image_generation")
    tracker.log_sync("chatty", "info", "line 0")
    dash.driver.get(tracker.url + "/#/task/chatty")
    dash.wait(lambda: dash.js("return document.getElementById('tv-log').dataset.count") == "1", "the first line")
    dash.wait(lambda: dash.conn_state() == "live", "the page to connect")
    for i in range(1, 2001):
        tracker.log_sync("chatty", "info", f"line {i}")
    dash.wait(lambda: dash.js("return document.getElementById('tv-log').dataset.count") == "1000"
              and dash.js("return document.querySelector('#tv-log li:last-child .log-msg').textContent") == "line 2000",
              "the burst", timeout=20)
    shown = dash.js("return Array.from(document.querySelectorAll('#tv-log .log-msg')).map(e => e.textContent)")
    assert shown == [f"line {i}" for i in range(1001, 2001)]
    dash.js("document.querySelector('#tv-log li:nth-child(2)').dataset.mark = 'drawn'")
    tracker.log_sync("chatty", "warning", "line 2001")
    dash.wait(lambda: dash.js("return document.querySelector('#tv-log li:last-child .log-msg').textContent")
              == "line 2001", "one more line")
    assert dash.js("return document.querySelectorAll('#tv-log li').length") == 1000
    # Not drawn anew: the element drawn second before is the first one now (the oldest line trimmed off the top).
    assert dash.js("const e = document.querySelector('#tv-log li');"
                   " return [e.dataset.mark, e.querySelector('.log-msg').textContent]") == ["drawn", "line 1002"]
    assert dash.console_errors() == []


def test_keyboard_on_a_column_header_sorts_and_a_reconnect_keeps_the_place(dash, trackers):
    # Enter on a header's sort button opened the active row's task instead (the grid took the key); a reconnect read
    # the page again and scrolled the table back to its top.
    tracker = trackers()
    # Past one page of the listing (1,000): the page read again after a reconnect is a listed page.
    ids = [f"hd-{i:04d}" for i in range(1010)]
    for i, task_id in enumerate(ids):
        tracker.create_task_progress_sync(task_id, "stable-diffusion-xl", "image_generation")
        if i % 10 == 0:
            tracker.update_progress_sync(task_id, (i * 7) % 60, 60)
    dash.open(tracker)
    dash.wait(lambda: len(dash.rows()) > 10, "the table")
    listed = "return Number(document.getElementById('pager').dataset.loads || 0)"
    dash.wait(lambda: dash.js(listed) == 1, "the first listing read")  # it scrolls a listed page to its top
    viewport = dash.driver.find_element("id", "vt-viewport")
    dash.js("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    tab_to(dash, viewport)  # a row active, as a keyboard user has
    dash.wait(lambda: any(r["active"] for r in dash.rows()), "a row active")
    button = dash.driver.find_element("css selector", '#vt-head button[data-sort="progress"]')
    dash.js("arguments[0].focus()", button)
    ActionChains(dash.driver).send_keys(Keys.ENTER).perform()
    dash.wait(lambda: dash.js("return document.getElementById('sort').value") == "progress", "sorted by progress")
    assert dash.js("return location.hash") in ("", "#/")
    dash.js("document.getElementById('vt-viewport').scrollTop = 600")
    dash.wait(lambda: dash.js("return document.getElementById('vt-viewport').scrollTop") >= 590, "scrolled")
    dash.js("window.progressDashboard.drop(300)")
    dash.wait(lambda: dash.js("return window.progressDashboard.connection.reconnects") == 1, "the reconnect")
    dash.wait(lambda: dash.js("return window.progressDashboard.connection.state") == "live", "live again")
    dash.wait(lambda: dash.js(listed) == 2, "the listing read again")
    assert dash.js("return document.getElementById('vt-viewport').scrollTop") >= 590
    assert dash.console_errors() == []


def test_cards_hide_the_tables_sort_and_a_filtered_out_batch(dash, trackers):
    tracker = trackers()
    for task_id in ("b-one", "b-two"):
        tracker.create_task_progress_sync(task_id, "stable-diffusion-xl", "image_generation", batch_id="B1")
    tracker.create_task_progress_sync("plain", "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    pick_view(dash, "cards")
    dash.wait_card("b-one")
    dash.wait_card("plain")
    visible = "return document.getElementById(arguments[0]).getClientRects().length > 0"
    assert not dash.js(visible, "sort-dir") and not dash.js(visible, "sort")
    batch = "return document.querySelector('.batch[data-batch-id=\"B1\"]').hidden"
    assert dash.js(batch) is False
    dash.js("const f = document.getElementById('filter-text'); f.value = 'PLAIN';"
            " f.dispatchEvent(new Event('input'))")
    dash.wait(lambda: dash.js(batch) is True, "the batch hidden with its tasks")
    assert dash.js("return document.querySelector('.batch[data-batch-id=\"B1\"]').getBoundingClientRect().height") == 0
    dash.js("const f = document.getElementById('filter-text'); f.value = '';"
            " f.dispatchEvent(new Event('input'))")
    dash.wait(lambda: dash.js(batch) is False, "the batch back")
    pick_view(dash, "table")
    assert dash.js(visible, "sort-dir") and dash.js(visible, "sort")
    forget_view(dash)


def test_the_page_of_a_task_the_listener_does_not_know_asks_less_and_less(dash, trackers):
    # It read the task's history every second for as long as it stayed open.
    tracker = trackers()
    dash.open(tracker)
    dash.js("window.__asked = 0; const f = window.fetch;"
            " window.fetch = (u, o) => { if (String(u).includes('/history')) window.__asked += 1; return f(u, o); }")
    dash.js("location.hash = '#/task/nope'")
    dash.wait(lambda: dash.js("return window.__asked") >= 1, "the first read")
    time.sleep(6)
    asked = dash.js("return window.__asked")
    assert 2 <= asked <= 4, asked  # 1 s, then 2 s, then 4 s between reads (was: 6 or 7)
    assert dash.js("return document.getElementById('tv-note').textContent").startswith("The listener does not know")

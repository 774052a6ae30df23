"""The live dashboard in a real browser (headless Chromium through the system chromedriver): runners drive
real engines through the Python binding, and the page must show what they do.

The page is read through its DOM (data attributes and text), compared in JavaScript where task ids could be
anything; every wait is a bounded WebDriverWait.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

from dashboard_support import LAPTOP, PHONE, ROOT, gradient, tab_to

CUSTOM_STAGES = [
    {"name": "preprocessing", "description": "Preparing data", "weight": 0.2},
    {"name": "analysis", "description": "Analyzing content", "weight": 0.3},
    {"name": "synthesis", "description": "Synthesizing output", "weight": 0.4},
    {"name": "validation", "description": "Validating results", "weight": 0.1},
]
#: Chromium's own reports of the planned outage (not the page's errors).
OUTAGE_NOISE = ("ERR_CONNECTION_REFUSED", "WebSocket connection to")


def test_page_loads_without_console_errors(dash, trackers):
    tracker = trackers()
    tracker.create_task_progress_sync("first-task", "stable-diffusion-xl", "image_generation")
    dash.open(tracker)
    assert dash.driver.title == "ProgressEngine — live dashboard"
    dash.wait_card("first-task")
    assert dash.card_info("first-task")["status"] == "queued"
    assert dash.js("return document.getElementById('empty').hidden") is True
    assert dash.console_errors() == []


@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
def test_task_appears_and_its_bar_advances(dash, trackers, deflate):
    """With ws_deflate, Chromium negotiates permessage-deflate: the delta patches reach the page compressed against
    its window (docs/API.md, "Compression")."""
    tracker = trackers(ws_deflate=deflate)
    dash.open(tracker)
    if deflate:
        extensions = dash.driver.execute_async_script("""
            const done = arguments[0];
            const ws = new WebSocket(location.origin.replace("http", "ws") + "/api/v1/progress/ws");
            ws.onopen = () => { done(ws.extensions); ws.close(); };
            ws.onerror = () => done("error");""")
        assert "permessage-deflate" in extensions, extensions
    assert dash.js("return document.getElementById('empty').hidden") is False
    tracker.create_task_progress_sync("sdxl-1", "stable-diffusion-xl", "image_generation", quality="high")
    dash.wait_card("sdxl-1")
    info = dash.card_info("sdxl-1")
    assert info["title"] == "sdxl-1" and info["progress"] == 0

    seen = []
    for step in range(1, 31) if deflate else (3, 12, 24, 30):
        tracker.update_progress_sync("sdxl-1", step, 30, f"Step {step}/30")
        want = tracker.get_task_progress_sync("sdxl-1")["overall_progress"]
        dash.wait(lambda: abs(dash.card_info("sdxl-1")["progress"] - want) < 1e-6, f"{want} % on the page")
        info = dash.card_info("sdxl-1")
        assert info["msg"] == f"Step {step}/30"
        assert info["stage"] == "generation (3/4)"
        assert info["pct"] == f"{round(want, 1):.1f} %"
        seen.append(info["progress"])
    assert seen == sorted(seen) and seen[0] < seen[-1]
    # The generation stage's fill is drawn full once its steps are done.
    dash.wait(lambda: abs(dash.segments("sdxl-1")[2]["fill"] - dash.segments("sdxl-1")[2]["inner"]) < 0.5,
              "the generation segment to fill")

    tracker.complete_task_sync("sdxl-1")
    dash.wait(lambda: dash.card_info("sdxl-1")["status"] == "completed", "completed")
    info = dash.card_info("sdxl-1")
    assert info["progress"] == 100 and info["pct"] == "100.0 %" and info["eta"] == "Done"
    assert dash.console_errors() == []


def test_stage_segments_match_the_weights(dash, trackers):
    tracker = trackers()
    tracker.register_template_stages_sync("weights-template", CUSTOM_STAGES)
    tracker.create_task_progress_sync("custom-1", "weights-template", "custom")
    tracker.create_task_progress_sync("image-1", "stable-diffusion-xl", "image_generation")
    tracker.create_task_progress_sync("video-1", "video-gen-v1", "video_generation")
    tracker.update_stage_sync("custom-1", 2, progress=0.5)
    dash.open(tracker)
    for task_id in ("custom-1", "image-1", "video-1"):
        dash.wait_card(task_id)
        engine_stages = tracker.get_task_progress_sync(task_id)["stages"]
        weights = [engine_stages[str(i)]["weight"] for i in range(len(engine_stages))]
        segs = dash.segments(task_id)
        assert [s["stage"] for s in segs] == list(range(len(weights)))
        total = segs[0]["total"]
        assert sum(s["width"] for s in segs) == pytest.approx(total, abs=1.0)
        for seg, weight in zip(segs, weights):
            assert seg["weight"] == pytest.approx(weight, abs=1e-9)
            # Drawn width in proportion to the weight, within a pixel of rounding.
            assert seg["width"] == pytest.approx(weight * total, abs=1.0), (task_id, seg, weight)
    assert [round(w, 3) for w in (s["weight"] for s in dash.segments("custom-1"))] == [0.2, 0.3, 0.4, 0.1]
    segs = dash.segments("custom-1")
    assert [s["status"] for s in segs] == ["completed", "completed", "in_progress", "pending"]
    # Fills are animated (0.25 s): wait for them to settle.
    dash.wait(lambda: abs(dash.segments("custom-1")[2]["fill"] - dash.segments("custom-1")[2]["inner"] / 2) < 0.5,
              "the synthesis fill at half")
    segs = dash.segments("custom-1")
    assert segs[0]["fill"] == pytest.approx(segs[0]["inner"], abs=0.5)
    assert segs[3]["fill"] == 0
    info = dash.card_info("custom-1")
    assert info["pct"] == "70.0 %" and info["stage"] == "synthesis (3/4)"
    assert dash.console_errors() == []


def test_preview_loads_with_the_token_and_opens_full_size(dash, trackers, preview_dir):
    tracker = trackers(auth_token="s3cret", preview_dir=preview_dir)
    dash.open(tracker, token="s3cret")
    tracker.create_task_progress_sync("img-prev", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("img-prev", 15, 30, "Step 15/30")  # past the 25 % milestone
    tracker.update_preview_sync("img-prev", gradient(96, 64))
    thumb_loaded = (
        "let card = null; for (const c of document.querySelectorAll('article.task'))"
        " if (c.dataset.taskId === arguments[0]) card = c;"
        " const img = card && card.querySelector('.thumb img');"
        " return !!img && !card.querySelector('.thumb').hidden && img.complete && img.naturalWidth > 0"
        " ? [img.getAttribute('src'), img.naturalWidth, img.naturalHeight] : null;"
    )
    src, width, height = dash.wait(lambda: dash.js(thumb_loaded, "img-prev"), "the preview thumbnail to load")
    assert src.startswith("/api/v1/previews/") and src.endswith(".png?token=s3cret")
    assert (width, height) == (96, 64)

    thumb = dash.js("return arguments[0].querySelector('.thumb')", dash.card("img-prev"))
    thumb.click()
    dash.wait(lambda: dash.js("return document.getElementById('preview-dialog').open"), "the preview dialog")
    full = dash.wait(lambda: dash.js(
        "const i = document.getElementById('preview-full');"
        " return i.complete && i.naturalWidth > 0 ? [i.getAttribute('src'), i.naturalWidth] : null;"), "the full image")
    assert full == [src, 96]
    assert dash.js("return document.getElementById('preview-title').textContent") == "Preview — img-prev"
    # The card was not selected by the click on its thumbnail, and Esc closes the dialog.
    assert dash.card_info("img-prev")["selected"] == "false"
    ActionChains(dash.driver).send_keys(Keys.ESCAPE).perform()
    dash.wait(lambda: not dash.js("return document.getElementById('preview-dialog').open"), "the dialog to close")
    assert dash.js("return document.activeElement === arguments[0]", thumb)
    # Keyboard: Enter on the focused thumbnail opens it again.
    ActionChains(dash.driver).send_keys(Keys.ENTER).perform()
    dash.wait(lambda: dash.js("return document.getElementById('preview-dialog').open"), "the dialog by keyboard")
    ActionChains(dash.driver).send_keys(Keys.ESCAPE).perform()
    assert dash.console_errors() == []


def test_failed_task_stays_with_its_error(dash, trackers):
    tracker = trackers()
    dash.open(tracker)
    tracker.create_task_progress_sync("oom-1", "stable-diffusion-xl", "image_generation")
    tracker.create_task_progress_sync("ok-1", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("oom-1", 11, 30, "Step 11/30")
    tracker.fail_task_sync("oom-1", "CUDA out of memory: tried to allocate 2.00 GiB")
    tracker.complete_task_sync("ok-1")
    dash.wait(lambda: (dash.card_info("oom-1") or {}).get("status") == "failed", "the failed status")
    info = dash.card_info("oom-1")
    assert info["error"] == "Error: CUDA out of memory: tried to allocate 2.00 GiB"
    assert dash.segments("oom-1")[2]["status"] == "failed"
    dash.wait(lambda: dash.js("return document.querySelector('.count[data-status=failed]').dataset.count") == "1",
              "the failed count")
    assert dash.js("return document.querySelector('.count[data-status=completed]').dataset.count") == "1"
    # Finished tasks stay on the page.
    time.sleep(0.3)
    assert dash.card_info("ok-1")["status"] == "completed"
    assert dash.card_info("oom-1")["status"] == "failed"
    assert dash.console_errors() == []


def test_server_text_is_shown_as_text(dash, trackers):
    tracker = trackers()
    evil_id = '<img src=x onerror="window.__xss=1">'
    evil_log = "<script>window.__xss=2</script><b>bold</b> & <i>more</i>"
    evil_error = '<img src=y onerror="window.__xss=3">'
    tracker.create_task_progress_sync(evil_id, "<b>template</b>", "image_generation", batch_id="<em>batch</em>")
    tracker.log_sync(evil_id, "warning", evil_log)
    dash.open(tracker)
    card = dash.wait_card(evil_id)
    tracker.update_progress_sync(evil_id, 5, 30, "<u>step</u>")
    tracker.fail_task_sync(evil_id, evil_error)
    dash.wait(lambda: dash.card_info(evil_id)["status"] == "failed", "the failed status")
    card.click()
    dash.wait(lambda: dash.js("return document.getElementById('log').dataset.count") == "1", "the log line")
    info = dash.card_info(evil_id)
    assert info["title"] == evil_id
    assert info["msg"] == "<u>step</u>"
    assert info["error"] == "Error: " + evil_error
    assert info["batch"] == "<em>batch</em>"
    assert dash.js("return document.querySelector('#log .log-msg').textContent") == evil_log
    assert dash.js("return document.getElementById('detail-title').textContent") == "Log — " + evil_id
    # None of it became markup: no such elements, nothing ran, nothing fetched (no console errors).
    assert dash.js("return document.querySelectorAll('img[src=x], img[src=y], script:not([src]), b, i, u, em').length") == 0
    assert dash.js("return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        dash.driver.switch_to.alert.text
    assert dash.console_errors() == []


def test_keyboard_selects_a_task_and_follows_its_log(dash, trackers):
    tracker = trackers()
    tracker.create_task_progress_sync("kb-1", "stable-diffusion-xl", "image_generation")
    tracker.create_task_progress_sync("kb-2", "stable-diffusion-xl", "image_generation")
    for i in range(3):
        tracker.log_sync("kb-1", "info", f"before the page: line {i}")
    dash.open(tracker)
    dash.wait_card("kb-1")
    dash.wait_card("kb-2")
    # Tab from the top of the page until the card has the focus.
    dash.js("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    target = dash.card("kb-1")
    tab_to(dash, target)
    # A visible focus style, from the keyboard.
    outline = dash.js("const s = getComputedStyle(arguments[0]); return [s.outlineStyle, s.outlineWidth]", target)
    assert outline[0] != "none" and outline[1] != "0px", outline
    ActionChains(dash.driver).send_keys(Keys.ENTER).perform()
    dash.wait(lambda: dash.card_info("kb-1")["selected"] == "true", "the selection")
    dash.wait(lambda: dash.js("return document.getElementById('log').dataset.count") == "3", "the logged lines")
    lines = dash.js("return Array.from(document.querySelectorAll('#log .log-msg')).map(e => e.textContent)")
    assert lines == [f"before the page: line {i}" for i in range(3)]
    tracker.log_sync("kb-1", "error", "live: something went wrong")
    tracker.log_sync("kb-2", "info", "another task's line")
    dash.wait(lambda: dash.js("return document.getElementById('log').dataset.count") == "4", "the live line")
    last = dash.js("const e = document.querySelector('#log li:last-child');"
                   " return [e.dataset.level, e.querySelector('.log-msg').textContent]")
    assert last == ["error", "live: something went wrong"]
    # Space selects too; the other task's log replaces the first one's.
    tab_to(dash, dash.card("kb-2"), backwards=dash.js("return !!(arguments[0].compareDocumentPosition(arguments[1])"
                                                      " & Node.DOCUMENT_POSITION_PRECEDING)", target, dash.card("kb-2")))
    ActionChains(dash.driver).send_keys(Keys.SPACE).perform()
    dash.wait(lambda: dash.card_info("kb-2")["selected"] == "true", "the second selection")
    dash.wait(lambda: dash.js("return document.querySelector('#log .log-msg') &&"
                              " document.querySelector('#log .log-msg').textContent") == "another task's line",
              "the second task's log")
    assert dash.card_info("kb-1")["selected"] == "false"
    assert dash.console_errors() == []


def test_the_same_line_logged_again_in_one_millisecond_is_shown_each_time(dash, trackers):
    # Lines were told apart by time, level, stage and text: five identical ones in one millisecond showed as one.
    tracker = trackers()
    tracker.create_task_progress_sync("rep", "stable-diffusion-xl", "image_generation")
    at = time.time()

    def log_at(message):
        tracker.send_event_sync("rep", "log", {"level": "info", "message": message, "timestamp": at})

    for _ in range(2):
        log_at("retrying")  # before the page: read back over REST
    dash.open(tracker)
    dash.wait_card("rep")
    dash.js("arguments[0].click()", dash.card("rep"))
    dash.wait(lambda: dash.js("return document.getElementById('log').dataset.count") == "2", "the two lines")
    for _ in range(3):
        log_at("retrying")  # live
    dash.wait(lambda: dash.js("return document.getElementById('log').dataset.count") == "5", "the five lines")
    # The task's page: read back, then live again.
    dash.driver.get(dash.driver.current_url.split("#")[0] + "#/task/rep")
    count = "return document.querySelectorAll('#tv-log li').length"
    dash.wait(lambda: dash.js(count) == 5, "five lines on the task's page")
    log_at("retrying")
    dash.wait(lambda: dash.js(count) == 6, "six lines on the task's page")
    time.sleep(0.3)
    assert dash.js(count) == 6
    assert dash.console_errors() == []


def test_a_cancelled_tasks_reason_is_said_as_such_beside_the_log(dash, trackers):
    tracker = trackers()
    tracker.create_task_progress_sync("stopped", "stable-diffusion-xl", "image_generation")
    tracker.cancel_task_sync("stopped", "user pressed stop")
    dash.open(tracker)
    dash.wait_card("stopped")
    dash.js("arguments[0].click()", dash.card("stopped"))
    dash.wait(lambda: dash.js("return document.getElementById('detail-error').textContent")
              == "Cancelled: user pressed stop", "the reason beside the log")


def test_wrong_or_missing_token_is_said_clearly(dash, trackers):
    tracker = trackers(auth_token="right-token")
    tracker.create_task_progress_sync("secret-task", "stable-diffusion-xl", "image_generation")
    dash.open(tracker, token="wrong-token", wait_live=False)
    dash.wait(lambda: dash.conn_state() == "unauthorized", "the unauthorized state")
    assert dash.conn_text() == "Wrong token"
    banner = dash.js("const b = document.getElementById('banner'); return b.hidden ? null : b.textContent")
    assert "wrong token" in banner and "?token=" in banner
    assert "+ is %2B" in banner  # a token's "+" typed as is reads as a blank
    assert dash.card("secret-task") is None
    # It does not keep knocking with the wrong token.
    time.sleep(0.8)
    assert dash.conn_state() == "unauthorized"

    dash.open(tracker, wait_live=False)
    dash.wait(lambda: dash.conn_state() == "unauthorized", "the unauthorized state without a token")
    assert dash.conn_text() == "Token required"
    assert "requires a token" in dash.js("return document.getElementById('banner').textContent")

    dash.open(tracker, token="right-token")
    dash.wait_card("secret-task")
    assert dash.js("return document.getElementById('banner').hidden") is True
    assert dash.console_errors() == []


def test_batch_has_its_aggregate_bar_and_analytics_count(dash, trackers):
    tracker = trackers()
    dash.open(tracker)
    ids = [f"batch-task-{i}" for i in range(3)]
    for task_id in ids:
        tracker.create_task_progress_sync(task_id, "stable-diffusion-xl", "image_generation", batch_id="batch-7")
    tracker.create_task_progress_sync("solo", "video-gen-v1", "video_generation")
    tracker.update_progress_sync(ids[0], 30, 30, "done steps")
    tracker.update_progress_sync(ids[1], 10, 30, "a third")
    want = tracker.get_batch_progress_sync("batch-7")["overall_progress"]
    batch_pct = ("for (const b of document.querySelectorAll('section.batch')) if (b.dataset.batchId === arguments[0])"
                 " return [Number(b.dataset.progress), b.querySelector('.batch-pct').textContent,"
                 " b.querySelector('.batch-counts').textContent, b.querySelectorAll('article.task').length];"
                 " return null;")
    dash.wait(lambda: (dash.js(batch_pct, "batch-7") or [0])[0] == pytest.approx(want, abs=1e-6),
              f"the batch at {want} %")
    progress, pct, counts, members = dash.js(batch_pct, "batch-7")
    assert pct == f"{round(want, 1):.1f} %" and members == 3
    assert counts.startswith("3 tasks")
    assert dash.card_info(ids[2])["batch"] == "batch-7"
    assert dash.card_info("solo")["batch"] is None

    tracker.complete_task_sync(ids[0])
    tracker.complete_task_sync(ids[1])
    tracker.fail_task_sync(ids[2], "bad prompt")
    dash.wait(lambda: dash.js(batch_pct, "batch-7")[2] == "3 tasks · 2 completed · 1 failed", "the batch counts")
    counts = dash.js("const o = {}; for (const li of document.querySelectorAll('.count'))"
                     " o[li.dataset.status] = Number(li.dataset.count); return o;")
    assert counts == {"total": 4, "queued": 1, "executing": 0, "completed": 2, "failed": 1, "cancelled": 0}
    row = dash.js("const r = document.querySelector('#templates-body tr');"
                  " return r && [r.dataset.template, ...Array.from(r.cells).map(c => c.textContent)];")
    assert row[0] == "stable-diffusion-xl" and row[2] == "2"
    assert row[3] != "—"  # mean duration
    assert row[4] == "—"  # no ETA was ever predicted
    assert dash.console_errors() == []


def test_eta_countdown_with_confidence(dash, trackers):
    """The engine reports no ETA yet (null: shown as "—"); the countdown is checked with an ETA fed to the
    page's message handler, as the listener will send once ETA prediction lands."""
    tracker = trackers()
    tracker.create_task_progress_sync("eta-real", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("eta-real", 3, 30, "Step 3/30")
    dash.open(tracker)
    dash.wait(lambda: (dash.card_info("eta-real") or {}).get("progress", 0) > 0, "eta-real")
    if tracker.get_task_progress_sync("eta-real")["eta"] is None:
        assert dash.card_info("eta-real")["eta"] == "ETA —"

    state = tracker.get_task_progress_sync("eta-real")
    state.update(task_id="eta-fed", eta_seconds=95.0, eta_confidence=0.73, status="executing",
                 eta=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 95)) + ".000Z")
    dash.js("window.progressDashboard.ingest({type: 'progress.update', task_id: 'eta-fed', seq: 5, data: arguments[0]})",
            state)
    eta = dash.card_info("eta-fed")["eta"]
    assert eta in ("ETA 1:35 (73 % confidence)", "ETA 1:34 (73 % confidence)"), eta
    dash.wait(lambda: dash.card_info("eta-fed")["eta"] in ("ETA 1:33 (73 % confidence)", "ETA 1:32 (73 % confidence)"),
              "the countdown to run", timeout=4)
    # Completed: "Done", and the analytics strip reports the ETA error of the prediction.
    state.update(status="completed", overall_progress=100, eta=None, eta_seconds=None, seq=9,
                 completed_at=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 5)) + ".000Z")
    dash.js("window.progressDashboard.ingest({type: 'progress.update', task_id: 'eta-fed', seq: 9, data: arguments[0]})",
            state)
    assert dash.card_info("eta-fed")["eta"] == "Done"
    err = dash.js("const r = document.querySelector('#templates-body tr'); return r.querySelector('.eta-error').textContent")
    assert err.startswith("± 1:") or err.startswith("± 0:"), err  # predicted +95 s, finished at +5 s
    assert dash.console_errors() == []


def test_eta_countdown_counts_from_the_states_time_not_its_arrival(dash, trackers):
    """eta_seconds counts from updated_at: a state that arrives 10 s after it was taken (on subscribe, after a
    reconnect, from a mirror) has 10 s less to go than its eta_seconds."""
    tracker = trackers()
    tracker.create_task_progress_sync("eta-live", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("eta-live", 3, 30, "Step 3/30")
    dash.open(tracker)
    dash.wait_card("eta-live")
    state = tracker.get_task_progress_sync("eta-live")
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".000Z"  # noqa: E731
    now = time.time()
    # The page learns the clock from a fresh state first (as from the listener), then gets a 10 s old one.
    fresh = dict(state, task_id="eta-old", status="executing", updated_at=iso(now), eta_seconds=None, eta=None)
    dash.js("window.progressDashboard.ingest({type: 'progress.update', task_id: 'eta-old', seq: 5, data: arguments[0]})",
            fresh)
    old = dict(fresh, updated_at=iso(now - 10), eta_seconds=95.0, eta_confidence=0.5, eta=iso(now - 10 + 95))
    dash.js("window.progressDashboard.ingest({type: 'progress.update', task_id: 'eta-old', seq: 6, data: arguments[0]})",
            old)
    eta = dash.card_info("eta-old")["eta"]
    assert eta in ("ETA 1:25 (50 % confidence)", "ETA 1:24 (50 % confidence)"), eta
    assert dash.console_errors() == []


def test_refusals_that_reconnecting_cannot_change_are_said_and_not_retried(dash, trackers):
    tracker = trackers(allowed_origins=["https://app.example.com"])
    tracker.create_task_progress_sync("origin-task", "stable-diffusion-xl", "image_generation")
    dash.open(tracker, wait_live=False)
    dash.wait(lambda: dash.conn_state() == "unauthorized", "the refused state")
    assert dash.conn_text() == "Refused"
    banner = dash.js("const b = document.getElementById('banner'); return b.hidden ? null : b.textContent")
    assert "4403" in banner and "allowed_origins" in banner, banner
    opened = dash.js("return window.progressDashboard.connections ? window.progressDashboard.connections() : null")
    time.sleep(1.5)  # no reconnect attempts (the page would say "Reconnecting")
    assert dash.conn_state() == "unauthorized" and dash.conn_text() == "Refused"
    if opened is not None:
        assert dash.js("return window.progressDashboard.connections()") == opened


def test_resource_sparklines(dash, trackers):
    tracker = trackers(resource_interval_ms=50)
    tracker.create_task_progress_sync("res-1", "stable-diffusion-xl", "image_generation")
    tracker.update_progress_sync("res-1", 1, 30, "Step 1/30")
    dash.open(tracker)
    dash.wait_card("res-1")
    for i in range(6):
        tracker.send_event_sync("res-1", "resources", {"gpu_percent": 40 + 10 * i, "gpu_memory_mb": 4096})
        tracker.update_progress_sync("res-1", 2 + i, 30, f"Step {2 + i}/30")
        time.sleep(0.27)  # the page keeps one sparkline point per 250 ms
    spark = ("let card = null; for (const c of document.querySelectorAll('article.task'))"
             " if (c.dataset.taskId === arguments[0]) card = c;"
             " const s = card.querySelector('.spark[data-resource=' + arguments[1] + ']');"
             " return [Number(s.dataset.points || 0), s.querySelector('.spark-value').textContent,"
             " s.querySelector('polyline').getAttribute('points')];")
    dash.wait(lambda: dash.js(spark, "res-1", "gpu_percent")[0] >= 3, "GPU samples in the sparkline")
    points, value, _ = dash.js(spark, "res-1", "gpu_percent")
    assert value == "90 %"
    dash.wait(lambda: dash.js(spark, "res-1", "memory_mb")[0] >= 2, "memory samples (the engine's sampler)")
    assert dash.js(spark, "res-1", "memory_mb")[1].endswith(" MB")
    assert dash.console_errors() == []


def test_a_resume_map_too_large_for_the_listener_is_dropped_not_resent(dash, trackers):
    """The page resumes its open tasks on reconnect. A listener with a small max_message_bytes refuses that
    subscribe (error, close 1009; the map counts UTF-8 bytes: these ids are 2 bytes a character): the page
    subscribes again without the map and goes live, instead of sending the same frame for ever."""
    first = trackers()
    port = first.port
    ids = [f"{i:02d}-" + "é" * 150 for i in range(30)]  # about 9 KB of ids in UTF-8
    for tid in ids:
        first.create_task_progress_sync(tid, "stable-diffusion-xl", "image_generation")
        first.update_progress_sync(tid, 1, 30, "Step 1/30")
    dash.open(first)
    # 30 tasks: the table view (its rows, not cards).
    dash.wait(lambda: dash.task_shown(ids[-1]), "the newest task listed")
    first.close()
    dash.wait(lambda: dash.conn_state() == "reconnecting", "the page to notice the drop")
    second = trackers(port=port, max_message_bytes=4096)
    second.create_task_progress_sync("after-1009", "stable-diffusion-xl", "image_generation")
    dash.wait(lambda: dash.conn_state() == "live", "the page live again without its resume map", timeout=20)
    dash.wait(lambda: dash.task_shown("after-1009"), "the task created after the restart")


def test_reconnects_after_the_listener_restarts(dash, trackers):
    first = trackers()
    port = first.port
    first.create_task_progress_sync("survivor", "stable-diffusion-xl", "image_generation")
    first.update_progress_sync("survivor", 6, 30, "Step 6/30")
    first.create_task_progress_sync("done-before", "stable-diffusion-xl", "image_generation")
    first.complete_task_sync("done-before")
    first.create_task_progress_sync("lost", "stable-diffusion-xl", "image_generation")  # not recreated
    first.update_progress_sync("lost", 3, 30, "Step 3/30")
    dash.open(first)
    before = first.get_task_progress_sync("survivor")["overall_progress"]
    dash.wait(lambda: (dash.card_info("survivor") or {}).get("progress") == pytest.approx(before), "survivor")
    dash.card("survivor").click()  # its log is followed across the restart
    assert dash.console_errors() == []

    first.close()
    dash.wait(lambda: dash.conn_state() == "reconnecting", "the page to notice the drop")
    assert "reconnecting" in dash.conn_text()
    # What the page knew stays on it while the listener is away.
    assert dash.card_info("survivor")["progress"] == pytest.approx(before)

    second = trackers(port=port)
    second.create_task_progress_sync("survivor", "stable-diffusion-xl", "image_generation")
    second.update_progress_sync("survivor", 27, 30, "Step 27/30")
    second.create_task_progress_sync("born-after", "video-gen-v1", "video_generation")
    second.log_sync("survivor", "info", "logged by the new listener")
    after = second.get_task_progress_sync("survivor")["overall_progress"]
    dash.wait(lambda: dash.conn_state() == "live" and "Reconnected" in dash.conn_text(), "the reconnected notice",
              timeout=12)
    dash.wait(lambda: dash.card_info("survivor")["progress"] == pytest.approx(after), "the caught-up survivor")
    dash.wait_card("born-after")
    assert dash.card_info("survivor")["msg"] == "Step 27/30"
    dash.wait(lambda: "logged by the new listener" in dash.js(
        "return Array.from(document.querySelectorAll('#log .log-msg')).map(e => e.textContent)"), "the new log line")
    assert dash.card_info("done-before")["status"] == "completed"  # finished tasks stay visible
    assert dash.js("return document.getElementById('conn').dataset.reconnects") == "1"
    # An open task the new listener does not know is shown as no longer reported, not as running.
    stale = ("const c = Array.from(document.querySelectorAll('article.task')).find(c => c.dataset.taskId === 'lost');"
             " return c.dataset.stale === 'true' && !c.querySelector('.stale-note').hidden;")
    dash.wait(lambda: dash.js(stale), "the lost task marked as no longer reported")
    assert dash.card_info("survivor")["status"] == "executing"
    assert dash.js("return Array.from(document.querySelectorAll('article.task[data-stale]')).length") == 1
    # Live again: updates keep flowing on the new connection.
    second.update_progress_sync("born-after", 10, 20, "Frame 10/20")
    dash.wait(lambda: (dash.card_info("born-after") or {}).get("msg") == "Frame 10/20", "a live update")
    assert dash.console_errors(allow=OUTAGE_NOISE) == []


def test_resumes_with_the_missed_events_after_a_drop(dash, trackers):
    tracker = trackers()
    tracker.register_template_stages_sync("weights-template", CUSTOM_STAGES)
    tracker.create_task_progress_sync("resumed", "weights-template", "custom")
    tracker.update_stage_sync("resumed", 0, progress=0.5, message="first half")
    dash.open(tracker)
    dash.wait(lambda: (dash.card_info("resumed") or {}).get("msg") == "first half", "the first state")
    # The page stays away 2 s, so the changes below are certainly missed (a busy machine can take longer than
    # the normal 0.5 s back-off just to run the next line).
    dash.js("window.progressDashboard.drop(2000)")
    dash.wait(lambda: dash.conn_state() == "reconnecting", "the drop")
    # Missed while away: stage changes, kept in history.
    for stage in (1, 2, 3):
        tracker.update_stage_sync("resumed", stage, progress=0.5, message=f"stage {stage}")
    want = tracker.get_task_progress_sync("resumed")["overall_progress"]
    dash.wait(lambda: "Reconnected" in dash.conn_text() and "missed events replayed" in dash.conn_text(),
              "the replay notice")
    # The replayed events come first, the current state right after them: wait (bounded) for that state.
    dash.wait(lambda: (dash.card_info("resumed") or {}).get("msg") == "stage 3", "the current state after replay")
    info = dash.card_info("resumed")
    assert info["progress"] == pytest.approx(want) and info["msg"] == "stage 3"
    assert [s["status"] for s in dash.segments("resumed")] == ["completed", "completed", "completed", "in_progress"]
    assert dash.console_errors() == []


def test_demo_round_on_the_dashboard(dash, trackers, preview_dir):
    """The README's demo runners (one round, fast) against the page: image and video tasks, a batch, the
    failing task and previews all show."""
    spec = importlib.util.spec_from_file_location("progress_demo", ROOT / "examples" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    tracker = trackers(preview_dir=preview_dir, retention_seconds=3600)
    dash.open(tracker)
    errors = []

    def run():
        try:
            asyncio.run(demo.run_round(tracker, 1, 0.01))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    ids = ["r1-sdxl-001", "r1-video-001", "r1-batch-a-1", "r1-batch-a-2", "r1-batch-a-3", "r1-custom-001",
           "r1-audio-001", "r1-sdxl-oom"]
    finished = ("return Array.from(document.querySelectorAll('article.task')).filter("
                "c => ['completed', 'failed'].includes(c.dataset.status)).length")
    dash.wait(lambda: dash.js(finished) == len(ids), "every demo task to finish", timeout=30)
    runner.join(10)
    assert not errors, errors
    for task_id in ids:
        assert dash.card_info(task_id)["status"] == ("failed" if task_id == "r1-sdxl-oom" else "completed"), task_id
    assert "CUDA out of memory" in dash.card_info("r1-sdxl-oom")["error"]
    assert dash.js("return document.querySelectorAll('section.batch article.task').length") == 3
    loaded = ("return Array.from(document.querySelectorAll('.thumb:not([hidden]) img'))"
              ".filter(i => i.complete && i.naturalWidth > 0).length")
    dash.wait(lambda: dash.js(loaded) >= 5, "the demo's previews (4 image tasks and the video)")
    dash.card("r1-sdxl-001").click()
    dash.wait(lambda: int(dash.js("return document.getElementById('log').dataset.count || 0")) > 0, "its log")
    dash.js("document.activeElement.blur(); window.scrollTo(0, 0)")
    dash.viewport(*LAPTOP)
    time.sleep(0.3)  # the bars' width transitions settle
    dash.screenshot("dashboard-demo.png")
    assert dash.console_errors() == []


def test_screenshots_laptop_and_phone(dash, trackers, preview_dir):
    """A scene like the demo's, drawn at laptop and phone width: saved to artifacts/ for a person to look at."""
    tracker = trackers(preview_dir=preview_dir, resource_interval_ms=50)
    tracker.register_template_stages_sync("my-custom-template", CUSTOM_STAGES)
    dash.open(tracker)
    t = tracker
    t.create_task_progress_sync("sdxl-001", "stable-diffusion-xl", "image_generation", quality="high")
    t.create_task_progress_sync("video-001", "video-gen-v1", "video_generation")
    for i in range(1, 4):
        t.create_task_progress_sync(f"batch-a-{i}", "stable-diffusion-xl", "image_generation", quality="draft",
                                    batch_id="batch-a")
    t.create_task_progress_sync("custom-001", "my-custom-template", "custom")
    t.create_task_progress_sync("sdxl-oom", "stable-diffusion-xl", "image_generation")
    t.create_task_progress_sync("queued-001", "audio-gen", "audio_generation")
    for step in range(1, 9):
        for task_id, total in (("sdxl-001", 10), ("video-001", 12), ("batch-a-1", 8), ("batch-a-2", 16),
                               ("batch-a-3", 24)):
            t.update_progress_sync(task_id, min(step, total), total, f"Step {min(step, total)}/{total}")
            t.send_event_sync(task_id, "resources", {"gpu_percent": 55 + 5 * ((step * 7 + len(task_id)) % 8),
                                                     "gpu_memory_mb": 6000 + 100 * step})
            t.update_preview_sync(task_id, gradient(96, 96))
        time.sleep(0.11)
    t.log_sync("sdxl-001", "info", "Loaded UNet and VAE (fp16)")
    t.log_sync("sdxl-001", "info", "Sampler: DPM++ 2M Karras, 30 steps, guidance 7.5")
    t.log_sync("sdxl-001", "warning", "VRAM at 91 %: tiling the VAE decode")
    t.complete_task_sync("batch-a-1")
    t.update_stage_sync("custom-001", 2, progress=0.6, message="Synthesizing output")
    t.update_progress_sync("sdxl-oom", 11, 30)
    t.fail_task_sync("sdxl-oom", "CUDA out of memory: tried to allocate 2.00 GiB")
    dash.wait(lambda: (dash.card_info("sdxl-oom") or {}).get("status") == "failed", "the scene")
    dash.wait(lambda: dash.js("return Array.from(document.querySelectorAll('.thumb:not([hidden]) img'))"
                              ".filter(i => i.complete && i.naturalWidth > 0).length") >= 5, "the previews")
    dash.card("sdxl-001").click()
    dash.wait(lambda: dash.js("return document.getElementById('log').dataset.count") == "3", "the log tail")
    dash.js("document.activeElement.blur(); window.scrollTo(0, 0)")
    dash.viewport(*LAPTOP)
    time.sleep(0.3)  # the bars' width transitions (0.25 s) settle
    laptop = dash.screenshot("dashboard.png")
    assert dash.overflowing() == []

    dash.viewport(*PHONE, mobile=True)
    dash.wait(lambda: dash.js("return matchMedia('(max-width: 480px)').matches"), "the phone width")
    overflow = dash.js("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at phone width: {dash.overflowing()}"
    # Every card fits the width.
    assert dash.js("return Array.from(document.querySelectorAll('article.task'))"
                   ".every(c => c.getBoundingClientRect().right <= window.innerWidth + 0.5)")
    dash.js("window.scrollTo(0, 0)")
    phone = dash.screenshot("dashboard-phone.png")
    for path in (laptop, phone):
        assert path.stat().st_size > 10_000, path
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert dash.console_errors() == []

"""ETA fields through the binding: imported history, replayed events, finished tasks."""

from __future__ import annotations

import time
from datetime import datetime, timezone


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def test_imported_history_of_the_category_and_a_replayed_run(tracker):
    for i in range(3):
        tracker.eta_predictor.record_completion_sync(
            task_id=f"past-{i}", template_id="sdxl-old", template_category="image_generation",
            stage_durations={0: 2.0, 1: 4.0, 2: 30.0, 3: 3.0}, total_duration=39.0,
            stage_profiles={2: {"steps": 30, "head": 0.0, "step_seconds": 1.0, "tail": 0.0}},
        )
    stored = tracker.eta_predictor.records("sdxl-old")["records"][0]
    assert stored["template_category"] == "image_generation"
    assert stored["stage_profiles"]["2"] == {"steps": 30, "head": 0.0, "step_seconds": 1.0, "tail": 0.0}

    # A template without history of its own learns from its category. Recent times: a task finished
    # longer than retention_seconds ago is gone.
    t0 = float(int(time.time()))
    task = tracker.create_task_progress_sync("t", "sdxl-new", "image_generation", timestamp=t0)
    assert task["status"] == "queued"
    assert task["eta_seconds"] == 2 + 4 + 30 + 3
    tracker.send_event_sync("t", "model_loading", {"timestamp": t0 + 2})
    tracker.send_event_sync("t", "generation", {"timestamp": t0 + 6})
    for step in range(1, 6):
        data = {"step": step, "total_steps": 10, "timestamp": t0 + 6 + step}
        tracker.send_event_sync("t", "execution_progress", data)
    task = tracker.get_task_progress_sync("t")
    # 4 intervals of 1 s per step, history's 1 s per step too: 5 steps left, then post-processing.
    assert task["eta_seconds"] == 5 + 3
    assert task["eta"] == iso(t0 + 11 + 8)
    assert 0 < task["eta_confidence"] <= 1

    tracker.send_event_sync("t", "execution_complete", {"timestamp": t0 + 20})
    task = tracker.get_task_progress_sync("t")
    assert (task["eta_seconds"], task["eta"], task["eta_confidence"]) == (0, task["completed_at"], 1)


def test_no_history_and_failed_tasks_have_no_eta(tracker):
    task = tracker.create_task_progress_sync("f", "never-seen", "image_generation")
    assert (task["eta"], task["eta_seconds"], task["eta_confidence"]) == (None, None, None)
    tracker.update_progress_sync("f", 3, 10, message="step 3")  # a first step: no pace yet
    tracker.fail_task_sync("f", "boom")
    task = tracker.get_task_progress_sync("f")
    assert (task["eta"], task["eta_seconds"], task["eta_confidence"]) == (None, None, None)


def test_template_ids_that_differ_in_normalisation_have_their_own_history(tracker):
    """docs/API.md "Ids": "caf\u00e9" and "cafe\u0301" are two templates, with two histories."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for template, seconds in ((nfc, 10.0), (nfd, 100.0)):
        for i in range(3):
            tracker.eta_predictor.record_completion_sync(
                task_id=f"{template}-{i}", template_id=template, stage_durations={0: seconds}, total_duration=seconds)
    assert [r["total_duration"] for r in tracker.eta_predictor.records(nfc)["records"]] == [10.0] * 3
    assert [r["total_duration"] for r in tracker.eta_predictor.records(nfd)["records"]] == [100.0] * 3
    tracker.register_template_stages_sync(nfc, [{"name": "run", "weight": 1}])
    tracker.register_template_stages_sync(nfd, [{"name": "run", "weight": 1}])
    etas = {t: tracker.create_task_progress_sync(f"job-{t}", t)["eta_seconds"] for t in (nfc, nfd)}
    assert etas == {nfc: 10, nfd: 100}

"""StageManager (process-wide templates) and track() (tqdm-style loops)."""

from __future__ import annotations

import itertools
import sys

import pytest

from progress_engine import ExistsError, ProgressTracker, Stage, StageManager, track

_ids = itertools.count()


def unique(prefix):
    # StageManager is process-wide: each test registers its own template ids.
    return f"{prefix}-{next(_ids)}"


def names(task):
    return [s["name"] for s in task["stages"].values()]


def test_stage_manager_reaches_trackers_opened_before_and_after(tracker):
    template = unique("upscale")
    StageManager.register_template_stages(
        template, [Stage("load", "Loading", weight=1), Stage("upscale", "Upscaling", weight=3)]
    )
    assert names(tracker.create_task_progress_sync("before", template)) == ["load", "upscale"]
    with ProgressTracker() as later:
        task = later.create_task_progress_sync("after", template)
        assert names(task) == ["load", "upscale"]
        assert [s["weight"] for s in task["stages"].values()] == pytest.approx([0.25, 0.75])


def test_stage_manager_with_no_tracker_open_still_validates():
    # Registration happens through a short-lived engine when none is open (it is then registered in
    # no engine yet, but kept for the next tracker); bad lists fail at once either way.
    template = unique("alone")
    StageManager.register_template_stages(template, [{"name": "only", "weight": 1}])
    with pytest.raises(ValueError, match="empty"):
        StageManager.register_template_stages(unique("bad"), [])
    with ProgressTracker() as tracker:
        assert names(tracker.create_task_progress_sync("t", template)) == ["only"]


def test_stage_manager_replaces_a_template(tracker):
    template = unique("replaced")
    StageManager.register_template_stages(template, [Stage("a")])
    StageManager.register_template_stages(template, [Stage("b"), Stage("c")])
    assert names(tracker.create_task_progress_sync("t", template)) == ["b", "c"]
    with ProgressTracker() as later:
        assert names(later.create_task_progress_sync("t", template)) == ["b", "c"]


def test_track_completes(tracker):
    items = list(track(["a", "b", "c", "d"], task_id="loop", tracker=tracker))
    assert items == ["a", "b", "c", "d"]
    task = tracker.get_task_progress_sync("loop")
    assert task["status"] == "completed" and task["overall_progress"] == 100
    assert task["template_id"] == "track" and names(task) == ["queue", "processing", "finalizing"]
    # The last step reached the engine before completion: the counter is read a last time.
    progress = [e["progress"] for e in tracker.get_history_sync("loop")["events"] if e["type"] == "progress"]
    assert progress[-1] == 1.0


def test_track_iterable_exception_fails_and_propagates(tracker):
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        for _ in track(items(), task_id="loop", total=5, tracker=tracker):
            pass
    task = tracker.get_task_progress_sync("loop")
    assert task["status"] == "failed" and task["error"] == "disk gone"


def test_track_break_cancels_with_the_step(tracker):
    for i, _ in enumerate(track(range(10), task_id="loop", tracker=tracker)):
        if i == 3:
            break
    task = tracker.get_task_progress_sync("loop")
    assert task["status"] == "cancelled" and task["error"] == "stopped at step 3 of 10"


def test_track_runs_again_under_the_id_of_a_finished_loop(tracker):
    # The second epoch's track() raised ExistsError into the job.
    for epoch in range(3):
        for _ in track(range(4), task_id="epoch", tracker=tracker):
            pass
        task = tracker.get_task_progress_sync("epoch")
        assert task["status"] == "completed" and task["overall_progress"] == 100.0, task
        # A new task each time: its history has one creation and one completion (one reopened would have them all).
        kinds = [e["type"] for e in tracker.get_history_sync("epoch")["events"]]
        assert (kinds.count("created"), kinds.count("completed")) == (1, 1), kinds
    # One still running under the id: not replaced.
    tracker.create_task_progress_sync("running", "t")
    with pytest.raises(ExistsError):
        for _ in track(range(2), task_id="running", tracker=tracker):
            pass
    assert tracker.get_task_progress_sync("running")["status"] == "queued"


def test_track_body_exception_in_with_fails(tracker):
    with pytest.raises(KeyError):
        with track(range(10), task_id="loop", tracker=tracker) as steps:
            for i in steps:
                if i == 4:
                    raise KeyError("no such prompt")
    task = tracker.get_task_progress_sync("loop")
    assert task["status"] == "failed" and task["error"] == "'no such prompt'"


@pytest.mark.parametrize("code, status, error", [
    ("model missing", "failed", "model missing"),
    (3, "failed", "exit status 3"),
    (0, "cancelled", "stopped at step 2 of 10"),
    (None, "cancelled", "stopped at step 2 of 10"),
])
def test_track_sys_exit_in_with_fails_only_when_it_reports_a_failure(tracker, code, status, error):
    with pytest.raises(SystemExit):
        with track(range(10), task_id="exit", tracker=tracker) as steps:
            for i in steps:
                if i == 2:
                    sys.exit(code)
    task = tracker.get_task_progress_sync("exit")
    assert (task["status"], task["error"]) == (status, error), task


def test_track_with_block_completes_and_break_cancels(tracker):
    with track(range(3), task_id="whole", tracker=tracker) as steps:
        assert len(steps) == 3
        assert list(steps) == [0, 1, 2]
    assert tracker.get_task_progress_sync("whole")["status"] == "completed"
    with track(range(3), task_id="part", tracker=tracker) as steps:
        for _ in steps:
            break
    task = tracker.get_task_progress_sync("part")
    assert task["status"] == "cancelled" and task["error"] == "stopped at step 0 of 3"


def test_track_of_unknown_length_counts_its_items(tracker):
    """SPEC §13: track(iterable, total=None) yields the items and reports one step each. A generator has no length:
    the task still runs in its main stage, counting items in its message, and completes at the end."""
    seen = []
    counting = track((x * x for x in range(4)), task_id="gen-count", tracker=tracker)
    with pytest.raises(TypeError, match="no length"):
        len(counting)
    for value in counting:
        seen.append(value)
        state = tracker.get_task_progress_sync("gen-count")
        stage = state["stages"][str(state["current_stage"])]
        assert state["status"] == "executing" and stage["message"] == f"{len(seen) - 1} items"
        assert state["eta_seconds"] is None  # no total, no estimate
    assert seen == [0, 1, 4, 9]
    task = tracker.get_task_progress_sync("gen-count")
    assert task["status"] == "completed"
    assert [s["message"] for s in task["stages"].values() if s["message"]] == ["4 items"]
    stopped = track((x for x in range(10)), task_id="gen-stop", tracker=tracker)
    for value in stopped:
        if value == 2:
            break
    del stopped
    task = tracker.get_task_progress_sync("gen-stop")
    assert task["status"] == "cancelled" and task["error"] == "stopped after 2 items"


def test_track_total_and_options(tracker):
    generated = track((x for x in range(3)), task_id="gen", total=3, tracker=tracker, quality="high")
    assert sum(generated) == 3
    task = tracker.get_task_progress_sync("gen")
    assert task["status"] == "completed" and task["quality"] == "high"
    assert list(track([], task_id="empty", tracker=tracker)) == []
    assert tracker.get_task_progress_sync("empty")["status"] == "completed"


def test_track_uses_the_default_tracker(no_engine_env):
    from progress_engine import get_progress_tracker_sync

    task_id = unique("default-track")
    assert list(track(range(2), task_id=task_id)) == [0, 1]
    assert get_progress_tracker_sync().get_task_progress_sync(task_id)["status"] == "completed"

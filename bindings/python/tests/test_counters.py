"""The hot path: step counters read by the engine's maintenance thread, and update_progress_sync."""

from __future__ import annotations

import threading
import time

import pytest

from progress_engine import ProgressTracker, StageStatus

N = 10_000


def stage(tracker, task_id, index=1):
    return tracker.get_task_progress_sync(task_id)["stages"][str(index)]


@pytest.fixture
def task(tracker):
    # Generic stages queue / processing / finalizing: steps go to "processing" (index 1).
    tracker.create_task_progress_sync("t", "plain")
    return "t"


def test_stepper_updates_reach_the_engine_within_throttle(tracker, task, throttle_ms, poll):
    steps = tracker.stepper(task, N)
    for _ in range(N):
        steps.update()
    assert steps.step == N and steps.total_steps == N
    seen = poll(lambda: stage(tracker, task), lambda s: s["progress"] == 1.0, 2 * throttle_ms / 1000)
    assert seen["progress"] == 1.0 and seen["status"] == "in_progress"
    assert tracker.stats_sync()["invalid_updates"] == 0


def test_update_progress_sync_reaches_the_engine_within_throttle(tracker, task, throttle_ms, poll):
    tracker.update_progress_sync(task, 1, 4)  # attaches the task's counter
    assert tracker.stats_sync()["attached_counters"] == 1
    tracker.update_progress_sync(task_id=task, step=3, total_steps=4)  # two stores, no engine call
    seen = poll(lambda: stage(tracker, task), lambda s: s["progress"] == 0.75, throttle_ms / 1000)
    assert seen["progress"] == 0.75


def test_update_with_message_is_applied_at_once(tracker, task):
    tracker.update_progress_sync(task, 1, 4)
    tracker.update_progress_sync(task, 2, 4, message="half")
    seen = stage(tracker, task)  # no waiting: a message goes straight to the engine
    assert (seen["progress"], seen["message"]) == (0.5, "half")


def test_counter_and_direct_updates_are_not_applied_twice(tracker, task, throttle_ms, poll):
    steps = tracker.stepper(task, 10)
    steps.set(3)
    assert poll(lambda: stage(tracker, task), lambda s: s["progress"] == 0.3, 2 * throttle_ms / 1000)["progress"] == 0.3
    tracker.update_progress_sync(task, 6, 10, message="six")
    assert stage(tracker, task)["progress"] == 0.6
    time.sleep(2 * throttle_ms / 1000)  # several counter reads: none may bring the older 3 back
    assert (stage(tracker, task)["progress"], stage(tracker, task)["message"]) == (0.6, "six")
    steps.update()  # continues from the 6 written by update_progress_sync
    seen = poll(lambda: stage(tracker, task), lambda s: s["progress"] != 0.6, 2 * throttle_ms / 1000)
    assert (seen["progress"], seen["message"]) == (0.7, "six")


@pytest.mark.parametrize("finish", ["complete", "fail", "cancel", "detach"])
def test_last_value_arrives_when_the_counter_is_let_go(tracker, task, finish):
    steps = tracker.stepper(task, 10)
    steps.set(7)  # written immediately before: no time for a periodic read
    if finish == "detach":
        steps.detach()
        assert stage(tracker, task)["progress"] == 0.7
        assert tracker.stats_sync()["attached_counters"] == 0
        return
    {"complete": tracker.complete_task_sync, "fail": tracker.fail_task_sync, "cancel": tracker.cancel_task_sync}[
        finish
    ](task)
    events = tracker.get_history_sync(task)["events"]
    assert [e["progress"] for e in events if e["type"] == "progress"][-1] == 0.7
    assert tracker.stats_sync()["attached_counters"] == 0
    if finish == "complete":
        assert tracker.get_task_progress_sync(task)["overall_progress"] == 100
    steps.update()  # harmless once the engine let go: the array is still the StepCounter's
    steps.detach()  # a no-op now


def test_counter_memory_outlives_the_engine():
    tracker = ProgressTracker()
    tracker.create_task_progress_sync("t", "plain")
    steps = tracker.stepper("t", 5)
    tracker.update_progress_sync("t", 2, 5)
    view = tracker._counters["t"]
    tracker.close()  # the engine reads the counter a last time, then the tracker drops it
    assert tracker._counters == {}
    steps.update()  # the StepCounter keeps its own reference: writing stays safe
    assert view[0] == 3


def test_threads_each_end_in_their_final_state(tracker, throttle_ms, poll):
    tasks = [f"thread-{i}" for i in range(4)]
    for task_id in tasks:
        tracker.create_task_progress_sync(task_id, "plain")
    start = threading.Barrier(len(tasks))

    def run(task_id):
        start.wait()
        for step in range(1, N + 1):
            if step % 100 == 50:
                tracker.update_progress_sync(task_id, step, N, message=f"{task_id} step {step}")
            else:
                tracker.update_progress_sync(task_id, step, N)

    threads = [threading.Thread(target=run, args=(task_id,)) for task_id in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    for task_id in tasks:
        seen = poll(lambda: stage(tracker, task_id), lambda s: s["progress"] == 1.0, 2 * throttle_ms / 1000)
        assert (seen["progress"], seen["message"]) == (1.0, f"{task_id} step {N - 50}")
        tracker.complete_task_sync(task_id)
        assert tracker.get_task_progress_sync(task_id)["overall_progress"] == 100
    stats = tracker.stats_sync()
    assert stats["invalid_updates"] == 0 and stats["attached_counters"] == 0


def test_failing_stage_lets_the_counter_go(tracker, task):
    # The header: a counter is read until the task is completed / failed / cancelled. A FAILED stage
    # fails the task, so the engine must stop reading the memory the binding then frees.
    tracker.update_progress_sync(task, 1, 4)
    tracker.update_stage_sync(task, 1, StageStatus.FAILED, message="out of memory")
    assert tracker.get_task_progress_sync(task)["status"] == "failed"
    assert tracker.get_task_progress_sync(task)["error"] == "out of memory"
    assert tracker._counters == {}
    assert tracker.stats_sync()["attached_counters"] == 0


def test_finishing_events_drop_the_counter(tracker, task):
    tracker.update_progress_sync(task, 1, 4)
    tracker.send_event_sync(task, "execution_complete")
    assert tracker._counters == {}
    assert tracker.get_task_progress_sync(task)["status"] == "completed"


def test_counter_pairs_the_engine_cannot_apply_are_counted_as_invalid(tracker, task, throttle_ms, poll):
    """Counting past total_steps is no error for the runner (as with tqdm), but the engine does not apply such a
    pair: it is counted in invalid_updates, not in updates, and the task keeps its last valid step."""
    steps = tracker.stepper(task, 10)
    for _ in range(10):
        steps.update()
    poll(lambda: stage(tracker, task), lambda s: s["progress"] == 1.0, 2 * throttle_ms / 1000)
    before = tracker.stats_sync()
    assert before["invalid_updates"] == 0
    for _ in range(5):
        steps.update()  # 15 of 10
    after = poll(tracker.stats_sync, lambda s: s["invalid_updates"] >= 1, 2 * throttle_ms / 1000)
    assert 1 <= after["invalid_updates"] <= 5, after  # one per changed pair the maintenance thread read
    assert after["updates"] == before["updates"], (before, after)
    assert stage(tracker, task)["progress"] == 1.0


@pytest.mark.parametrize("change", ["update_stage_sync", "stage event"])
def test_steps_in_the_counter_land_on_their_stage_before_a_stage_change(tracker, change):
    """The seed's flow: steps 1..30 of 30 through the counter, then the next stage at once. The steps belong to
    the stage they were reported in; they are applied before the stage change, not later onto the new stage."""
    tracker.create_task_progress_sync("s", "sdxl", "image_generation")
    names = [s["name"] for _, s in sorted(tracker.get_task_progress_sync("s")["stages"].items(), key=lambda kv: int(kv[0]))]
    for i in range(1, 31):
        tracker.update_progress_sync("s", i, 30)
    main = names.index("generation") if "generation" in names else 2
    nxt = main + 1
    if change == "update_stage_sync":
        tracker.update_stage_sync("s", nxt, StageStatus.IN_PROGRESS)
    else:
        tracker.send_event_sync("s", names[nxt], {})
    state = tracker.get_task_progress_sync("s")
    assert state["current_stage"] == nxt, state
    assert state["stages"][str(main)]["status"] == "completed" and state["stages"][str(main)]["progress"] == 1.0
    assert state["stages"][str(nxt)]["progress"] == 0.0, state["stages"][str(nxt)]
    assert state["status"] == "executing" and state["overall_progress"] < 100
    steps = [e for e in tracker.get_history_sync("s")["events"] if e["type"] == "progress" and e["stage"] == main]
    assert steps and steps[-1]["progress"] == 1.0


def test_a_read_right_after_a_counter_step_sees_it(tracker):
    tracker.create_task_progress_sync("r", "plain")
    tracker.update_progress_sync("r", 1, 10)
    tracker.update_progress_sync("r", 3, 10)  # two stores into the counter, no engine call
    state = tracker.get_task_progress_sync("r")
    assert state["stages"][str(state["current_stage"])]["progress"] == 0.3

"""The rest of ProgressTracker's API: lifetime, awaitable twins, batches, logs, history, stats."""

from __future__ import annotations

import asyncio
import gc
import inspect
from datetime import datetime, timezone

import pytest

from progress_engine import InvalidArgumentError, LogLevel, ProgressTracker, StageStatus

AWAITABLE = [
    "create_task_progress", "update_stage", "update_progress", "complete_task", "fail_task", "cancel_task",
    "get_task_progress", "get_batch_progress", "log", "get_logs", "get_history", "send_event",
    "update_preview", "register_template_stages", "stats",
]


@pytest.mark.parametrize("name", AWAITABLE)
def test_every_awaitable_has_a_sync_twin_with_its_signature(name):
    twin, sync = getattr(ProgressTracker, name), getattr(ProgressTracker, f"{name}_sync")
    assert inspect.iscoroutinefunction(twin) and not inspect.iscoroutinefunction(sync)
    assert inspect.signature(twin) == inspect.signature(sync)
    assert twin.__name__ == name


def test_async_context_manager_and_awaitables():
    async def run():
        async with ProgressTracker() as tracker:
            await tracker.create_task_progress(task_id="a", template_id="sdxl", template_category="image_generation")
            await tracker.update_progress(task_id="a", step=2, total_steps=4, message="half")
            await tracker.log("a", LogLevel.INFO, "hello")
            task = await tracker.get_task_progress("a")
            await tracker.cancel_task("a", reason="user asked")
            return tracker, task, await tracker.get_task_progress("a")

    tracker, running, cancelled = asyncio.run(run())
    assert tracker.closed
    assert running["stages"]["2"]["progress"] == 0.5 and running["stages"]["2"]["message"] == "half"
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "user asked"


def test_a_dropped_tracker_closes_its_engine():
    tracker = ProgressTracker()
    tracker.create_task_progress_sync("t", "plain")
    steps = tracker.stepper("t", 10)
    tracker.eta_predictor  # noqa: B018 - must not keep the tracker alive either
    finalizer = tracker._finalizer
    del tracker
    gc.collect()
    assert finalizer.alive  # the StepCounter still uses the tracker
    del steps
    gc.collect()
    assert not finalizer.alive


def test_batches(tracker):
    for task_id in ("b1", "b2"):
        tracker.create_task_progress_sync(task_id, "plain", batch_id="batch-1")
    tracker.create_task_progress_sync("other", "plain")
    tracker.complete_task_sync("b1")
    batch = tracker.get_batch_progress_sync("batch-1")
    assert batch["batch_id"] == "batch-1" and batch["total_tasks"] == 2
    assert set(batch["tasks"]) == {"b1", "b2"} and batch["missing"] == []
    assert batch["overall_progress"] == pytest.approx(50.0)
    listed = tracker.get_batch_progress_sync("any", task_ids=["b2", "other", "ghost"])
    assert set(listed["tasks"]) == {"b2", "other"} and listed["missing"] == ["ghost"]


def test_logs_since_and_level(tracker):
    tracker.create_task_progress_sync("t", "plain")
    tracker.log_sync("t", "debug", "early")
    middle = datetime.now(timezone.utc)
    tracker.send_event_sync("t", "log", {"level": "warning", "message": "late", "timestamp": middle.timestamp() + 1})
    entries = tracker.get_logs_sync("t")["logs"]
    assert [(e["level"], e["message"]) for e in entries] == [("debug", "early"), ("warning", "late")]
    assert [e["message"] for e in tracker.get_logs_sync("t", since=middle)["logs"]] == ["late"]
    assert [e["message"] for e in tracker.get_logs_sync("t", since=middle.timestamp())["logs"]] == ["late"]
    assert [e["message"] for e in tracker.get_logs_sync("t", level=LogLevel.WARNING)["logs"]] == ["late"]


def test_log_level_names_of_pythons_logging_are_taken(tracker):
    # "warn", "critical" and "fatal" are names logging takes: they raised InvalidArgumentError inside the job.
    tracker.create_task_progress_sync("t", "plain")
    for name in ("warn", "WARN", "critical", "fatal"):
        tracker.log_sync("t", name, name)
    assert [(e["level"], e["message"]) for e in tracker.get_logs_sync("t")["logs"]] == \
        [("warning", "warn"), ("warning", "WARN"), ("error", "critical"), ("error", "fatal")]
    with pytest.raises(InvalidArgumentError, match="unknown log level 'loud'"):
        tracker.log_sync("t", "loud", "x")


def test_numpy_values_in_create_options_are_taken_as_numbers(tracker):
    np = pytest.importorskip("numpy")
    tracker.create_task_progress_sync("np", "plain", metadata={"seed": np.int64(7), "cfg": np.float32(4.5)},
                                      resource_config={"gpus": np.int32(2)})
    task = tracker.get_task_progress_sync("np")
    assert task["metadata"] == {"seed": 7, "cfg": 4.5} and task["resource_config"] == {"gpus": 2}


def test_history_after_seq(tracker):
    tracker.create_task_progress_sync("t", "plain")
    tracker.update_stage_sync("t", 1, StageStatus.IN_PROGRESS, 0.5)
    tracker.update_stage_sync("t", 2, StageStatus.IN_PROGRESS, 0.0)
    history = tracker.get_history_sync("t")
    seqs = [e["seq"] for e in history["events"]]
    assert seqs == sorted(seqs) and seqs[-1] == tracker.get_task_progress_sync("t")["seq"]
    later = tracker.get_history_sync("t", after_seq=seqs[0])["events"]
    assert [e["seq"] for e in later] == seqs[1:]


def test_create_options_and_stats(tracker):
    task = tracker.create_task_progress_sync(
        "t",
        "sdxl",
        "image_generation",
        quality="high",
        batch_id="b",
        resource_config={"gpu": "A100"},
        metadata={"user": "u1"},
        timestamp=1_700_000_000.5,
    )
    assert (task["quality"], task["batch_id"]) == ("high", "b")
    assert task["resource_config"] == {"gpu": "A100"} and task["metadata"] == {"user": "u1"}
    assert task["created_at"] == "2023-11-14T22:13:20.500Z"
    stats = tracker.stats_sync()
    assert stats["tasks"] == 1 and set(stats) >= {
        "tasks", "updates", "invalid_updates", "events", "logs", "purged_tasks", "attached_counters"
    }

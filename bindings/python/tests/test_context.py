"""ProgressContext and its runner callback."""

from __future__ import annotations

import asyncio
import sys

import pytest

from progress_engine import ProgressContext


def context(tracker, task_id="ctx"):
    return ProgressContext(tracker, task_id=task_id, template_id="sdxl", template_category="image_generation")


def test_success_completes(tracker):
    async def run():
        async with context(tracker) as ctx:
            assert tracker.get_task_progress_sync(ctx.task_id)["status"] == "queued"

    asyncio.run(run())
    task = tracker.get_task_progress_sync("ctx")
    assert task["status"] == "completed" and task["overall_progress"] == 100 and task["error"] is None


def test_exception_fails_with_its_text_and_propagates(tracker):
    async def run():
        async with context(tracker):
            raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        asyncio.run(run())
    task = tracker.get_task_progress_sync("ctx")
    assert task["status"] == "failed" and task["error"] == "CUDA out of memory"


def test_exception_without_text_fails_with_its_type(tracker):
    with pytest.raises(ValueError):
        with context(tracker):
            raise ValueError()
    assert tracker.get_task_progress_sync("ctx")["error"] == "ValueError"


def test_interrupt_cancels(tracker):
    with pytest.raises(KeyboardInterrupt):
        with context(tracker):
            raise KeyboardInterrupt
    task = tracker.get_task_progress_sync("ctx")
    assert task["status"] == "cancelled" and task["error"] == "KeyboardInterrupt"


@pytest.mark.parametrize("code, status, error", [
    ("model missing", "failed", "model missing"),
    (2, "failed", "exit status 2"),
    (0, "cancelled", "SystemExit"),
    (None, "cancelled", "SystemExit"),
])
def test_sys_exit_fails_only_when_it_reports_a_failure(tracker, code, status, error):
    """sys.exit("text") or a non-zero status is the script saying it failed: the task fails with that text; a
    clean exit stops the work before the end of the block, which cancels it (a KeyboardInterrupt's way)."""
    with pytest.raises(SystemExit):
        with context(tracker):
            sys.exit(code)
    task = tracker.get_task_progress_sync("ctx")
    assert (task["status"], task["error"]) == (status, error), task


def test_a_framework_stopping_the_process_cancels_whatever_its_status(tracker):
    """SystemExit's subclasses are a framework's shutdown (Celery's WorkerTerminate carries status 1): the work
    was stopped from outside, so the task is cancelled, not failed."""
    WorkerTerminate = pytest.importorskip("celery.exceptions", reason="Celery is not installed").WorkerTerminate

    with pytest.raises(WorkerTerminate):
        with context(tracker):
            raise WorkerTerminate(1)
    task = tracker.get_task_progress_sync("ctx")
    assert (task["status"], task["error"]) == ("cancelled", "WorkerTerminate"), task


def test_callback_is_awaitable_and_plain(tracker, throttle_ms, poll):
    async def run():
        async with context(tracker) as ctx:
            callback = ctx.get_callback()
            await callback("model_loading", {"message": "loading"})
            assert tracker.get_task_progress_sync("ctx")["current_stage"] == 1
            callback("execution_progress", {"step": 3, "total_steps": 10})  # not awaited: applied all the same
            seen = poll(
                lambda: tracker.get_task_progress_sync("ctx"),
                lambda t: t["stages"]["2"]["progress"] == 0.3,
                2 * throttle_ms / 1000,
            )
            assert seen["current_stage"] == 2 and seen["stages"]["2"]["progress"] == 0.3
            await callback("execution_progress", {"step": 6, "total_steps": 10, "message": "six"})
            generation = tracker.get_task_progress_sync("ctx")["stages"]["2"]
            assert (generation["progress"], generation["message"]) == (0.6, "six")
            await callback("log", {"level": "info", "message": "hello"})
            await callback("no_such_event")  # logged at debug level and ignored

    asyncio.run(run())
    messages = [entry["message"] for entry in tracker.get_logs_sync("ctx")["logs"]]
    assert "hello" in messages and any("no_such_event" in m for m in messages)
    assert tracker.get_task_progress_sync("ctx")["status"] == "completed"


def test_callback_errors_raise_at_the_call_when_strict(strict_tracker):
    with context(strict_tracker) as ctx:
        callback = ctx.get_callback()
        with pytest.raises(ValueError, match="step"):  # JSONError is a ValueError
            callback("execution_progress", {"step": 1})
        with pytest.raises(ValueError, match="out of range"):  # RangeError, from the counter path's check
            callback("execution_progress", {"step": 11, "total_steps": 10})


def test_runner_finishing_the_task_is_kept(tracker):
    async def run():
        async with context(tracker) as ctx:
            await ctx.get_callback()("execution_error", {"error": "bad prompt"})

    asyncio.run(run())  # no StateError from completing a failed task
    task = tracker.get_task_progress_sync("ctx")
    assert task["status"] == "failed" and task["error"] == "bad prompt"


def test_a_failure_text_with_a_lone_surrogate_fails_the_task(tracker):
    # A file name read with surrogateescape in the error: the engine refused the event's JSON, and the context then
    # completed the task, a failure reported as a success.
    import os
    bad_name = os.fsdecode(b"img_\xff.png")
    with context(tracker) as ctx:
        ctx.get_callback()("execution_error", {"error": f"cannot read {bad_name}"})
    task = tracker.get_task_progress_sync("ctx")
    assert task["status"] == "failed" and task["error"] == "cannot read img_?.png", task

"""The runner's side of a cancel request: tracker.cancel_requested, ctx.cancel_requested, track() raising
TaskCancelled, ProgressContext and Track ending a task cancelled rather than failed. The requests are made as
clients make them: POST /api/v1/progress/tasks/{id}/cancel on the tracker's own listener."""

from __future__ import annotations

import json
import time
import urllib.request
import warnings
from typing import Optional

import pytest

from progress_engine import (NotFoundError, ProgressContext, ProgressError, ProgressTracker, ProgressWarning,
                             TaskCancelled, track)


@pytest.fixture
def listening():
    with ProgressTracker(listen="127.0.0.1:0") as opened:
        yield opened


def request_cancel(tracker: ProgressTracker, task_id: str, reason: Optional[str] = None) -> None:
    body = json.dumps({"reason": reason}).encode() if reason is not None else b""
    req = urllib.request.Request(f"{tracker.url}/api/v1/progress/tasks/{task_id}/cancel", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as response:
        assert response.status == 202


def test_task_cancelled_is_exported_and_no_progress_error():
    assert issubclass(TaskCancelled, Exception) and not issubclass(TaskCancelled, ProgressError)
    e = TaskCancelled("t", "why")
    assert (e.task_id, e.reason) == ("t", "why") and "why" in str(e)


def test_cancel_requested_from_request_to_answer(listening):
    listening.create_task_progress_sync("t", "tpl")
    assert listening.cancel_requested("t") is False
    request_cancel(listening, "t", "stop please")
    assert listening.cancel_requested("t") is True  # recorded before the 202
    listening.cancel_task_sync("t", "stop please")
    assert listening.cancel_requested("t") is False
    task = listening.get_task_progress_sync("t")
    assert task["status"] == "cancelled" and task["error"] == "stop please" and task["cancel_requested"] is False


def test_cancel_requested_of_an_unknown_task_is_a_refusal(tracker, strict_tracker):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tracker.cancel_requested("ghost") is False
        assert tracker.cancel_requested("ghost") is False
    assert [type(w.message) for w in caught] == [ProgressWarning]  # once per task and kind
    with pytest.raises(NotFoundError):
        strict_tracker.cancel_requested("ghost")
    tracker.close()
    with pytest.raises(ProgressError):
        tracker.cancel_requested("ghost")  # a closed tracker always raises


def test_track_raises_at_the_next_item_after_cancelling(listening):
    seen = []
    with pytest.raises(TaskCancelled) as raised:
        for item in track(range(100), task_id="loop", tracker=listening):
            seen.append(item)
            if item == 4:
                request_cancel(listening, "loop", "user pressed stop")
            time.sleep(0.015)  # items of 10 ms or more: looked for after every item
    assert seen == [0, 1, 2, 3, 4]
    assert raised.value.task_id == "loop" and raised.value.reason == "user pressed stop"
    task = listening.get_task_progress_sync("loop")
    assert task["status"] == "cancelled" and task["error"] == "user pressed stop"
    assert task["cancel_requested"] is False
    assert task["stages"][str(task["current_stage"])]["progress"] == pytest.approx(0.05)  # 5 of 100 steps


def test_track_of_fast_items_raises_soon_after_the_request(listening):
    """Fast items are looked at about every 10 ms of the loop, at most every 1,000 items."""
    count = 0
    with pytest.raises(TaskCancelled) as raised:
        for _ in track(range(10**9), task_id="fast", tracker=listening):
            count += 1
            if count == 200_000:
                request_cancel(listening, "fast")
                asked, at = time.monotonic(), count
    assert count - at <= 1000 and time.monotonic() - asked < 0.5, (count - at, time.monotonic() - asked)
    assert raised.value.reason is None
    task = listening.get_task_progress_sync("fast")
    assert task["status"] == "cancelled" and task["error"] == "cancelled on request"


def test_track_takes_no_item_once_a_request_was_seen(listening):
    taken = []

    def produce():
        for i in range(50):
            taken.append(i)
            yield i

    with pytest.raises(TaskCancelled):
        for item in track(produce(), task_id="gen", tracker=listening, total=50):
            if item == 2:
                request_cancel(listening, "gen")
            time.sleep(0.015)
    assert taken == [0, 1, 2]


def test_track_of_unknown_length_raises_too(listening):
    def forever():
        while True:
            yield 1

    with pytest.raises(TaskCancelled):
        for n, _ in enumerate(track(forever(), task_id="open-ended", tracker=listening)):
            if n == 3:
                request_cancel(listening, "open-ended")
            time.sleep(0.015)
    assert listening.get_task_progress_sync("open-ended")["status"] == "cancelled"


def test_track_completes_when_no_request_comes(tracker):
    assert list(track(range(5000), task_id="plain", tracker=tracker)) == list(range(5000))
    task = tracker.get_task_progress_sync("plain")
    assert task["status"] == "completed" and task["cancel_requested"] is False


def test_task_cancelled_raised_by_the_runner_cancels_rather_than_fails(listening):
    with pytest.raises(TaskCancelled):
        with track(range(10), task_id="with-track", tracker=listening) as items:
            for _ in items:
                raise TaskCancelled("with-track", "the runner's own decision")
    task = listening.get_task_progress_sync("with-track")
    assert task["status"] == "cancelled" and task["error"] == "the runner's own decision"

    with pytest.raises(TaskCancelled):
        with ProgressContext(listening, "ctx", "tpl") as ctx:
            assert ctx.cancel_requested is False
            request_cancel(listening, "ctx", "enough")
            assert ctx.cancel_requested is True
            raise TaskCancelled(ctx.task_id)
    task = listening.get_task_progress_sync("ctx")
    assert task["status"] == "cancelled" and task["error"] == "cancelled on request"

    with pytest.raises(ValueError):
        with ProgressContext(listening, "ctx-fails", "tpl"):
            raise ValueError("boom")
    assert listening.get_task_progress_sync("ctx-fails")["status"] == "failed"

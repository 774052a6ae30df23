"""Restart recovery (SPEC §9): a new engine process reads the tasks it does not hold from Redis, for REST,
WebSocket subscribe (with resume from the history stream), batch queries, and a restarted runner's resume."""

import json
import time

import pytest

from redis_support import http_get, run_runner, ws_connect, ws_until
from progress_engine import EngineIOError, NotFoundError, ProgressTracker

FIRST_RUN = """
t = ProgressTracker(redis_url={url!r}, throttle_ms=10)
t.create_task_progress_sync(task_id="done", template_id="tpl", batch_id="b")
t.log_sync("done", "info", "first words")
t.complete_task_sync("done")
t.create_task_progress_sync(task_id="half", template_id="tpl", batch_id="b")
for i in range(1, 11):
    t.update_progress_sync(task_id="half", step=i, total_steps=20, message=f"step {{i}}")
    time.sleep(0.02)
print(json.dumps({{"done": t.get_task_progress_sync("done"), "half": t.get_task_progress_sync("half")}}))
t.close()  # flushes
"""


def test_second_engine_serves_the_first_ones_tasks(redis):
    before = json.loads(run_runner(FIRST_RUN.format(url=redis.url)))
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as b:
        port = b.port
        status, body = http_get(port, "/api/v1/progress/tasks/half")
        # The ETA is computed by the engine that reads the task, from what it knows (the fleet's completion
        # records, loaded at open: "done" is one; not this task's pace); everything stored is identical.
        eta_fields = ("eta", "eta_seconds", "eta_confidence")
        assert body["eta_confidence"] is not None  # estimated from the loaded record of "done"
        assert status == 200 and {k: v for k, v in body.items() if k not in eta_fields} == \
            {k: v for k, v in before["half"].items() if k not in eta_fields}
        assert b.get_task_progress_sync("done") == before["done"]
        status, logs = http_get(port, "/api/v1/progress/tasks/done/logs")
        assert [x["message"] for x in logs["logs"]] == ["first words"]
        status, history = http_get(port, "/api/v1/progress/tasks/half/history")
        assert [e["seq"] for e in history["events"]] == list(range(1, before["half"]["seq"] + 1))
        status, batch = http_get(port, "/api/v1/progress/batch/b")
        assert batch["total_tasks"] == 2 and batch["completed_tasks"] == 1 and batch["missing"] == []
        assert http_get(port, "/api/v1/progress/tasks/nope")[0] == 404

        # WebSocket: the current state on subscribe, and resume replayed from the Redis stream.
        ws = ws_connect(port)
        last = before["half"]["seq"]
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["half"], "resume": {"half": 3}}))
        msgs = ws_until(ws, lambda m: any(x.get("seq") == last and not x.get("replayed") for x in m))
        updates = [m for m in msgs if m["type"] == "progress.update"]
        assert [m["seq"] for m in updates] == list(range(4, last + 1))
        assert all(m.get("replayed") for m in updates[:-1])
        assert updates[-1]["recovered"] is True
        assert {k: v for k, v in updates[-1]["data"].items() if k not in eta_fields} == \
            {k: v for k, v in before["half"].items() if k not in eta_fields}
        ws.close()


def test_restarted_runner_resumes_its_task(redis):
    run_runner(FIRST_RUN.format(url=redis.url))
    out = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, throttle_ms=10)
t.create_task_progress_sync(task_id="half", template_id="tpl", resume=True)
resumed = t.get_task_progress_sync("half")
for i in range(11, 21):
    t.update_progress_sync(task_id="half", step=i, total_steps=20, message=f"step {{i}}")
t.complete_task_sync("half")
print(json.dumps({{"resumed": resumed, "final": t.get_task_progress_sync("half")}}))
t.close()
""")
    result = json.loads(out)
    resumed, final = result["resumed"], result["final"]
    # The task went on from where it was: same stages, progress and timestamps, seq continuing (the resume is an event).
    assert resumed["stages"]["1"]["progress"] == 0.5 and resumed["status"] == "executing"
    assert resumed["seq"] == 12 and resumed["created_at"] != resumed["updated_at"]
    assert final["status"] == "completed" and final["seq"] == 23
    stored = json.loads(redis.cli("GET", "progress:task:{half}:state"))
    stored.pop("stored_times")
    assert stored == final
    with ProgressTracker(redis_url=redis.url) as c:
        assert [e["seq"] for e in c.get_history_sync("half")["events"]] == list(range(1, 24))


def test_a_new_engine_predicts_from_the_fleets_completion_history(redis):
    """SPEC §9/§10: completion records are kept in Redis; an engine opened later (a restarted runner, a listener
    of the fleet) loads them and estimates from that history at once."""
    from redis_support import flushed
    from progress_engine import ETAPredictor
    with ProgressTracker(redis_url=redis.url, throttle_ms=10) as a:
        for i in range(6):
            ETAPredictor(a).record_completion_sync(template_id="tpl-eta", stage_durations={0: 1.0, 1: 10.0 + i, 2: 1.0},
                                     total_duration=12.0 + i, task_id=f"old-{i}")
        flushed(a)
    with ProgressTracker(redis_url=redis.url, throttle_ms=10) as b:
        b.create_task_progress_sync("new", "tpl-eta")
        b.update_stage_sync("new", 1)
        state = b.get_task_progress_sync("new")
        assert state["eta_seconds"] is not None and 8 <= state["eta_seconds"] <= 20, state
        assert state["eta_confidence"] > 0
    with ProgressTracker() as alone:  # the same task without the history: no estimate yet
        alone.create_task_progress_sync("new", "tpl-eta")
        alone.update_stage_sync("new", 1)
        assert alone.get_task_progress_sync("new")["eta_seconds"] is None


def test_a_resumed_task_serves_its_whole_history_and_log(redis):
    """A restarted runner that resumes its task holds only what happened since in memory; its history and log,
    read from that engine (C API, REST), still start at the task's beginning: the rest comes from Redis."""
    from redis_support import flushed
    with ProgressTracker(redis_url=redis.url, throttle_ms=10) as a:
        a.create_task_progress_sync(task_id="long", template_id="tpl")
        a.log_sync("long", "info", "before the restart")
        for i in range(1, 6):
            a.update_progress_sync(task_id="long", step=i, total_steps=10, message=f"step {i}")
        flushed(a)
        before = a.get_task_progress_sync("long")["seq"]
    with ProgressTracker(redis_url=redis.url, throttle_ms=10, listen="127.0.0.1:0") as b:
        b.create_task_progress_sync(task_id="long", template_id="tpl", resume=True)
        b.log_sync("long", "info", "after the restart")
        b.update_progress_sync(task_id="long", step=6, total_steps=10, message="step 6")
        final = b.get_task_progress_sync("long")["seq"]
        assert final == before + 2  # the resume event, then step 6
        history = b.get_history_sync("long")
        assert [e["seq"] for e in history["events"]] == list(range(1, final + 1)), history
        assert history["first_seq"] == 1
        assert [e["message"] for e in b.get_logs_sync("long")["logs"]] == ["before the restart", "after the restart"]
        status, body = http_get(b.port, "/api/v1/progress/tasks/long/history")
        assert status == 200 and [e["seq"] for e in body["events"]] == list(range(1, final + 1))
        status, body = http_get(b.port, "/api/v1/progress/tasks/long/logs")
        assert [e["message"] for e in body["logs"]] == ["before the restart", "after the restart"]


def test_resume_while_redis_does_not_answer_creates_nothing_and_keeps_the_stored_task(redis):
    run_runner(FIRST_RUN.format(url=redis.url))
    stored_before = json.loads(redis.cli("GET", "progress:task:{half}:state"))
    with ProgressTracker(redis_url=redis.url, throttle_ms=10) as t:
        redis.pause()
        try:
            with pytest.raises(EngineIOError, match="resume could not read"):
                t.create_task_progress_sync(task_id="half", template_id="tpl", resume=True)
            with pytest.raises(NotFoundError):
                t.get_task_progress_sync("half")  # nothing was created (a read: Redis is still paused)
        finally:
            redis.resume()
        deadline = time.monotonic() + 10
        while True:  # reads are retried after a second
            try:
                t.create_task_progress_sync(task_id="half", template_id="tpl", resume=True)
                break
            except EngineIOError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        resumed = t.get_task_progress_sync("half")
        assert resumed["seq"] == stored_before["seq"] + 1 and resumed["stages"]["1"]["progress"] == 0.5


def test_a_track_loop_left_early_is_stopped_at_exit_while_its_track_is_still_named(redis):
    # `items = track(...)`, then `break`: the name keeps the generator, so nothing finished the task before exit,
    # and at exit the tracker closed first: the task stayed executing in Redis, and the generator's late finish
    # raised StateError ("Exception ignored in generator").
    proc = run_runner(f"""
from progress_engine import track
t = ProgressTracker(redis_url={redis.url!r})
items = track(range(10), "left", tracker=t)
for i in items:
    if i == 3:
        break
print(t.get_task_progress_sync("left")["status"])
""", wait=False)
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.strip()) == (0, "executing"), err
    assert "Exception ignored" not in err and "StateError" not in err, err
    stored = json.loads(redis.cli("GET", "progress:task:{left}:state"))
    assert (stored["status"], stored["error"]) == ("cancelled", "stopped at step 3 of 10"), stored  # as a break

"""Write-through (SPEC §9): task state, logs, history stream, batch membership, templates and ETA records reach
Redis under the documented keys, finished tasks expire within retention_seconds, and configuration errors of
redis_url are reported."""

import json

import pytest

from redis_support import flushed, task_key, wait_until
from progress_engine import ProgressTracker, _lib
from progress_engine.errors import ConfigError


def stream_events(redis, task_id, ns="progress"):
    """Every event of a task's stream (entries flattened, oldest first)."""
    lines = redis.lines("XRANGE", task_key("events", task_id, ns), "-", "+")
    events = []
    for i, line in enumerate(lines):
        if line == "events":
            events += json.loads(lines[i + 1])
    return events


def test_state_logs_history_and_keys(redis):
    retention = 120
    with ProgressTracker(redis_url=redis.url, throttle_ms=20, retention_seconds=retention) as t:
        t.register_template_stages_sync("tpl", [{"name": "load", "weight": 1}, {"name": "sample", "weight": 3}])
        tid = "job {1}%/é"
        t.create_task_progress_sync(task_id=tid, template_id="tpl", batch_id="B-1")
        for i in range(1, 31):
            t.update_progress_sync(task_id=tid, step=i, total_steps=30, message=f"step {i}")
        t.log_sync(tid, "info", "sampling done")
        t.complete_task_sync(tid)
        t.create_task_progress_sync(task_id="running", template_id="tpl", batch_id="B-1")
        t.update_progress_sync(task_id="running", step=1, total_steps=10, message="go")
        flushed(t)
        local = t.get_task_progress_sync(tid)
        history = t.get_history_sync(tid)

    state = json.loads(redis.cli("GET", task_key("state", tid)))
    # TaskProgress, plus the times as epoch seconds (for an exact restore).
    times = state.pop("stored_times")
    assert state == local and len(times["stages"]) == len(local["stages"])
    assert state["status"] == "completed" and state["seq"] == local["seq"]
    # Every event, in order, nothing twice (no flood here, so nothing thinned).
    assert [e["seq"] for e in stream_events(redis, tid)] == [e["seq"] for e in history["events"]]
    logs = [json.loads(x) for x in redis.lines("LRANGE", task_key("logs", tid), 0, -1)]
    assert [x["message"] for x in logs] == ["sampling done"]
    # Finished: expires within retention; active: has an expiry too (refreshed on every write).
    for kind in ("state", "events", "logs", "logged"):
        ttl = int(redis.cli("TTL", task_key(kind, tid)))
        assert 0 < ttl <= retention, (kind, ttl)
    assert 0 < int(redis.cli("TTL", task_key("state", "running"))) <= retention
    assert sorted(redis.lines("SMEMBERS", "progress:batch:{B-1}")) == sorted([tid, "running"])
    assert json.loads(redis.cli("HGET", "progress:templates", "tpl"))[1]["name"] == "sample"
    etas = [json.loads(x) for x in redis.lines("LRANGE", "progress:eta:{tpl}", 0, -1)]
    assert [r["task_id"] for r in etas] == [tid]
    # The running task heartbeats; the finished one does not.
    assert redis.lines("ZRANGE", "progress:heartbeats", 0, -1) == ["running"]
    # Every key of a task carries the same hash tag, so they share a cluster slot.
    tagged = [k for k in redis.lines("KEYS", "progress:task:*") if "job" in k]
    assert sorted(tagged) == sorted(task_key(k, tid) for k in ("state", "events", "logs", "logged"))
    assert {k[k.index("{"):k.index("}") + 1] for k in tagged} == {"{job %7B1%7D%25/é}"}


def test_namespace_and_coalescing(redis):
    """A flood of updates costs Redis a bounded number of writes: the latest state per throttle window, and a
    window's events thinned once they pass RedisWriter.maxEventsPerWrite (1,024). The creation and the first
    step (which enters the stage: an urgent change, written at once) are written before the flood, and the rest
    (well under a second) falls inside one 2 s window, so no write carries part of the flood unthinned (an urgent
    write taken while the flood had just begun carried its first steps whole). 2 s, not 1: on a loaded 2-core
    machine the wait for the first write plus the flood once took longer than 1 s, and a write in between
    carried 610 of its events whole. No resource samples: on a loaded machine each one changes the executing
    task's CPU figure, so the task is dirty again after every write and never reads as flushed."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=2000, namespace="ns2", resource_interval_ms=3600000) as t:
        t.create_task_progress_sync(task_id="flood", template_id="tpl")
        h = t._handle()
        _lib.progress_update(h, b"flood", 1, 20000, None)
        flushed(t)
        for i in range(2, 20001):
            _lib.progress_update(h, b"flood", i, 20000, None)
        flushed(t)
        stats = t.stats_sync()
        final = t.get_task_progress_sync("flood")
    assert stats["redis_task_writes"] < 50, stats
    assert json.loads(redis.cli("GET", task_key("state", "flood", "ns2")))["seq"] == final["seq"]
    events = stream_events(redis, "flood", "ns2")
    assert events[-1]["seq"] == final["seq"] and len(events) < 200
    assert stats["redis_dropped_events"] > 0


def test_queue_depth_counts_changes_the_writer_has_not_taken_yet(redis):
    """redis_queue_depth counts every task with a change not yet written, including those the writer thread has
    not yet moved out of its inbox: it read 0 between a change and the writer's next wake-up, so a caller
    waiting for "flushed" could go on before the change reached Redis. Here the writer is stuck sending task
    a to a stopped Redis (for up to its 1 s I/O timeout) while b and c are created."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=50, resource_interval_ms=3600000) as t:
        t.create_task_progress_sync(task_id="warm", template_id="tpl")
        flushed(t)
        redis.pause()
        try:
            t.create_task_progress_sync(task_id="a", template_id="tpl")
            assert t.stats_sync()["redis_queue_depth"] == 1
            t.create_task_progress_sync(task_id="b", template_id="tpl")
            t.create_task_progress_sync(task_id="c", template_id="tpl")
            assert t.stats_sync()["redis_queue_depth"] == 3
        finally:
            redis.resume()
        flushed(t)
        stored = [json.loads(redis.cli("GET", task_key("state", tid)))["task_id"] for tid in "abc"]
        assert sorted(stored) == ["a", "b", "c"]


def test_last_counter_read_is_written_through_and_fanned_out(redis):
    """The last read of a step counter is an update like any other. progress_task_detach_counter (and
    progress_engine_close for a counter still attached) applied it in memory only: Redis and watchers never saw
    that step unless another change of the task followed."""
    import ctypes
    from redis_support import ws_connect, ws_until
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=20) as t:
        h = t._handle()
        counters = {}
        for tid in ("detached", "closed"):
            t.create_task_progress_sync(task_id=tid, template_id="tpl")
            counters[tid] = (ctypes.c_longlong * 2)(1, 100)
            _lib.progress_task_attach_counter(h, _lib.encode(tid), counters[tid])
        # The maintenance thread applies step 1 of both; the writer stores it.
        wait_until(lambda: all(t.get_task_progress_sync(tid)["stages"]["1"]["progress"] == 0.01 for tid in counters),
                   what="the counters' first step")
        flushed(t)
        ws = ws_connect(t.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["detached"]}))
        ws_until(ws, lambda ms: any(m["type"] == "progress.update" for m in ms))
        # Step 40, then the last read at once (before the maintenance thread's next round, 20 ms away).
        counters["detached"][0] = 40
        _lib.progress_task_detach_counter(h, b"detached")
        local = t.get_task_progress_sync("detached")
        assert local["stages"]["1"]["progress"] == 0.4
        flushed(t)
        stored = json.loads(redis.cli("GET", task_key("state", "detached")))
        assert (stored["seq"], stored["stages"]["1"]["progress"]) == (local["seq"], 0.4)
        seen = ws_until(ws, lambda ms: any(m.get("seq") == local["seq"] for m in ms))
        assert seen[-1]["data"]["stages"]["1"]["progress"] == 0.4
        ws.close()
        counters["closed"][0] = 70  # read by close
    stored = json.loads(redis.cli("GET", task_key("state", "closed")))
    assert stored["stages"]["1"]["progress"] == 0.7


@pytest.mark.parametrize("url", ["http://x:1", "redis://", "redis://h:0", "redis://h:99999", "redis://h:1/x",
                                 "redis://@h:1"])
def test_bad_url_is_a_config_error(url):
    with pytest.raises(ConfigError) as e:
        ProgressTracker(redis_url=url)
    assert "redis_url" in str(e.value)


def test_unreachable_redis_does_not_fail_the_runner():
    import time
    from redis_support import free_port
    t0 = time.time()
    t = ProgressTracker(redis_url=f"redis://127.0.0.1:{free_port()}/0", throttle_ms=10)
    t.create_task_progress_sync(task_id="x", template_id="tpl")
    for i in range(100):
        t.update_progress_sync(task_id="x", step=i, total_steps=100, message="m")
    t.complete_task_sync("x")
    assert t.get_task_progress_sync("x")["status"] == "completed"
    assert t.stats_sync()["redis_connected"] == 0
    t.close()
    assert time.time() - t0 < 4


def test_an_acl_user_in_redis_url_logs_in_as_that_user(tmp_path):
    """`redis://user:password@…` sends `AUTH user password` (Redis 6+ ACL users), not `AUTH password` as the
    default user: with the default user switched off, only the named user gets in."""
    from live_support import RedisServer, Resp
    server = RedisServer(tmp_path)
    server.start()
    try:
        admin = server.client()
        assert admin("ACL", "SETUSER", "runner", "on", ">s3cret", "allkeys", "allchannels", "allcommands") == "OK"
        assert admin("ACL", "SETUSER", "default", "off") == "OK"
        with ProgressTracker(redis_url=f"redis://runner:s3cret@127.0.0.1:{server.port}/0", throttle_ms=10) as t:
            t.create_task_progress_sync(task_id="acl", template_id="tpl")
            t.update_progress_sync(task_id="acl", step=3, total_steps=10, message="three")
            flushed(t)
        check = Resp(server.port)
        assert check("AUTH", "runner", "s3cret") == "OK"
        state = json.loads(check("GET", task_key("state", "acl")))
        assert state["stages"][str(state["current_stage"])]["message"] == "three"
        check.close()
        admin.close()
    finally:
        server.stop()


def test_active_tasks_keep_their_keys_and_a_finished_log_lives_from_the_end(redis):
    """SPEC §9: finished tasks expire retention_seconds after they finish — their log too, not that long after its
    last entry — and active ones have their expiry refreshed, even when they report nothing for longer than the
    retention (queued behind others, or in a long silent stage)."""
    import time
    with ProgressTracker(redis_url=redis.url, throttle_ms=10, retention_seconds=2, heartbeat_timeout_seconds=0.6) as t:
        t.create_task_progress_sync(task_id="quiet", template_id="tpl")  # queued, never changed again
        t.create_task_progress_sync(task_id="busy", template_id="tpl")
        t.update_progress_sync(task_id="busy", step=1, total_steps=10, message="one")  # executing, then silent
        t.create_task_progress_sync(task_id="done", template_id="tpl")
        t.log_sync("done", "info", "the only log line")
        flushed(t)
        time.sleep(1.5)
        t.complete_task_sync("done")
        flushed(t)
        assert int(redis.cli("PTTL", task_key("logs", "done"))) > 1500, \
            "the log must live retention_seconds from the end"
        time.sleep(2.6)  # longer than the retention, with no change of "quiet" or "busy"
        for tid in ("quiet", "busy"):
            for kind in ("state", "events"):
                assert 0 < int(redis.cli("PTTL", task_key(kind, tid))) <= 2000, (tid, kind)
        assert redis.cli("EXISTS", task_key("state", "done")) == "0"  # expired 2 s after it finished
        assert redis.cli("EXISTS", task_key("logs", "done")) == "0"


def test_a_retention_shorter_than_the_refresh_does_not_expire_a_running_tasks_keys(redis):
    """retention_seconds 1 with heartbeats every 2 s (heartbeat_timeout_seconds 6): the active keys' expiry is
    refreshed every 2 s, so with the retention as their expiry a silent running task lost its keys for a second of
    every two. An active task's keys get four refresh intervals (8 s); a finished task's keep the retention."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=10, retention_seconds=1, heartbeat_timeout_seconds=6) as t:
        t.create_task_progress_sync(task_id="running", template_id="tpl")
        t.update_progress_sync(task_id="running", step=1, total_steps=10, message="one")
        t.log_sync("running", "info", "a line")
        t.create_task_progress_sync(task_id="finished", template_id="tpl")
        t.complete_task_sync("finished")
        # One connection for the reads: a redis-cli process per read can take longer than the finished keys' 1 s.
        c = redis.client()
        try:
            flushed(t)
            for kind in ("state", "events"):
                assert 0 < c("PTTL", task_key(kind, "finished")) <= 1000, kind
            for kind in ("state", "events", "logs"):
                assert 7000 < c("PTTL", task_key(kind, "running")) <= 8000, kind
            # A batch's set: a finished member's write does not cut it short for a running one.
            t.create_task_progress_sync(task_id="member-running", template_id="tpl", batch_id="b")
            t.update_progress_sync(task_id="member-running", step=1, total_steps=10)
            t.create_task_progress_sync(task_id="member-done", template_id="tpl", batch_id="b")
            flushed(t)
            t.complete_task_sync("member-done")
            flushed(t)
            assert 0 < c("PTTL", task_key("state", "member-done")) <= 1000
            assert 7000 < c("PTTL", "progress:batch:{b}") <= 8000
        finally:
            c.close()


def test_stored_templates_are_written_as_the_engine_reads_them_and_an_unreadable_one_is_reported(redis, capfd):
    """An engine loads the fleet's templates at open; one it cannot read (another version's, a repeated key) was
    skipped without a word. A registration stores the engine's own form of the stages, not the caller's text."""
    from progress_engine import _lib
    redis.cli("HSET", "progress:templates", "twice", '[{"name":"a","name":"b"}]')
    redis.cli("HSET", "progress:templates", "fine", '[{"name":"load","weight":1}]')
    with ProgressTracker(redis_url=redis.url) as t:
        t._call(_lib.progress_register_template_stages, b"mine",
                b' [ {"name" : "load", "weight" : 1 }, {"name" : "sample", "weight" : 3 } ] ')
        flushed(t)
        t.create_task_progress_sync("uses-fine", "fine")
        assert [s["name"] for s in t.get_task_progress_sync("uses-fine")["stages"].values()] == ["load"]
    assert redis.cli("HGET", "progress:templates", "mine") == \
        '[{"name":"load","description":"","weight":0.25},{"name":"sample","description":"","weight":0.75}]'
    skipped = [json.loads(x) for x in capfd.readouterr().err.splitlines() if '"event":"template_skipped"' in x]
    assert [(x["template_id"], "appears twice" in x["reason"]) for x in skipped] == [("twice", True)], skipped


def test_a_thousand_steps_a_second_are_all_written_through(redis):
    """SPEC §9, write-through of every change: a task reporting 1,000 steps a second (a fast token stream) has
    every step in its Redis stream, nothing thinned or dropped (a write carries up to 1,024 events; only floods
    beyond that per throttle window are thinned, and counted)."""
    import time
    with ProgressTracker(redis_url=redis.url, throttle_ms=100) as t:
        t.create_task_progress_sync(task_id="fast", template_id="tpl")
        h = t._handle()
        start = time.monotonic()
        for i in range(1, 1001):
            _lib.progress_update(h, b"fast", i, 1000, None)
            if i % 10 == 0:
                delay = start + i / 1000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        flushed(t)
        final = t.get_task_progress_sync("fast")["seq"]
        stats = t.stats_sync()
    assert stats["redis_dropped_events"] == 0, stats
    assert [e["seq"] for e in stream_events(redis, "fast")] == list(range(1, final + 1))


def test_a_completion_record_is_stored_once(redis):
    """A record the writer sends again (after a lost reply its queued writes go again) is not pushed twice: here the
    same record, recorded twice, is one entry of the template's list; another record is another entry."""
    with ProgressTracker(redis_url=redis.url) as t:
        eta = t.eta_predictor
        for _ in range(2):
            eta.record_completion_sync(template_id="once", stage_durations={0: 1.5}, total_duration=1.5,
                                       task_id="t1", timestamp=1_700_000_000)
        eta.record_completion_sync(template_id="once", stage_durations={0: 2.5}, total_duration=2.5,
                                   task_id="t2", timestamp=1_700_000_100)
        flushed(t)
    records = [json.loads(x) for x in redis.lines("LRANGE", "progress:eta:{once}", 0, -1)]
    assert [r["task_id"] for r in records] == ["t1", "t2"], records


def test_a_finished_task_reused_replaces_what_redis_holds(redis):
    with ProgressTracker(redis_url=redis.url, throttle_ms=10) as t:
        t.create_task_progress_sync("again", "tpl")
        for i in range(1, 6):
            t.update_progress_sync("again", i, 10, message=f"old {i}")
        t.complete_task_sync("again")
        flushed(t)
        old = json.loads(redis.cli("GET", task_key("state", "again")))
        t.create_task_progress_sync("again", "tpl", reuse=True)
        t.update_progress_sync("again", 1, 10, message="new 1")
        flushed(t)
        new = json.loads(redis.cli("GET", task_key("state", "again")))
    assert old["status"] == "completed" and new["status"] == "executing", new
    assert new["seq"] < old["seq"] and new["created_at"] >= old["created_at"], (old, new)
    # Another engine reads the new task, and its history from its own first event.
    with ProgressTracker(redis_url=redis.url) as other:
        assert other.get_task_progress_sync("again")["stages"]["1"]["message"] == "new 1"
        assert [e["seq"] for e in other.get_history_sync("again")["events"]] == list(range(1, new["seq"] + 1))

"""The fleet (SPEC §2 topology 3): runners without a listener, listeners without runners, Redis between them.
Every update reaches a client on another engine, in order; a lost worker's task fails; resume is exact."""

import json
import signal
import subprocess
import time

import pytest

from redis_support import http_get, run_runner, wait_until, ws_connect, ws_until
from progress_engine import ProgressTracker


def updates_of(msgs, task_id):
    return [m for m in msgs if m.get("type") == "progress.update" and m.get("task_id") == task_id]


def test_runner_process_to_client_on_listener(redis):
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
        ws = ws_connect(b.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["*"]}))
        ws_until(ws, lambda m: any(x["type"] == "subscribed" for x in m))
        out = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, throttle_ms=5)
t.create_task_progress_sync(task_id="remote", template_id="tpl")
time.sleep(0.02)
for i in range(1, 41):
    t.update_progress_sync(task_id="remote", step=i, total_steps=40, message=f"step {{i}}")
    time.sleep(0.02)  # slower than throttle_ms: no update may be coalesced away
t.log_sync("remote", "info", "bye")
t.complete_task_sync("remote")
print(json.dumps(t.get_task_progress_sync("remote")))
t.close()
""")
        final = json.loads(out)
        msgs = ws_until(ws, lambda m: any(x.get("seq") == final["seq"] for x in updates_of(m, "remote"))
                           and any(x["type"] == "task.log" for x in m))
        seqs = [m["seq"] for m in updates_of(msgs, "remote")]
        # In order, nothing twice, ending in the final state. Normally every seq is its own message; when the
        # machine is too busy to keep the pace, two changes may reach the client as one state (the per-client
        # coalescing of SPEC §7, as on a single engine), so the mirror's history is what shows that every
        # update reached engine B, in order.
        assert seqs == sorted(set(seqs)) and seqs[-1] == final["seq"], seqs
        assert len(seqs) >= final["seq"] // 2, seqs
        assert updates_of(msgs, "remote")[-1]["data"] == final
        history = http_get(b.port, "/api/v1/progress/tasks/remote/history")[1]
        assert [e["seq"] for e in history["events"]] == list(range(1, final["seq"] + 1))
        status, body = http_get(b.port, "/api/v1/progress/tasks/remote")
        assert body == final
        assert [x["entry"]["message"] for x in msgs if x["type"] == "task.log"] == ["bye"]
        ws.close()


def test_lost_worker_fails_its_task(redis, capfd):
    timeout = 1.0
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", heartbeat_timeout_seconds=timeout) as b:
        proc = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, heartbeat_timeout_seconds={timeout}, throttle_ms=5)
t.create_task_progress_sync(task_id="doomed", template_id="tpl")
t.update_progress_sync(task_id="doomed", step=3, total_steps=10, message="working")
t.create_task_progress_sync(task_id="alive-then-done", template_id="tpl")
t.complete_task_sync("alive-then-done")
while t.stats_sync()["redis_queue_depth"] or not t.stats_sync()["redis_connected"]:
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(60)
""", wait=False)
        assert proc.stdout.readline().strip() == "ready"
        # Alive: heartbeats keep the executing task as it is for longer than the timeout.
        time.sleep(2 * timeout)
        assert http_get(b.port, "/api/v1/progress/tasks/doomed")[1]["status"] == "executing"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.time()
        body = wait_until(lambda: (lambda b_: b_ if b_["status"] == "failed" else None)(
            http_get(b.port, "/api/v1/progress/tasks/doomed")[1]), timeout=5, what="worker lost")
        assert time.time() - killed < timeout + 1.5
        assert body["error"] == "worker lost"
        stored = json.loads(redis.cli("GET", "progress:task:{doomed}:state"))
        assert stored["status"] == "failed" and stored["error"] == "worker lost"
        assert redis.lines("ZRANGE", "progress:heartbeats", 0, -1) == []
        assert b.stats_sync()["redis_workers_lost"] == 1
    # The log line says why and what to change if the worker was alive.
    lost = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"event":"worker_lost"' in line]
    assert len(lost) == 1 and lost[0]["task_id"] == "doomed" and lost[0]["heartbeat_timeout_seconds"] == "1.0"
    assert "needs a longer heartbeat_timeout_seconds" in lost[0]["reason"], lost


def test_resume_replays_exactly_what_was_missed(redis):
    """A runner engine and a listener engine (one process here, two engines: the fleet path all the same)."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a, \
            ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
        a.create_task_progress_sync(task_id="r", template_id="tpl")
        ws = ws_connect(b.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["r"]}))
        for i in range(1, 6):
            a.update_progress_sync(task_id="r", step=i, total_steps=200, message=f"step {i}")
            time.sleep(0.01)
        msgs = ws_until(ws, lambda m: any(x.get("seq") == 6 for x in updates_of(m, "r")))
        last = updates_of(msgs, "r")[-1]["seq"]
        ws.close()
        for i in range(6, 56):  # 50 events while the client is away
            a.update_progress_sync(task_id="r", step=i, total_steps=200, message=f"step {i}")
            time.sleep(0.01)
        wait_until(lambda: http_get(b.port, "/api/v1/progress/tasks/r")[1]["seq"] == last + 50, what="mirror")
        ws = ws_connect(b.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["r"], "resume": {"r": last}}))
        msgs = ws_until(ws, lambda m: any(x.get("seq") == last + 50 for x in updates_of(m, "r")))
        got = updates_of(msgs, "r")
        assert [m["seq"] for m in got] == list(range(last + 1, last + 51))
        assert all(m.get("replayed") for m in got[:-1]) and got[-1]["recovered"] is True
        # Then live.
        a.update_progress_sync(task_id="r", step=100, total_steps=200, message="live")
        live = ws_until(ws, lambda m: len(updates_of(m, "r")) > 0)
        assert updates_of(live, "r")[0]["seq"] == last + 51
        ws.close()

        # A listener that never held the task resumes from the Redis stream, just as exactly.
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as c:
            ws = ws_connect(c.port)
            ws.send(json.dumps({"type": "subscribe", "task_ids": ["r"], "resume": {"r": last}}))
            msgs = ws_until(ws, lambda m: any(x.get("seq") == last + 51 and not x.get("replayed")
                                                 for x in updates_of(m, "r")))
            got = updates_of(msgs, "r")
            assert [m["seq"] for m in got] == list(range(last + 1, last + 52))
            assert got[-1]["recovered"] is True
            ws.close()


def test_resume_after_a_flood_is_honest(redis):
    """Under a flood the stream keeps the latest step per write: a resume that falls in a thinned stretch gets
    the full current state with recovered: false, never a replay with holes."""
    from progress_engine import _lib
    with ProgressTracker(redis_url=redis.url, throttle_ms=50) as a:
        a.create_task_progress_sync(task_id="f", template_id="tpl")
        h = a._handle()
        for i in range(1, 5001):
            _lib.progress_update(h, b"f", i, 5000, None)
        a.complete_task_sync("f")
        final = a.get_task_progress_sync("f")
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as c:
        ws = ws_connect(c.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["f"], "resume": {"f": 10}}))
        got = updates_of(ws_until(ws, lambda m: len(updates_of(m, "f")) > 0), "f")
        assert len(got) == 1 and got[0]["recovered"] is False and got[0]["data"] == final
        ws.close()


def test_star_on_a_listener_started_later_lists_the_fleets_tasks(redis):
    """SPEC §7: "*" is every task. A listener started after the runners (or restarted) holds none of their tasks;
    its "*" subscribers still get each task of the fleet written within the retention, finished or running, from
    Redis' task index, and then the live updates."""
    from redis_support import flushed
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
        a.create_task_progress_sync(task_id="finished", template_id="tpl")
        a.complete_task_sync("finished")
        a.create_task_progress_sync(task_id="running", template_id="tpl")
        a.update_progress_sync(task_id="running", step=3, total_steps=10, message="three")
        flushed(a)
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
            ws = ws_connect(b.port)
            ws.send(json.dumps({"type": "subscribe", "task_ids": ["*"]}))
            msgs = ws_until(ws, lambda m: updates_of(m, "finished") and updates_of(m, "running"))
            assert updates_of(msgs, "finished")[0]["data"]["status"] == "completed"
            running = updates_of(msgs, "running")[0]["data"]
            assert running["status"] == "executing" and running["stages"][str(running["current_stage"])]["message"] == "three"
            a.update_progress_sync(task_id="running", step=4, total_steps=10, message="four")
            live = ws_until(ws, lambda m: any(x["data"]["stages"][str(x["data"]["current_stage"])]["message"] == "four"
                                              for x in updates_of(m, "running")))
            assert updates_of(live, "running")
            ws.close()


def test_a_listener_learns_etas_from_the_fleets_completions(redis):
    """Tasks other engines complete join a listener's ETA history as they complete (their owners store the
    records; the listener had loaded only those written before it opened)."""
    import time as _time
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
        with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
            t0 = _time.time() - 100
            for i in range(5):
                tid = f"done-{i}"
                a.create_task_progress_sync(tid, "tpl-fleet", "image_generation", timestamp=t0 + i)
                a.send_event_sync(tid, "model_loading", {"timestamp": t0 + i + 1})
                a.send_event_sync(tid, "generation", {"timestamp": t0 + i + 3})
                a.send_event_sync(tid, "execution_complete", {"timestamp": t0 + i + 13})
            wait_until(lambda: http_get(b.port, "/api/v1/progress/tasks/done-4")[1].get("status") == "completed",
                       what="the last completion mirrored")
        b.create_task_progress_sync("new", "tpl-fleet", "image_generation")
        b.update_stage_sync("new", 1)
        state = b.get_task_progress_sync("new")
        assert state["eta_seconds"] is not None and 5 <= state["eta_seconds"] <= 20, state


def test_mirror_takes_the_runners_states_after_a_resource_sample(redis):
    # A listener sampling every 10 ms, a runner that reports less often than that: what a real fleet does with the
    # default 1 s interval and steps a few seconds apart. The listener must end where the runner ends.
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", resource_interval_ms=10) as listener, \
         ProgressTracker(redis_url=redis.url, throttle_ms=10) as runner:
        runner.create_task_progress_sync("quiet", "tpl")
        runner.update_progress_sync("quiet", 1, 10, "one")
        wait_until(lambda: http_get(listener.port, "/api/v1/progress/tasks/quiet")[0] == 200, what="the mirror")
        time.sleep(0.2)  # about 20 samples on the listener
        runner.update_progress_sync("quiet", 2, 10, "two")
        runner.complete_task_sync("quiet")
        final = runner.get_task_progress_sync("quiet")
        wait_until(lambda: http_get(listener.port, "/api/v1/progress/tasks/quiet")[1]["status"] == "completed",
                   timeout=3, what="the listener to show the runner's completion")
        assert http_get(listener.port, "/api/v1/progress/tasks/quiet")[1]["seq"] == final["seq"]


def test_a_listener_mirrors_a_new_task_under_an_id_used_before(redis):
    # A runner's task finishes; another runner uses the id for a new task (no resume), whose seq starts low again.
    # The listener's mirror of the old task, and its WebSocket client, follow the new one from its first state.
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as listener:
        with ProgressTracker(redis_url=redis.url, throttle_ms=10) as first:
            first.create_task_progress_sync("again", "tpl")
            for i in range(1, 11):
                first.update_progress_sync("again", i, 10, f"old {i}")
            first.complete_task_sync("again")
            old = first.get_task_progress_sync("again")
        wait_until(lambda: http_get(listener.port, "/api/v1/progress/tasks/again")[1].get("seq") == old["seq"],
                   what="the mirror of the first task")
        ws = ws_connect(listener.port)
        try:
            ws.send(json.dumps({"type": "subscribe", "task_ids": ["again"]}))
            ws_until(ws, lambda m: any(x.get("seq") == old["seq"] for x in m))
            with ProgressTracker(redis_url=redis.url, throttle_ms=10) as second:
                second.create_task_progress_sync("again", "tpl")
                second.update_progress_sync("again", 3, 10, "new 3")
                new = second.get_task_progress_sync("again")
                assert new["seq"] < old["seq"] and new["created_at"] != old["created_at"]
                wait_until(lambda: (lambda t: (t.get("created_at"), t.get("seq")))(
                    http_get(listener.port, "/api/v1/progress/tasks/again")[1]) == (new["created_at"], new["seq"]),
                    timeout=5, what="the mirror of the new task")
                msgs = ws_until(ws, lambda m: any(x.get("data", {}).get("created_at") == new["created_at"]
                                                  for x in m), timeout=5)
                shown = http_get(listener.port, "/api/v1/progress/tasks/again")[1]
                assert shown["status"] == "executing" and shown["seq"] == new["seq"], shown
                assert any(x.get("data", {}).get("stages", {}).get("1", {}).get("message") == "new 3" for x in msgs) \
                    or shown["stages"]["1"]["message"] == "new 3"
        finally:
            ws.close()


def test_a_worker_back_from_a_pause_reclaims_the_task_the_fleet_called_lost(redis):
    # The worker is stopped longer than heartbeat_timeout_seconds: the listener fails its task ("worker lost") at
    # the next seq. Back, the worker completes it at that same seq: Redis refuses the write (the stored state is
    # the listener's), and the worker's engine goes on past it, so Redis, the listener and the stream all end on
    # the worker's completion.
    timeout = 1.0
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", heartbeat_timeout_seconds=timeout) as b:
        proc = run_runner(f"""
import sys
t = ProgressTracker(redis_url={redis.url!r}, heartbeat_timeout_seconds={timeout}, throttle_ms=5,
                    resource_interval_ms=3600000)
t.create_task_progress_sync(task_id="back", template_id="tpl")
t.update_progress_sync(task_id="back", step=3, total_steps=10, message="working")
while t.stats_sync()["redis_queue_depth"] or not t.stats_sync()["redis_connected"]:
    time.sleep(0.01)
print(t.get_task_progress_sync("back")["seq"], flush=True)
sys.stdin.readline()
t.complete_task_sync("back")
print(t.get_task_progress_sync("back")["seq"], flush=True)
t.close()
""", wait=False, stdin=subprocess.PIPE)
        seq = int(proc.stdout.readline())
        proc.send_signal(signal.SIGSTOP)
        try:
            lost = wait_until(lambda: (lambda b_: b_ if b_["status"] == "failed" else None)(
                http_get(b.port, "/api/v1/progress/tasks/back")[1]), timeout=10, what="worker lost")
            assert lost["seq"] == seq + 1 and lost["error"] == "worker lost"
        finally:
            proc.send_signal(signal.SIGCONT)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        # Its own completion took the seq the listener used; the writer may already have moved it past (seq + 2)
        # by the time the worker reads it back.
        assert int(proc.stdout.readline()) in (seq + 1, seq + 2)
        assert proc.wait(timeout=30) == 0
        final = wait_until(lambda: (lambda b_: b_ if b_["status"] == "completed" else None)(
            http_get(b.port, "/api/v1/progress/tasks/back")[1]), timeout=10, what="the worker's completion")
        stored = json.loads(redis.cli("GET", "progress:task:{back}:state"))
        assert stored["status"] == "completed" and stored["seq"] == final["seq"] == seq + 2, (stored["seq"], final)
        events = b.get_history_sync("back")["events"]
        assert [(e["seq"], e["type"]) for e in events[-2:]] == [(seq + 1, "failed"), (seq + 2, "completed")], events


def test_a_task_whose_worker_died_while_it_was_queued_is_failed_too(redis):
    timeout = 1.0
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", heartbeat_timeout_seconds=timeout) as b:
        proc = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, heartbeat_timeout_seconds={timeout}, throttle_ms=5)
t.create_task_progress_sync(task_id="waiting", template_id="tpl", template_category="image_generation")
while t.stats_sync()["redis_queue_depth"] or not t.stats_sync()["redis_connected"]:
    time.sleep(0.01)
print("ready", flush=True)
time.sleep(60)
""", wait=False)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(2 * timeout)  # alive: its heartbeats keep the queued task as it is
        assert http_get(b.port, "/api/v1/progress/tasks/waiting")[1]["status"] == "queued"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        body = wait_until(lambda: (lambda b_: b_ if b_["status"] == "failed" else None)(
            http_get(b.port, "/api/v1/progress/tasks/waiting")[1]), timeout=5, what="worker lost")
        assert body["error"] == "worker lost"
        stored = json.loads(redis.cli("GET", "progress:task:{waiting}:state"))
        assert stored["status"] == "failed" and stored["error"] == "worker lost"


def test_a_listener_whose_subscriber_was_away_reads_the_missed_log_and_history_from_redis(redis):
    """The listener's subscriber connection is killed again and again while a worker logs and steps: the messages
    published meanwhile are lost to pub/sub, and the mirror is refreshed with the state alone. Its log and history
    had gaps in the middle (6 of 43 log entries, 3 of 43 events); they now come from Redis where memory may miss
    them."""
    import threading
    from redis_support import flushed

    opts = dict(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000)
    with ProgressTracker(listen="127.0.0.1:0", **opts) as listener, ProgressTracker(**opts) as worker:
        worker.create_task_progress_sync("t", "tpl")
        worker.log_sync("t", "info", "m1")
        worker.update_progress_sync("t", 1, 100, message="s1")
        wait_until(lambda: http_get(listener.port, "/api/v1/progress/tasks/t")[1].get("seq", 0) >= 2,
                   what="the mirror")
        stop = threading.Event()

        def kill_subscribers():
            while not stop.is_set():
                redis.cli("CLIENT", "KILL", "TYPE", "pubsub")
                time.sleep(0.01)

        killer = threading.Thread(target=kill_subscribers)
        killer.start()
        try:
            for i in range(2, 42):
                worker.log_sync("t", "info", f"m{i}")
                worker.update_progress_sync("t", i, 100, message=f"s{i}")
                time.sleep(0.02)
        finally:
            stop.set()
            killer.join()
        time.sleep(0.5)
        worker.log_sync("t", "info", "m42")
        worker.update_progress_sync("t", 42, 100, message="s42")
        flushed(worker)
        final = worker.get_task_progress_sync("t")["seq"]
        wait_until(lambda: http_get(listener.port, "/api/v1/progress/tasks/t")[1]["seq"] == final, what="the end")
        assert listener.stats_sync()["redis_reconnects"] >= 1  # the subscriber was away at least once
        logs = [e["message"] for e in http_get(listener.port, "/api/v1/progress/tasks/t/logs")[1]["logs"]]
        assert logs == [f"m{i}" for i in range(1, 43)], logs
        events = http_get(listener.port, "/api/v1/progress/tasks/t/history")[1]["events"]
        assert [e["seq"] for e in events] == list(range(1, final + 1))

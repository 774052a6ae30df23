"""Fork safety (include/progress.h, "Fork"): a tracker opened before fork() with redis_url, as a Celery prefork
worker, `gunicorn --preload` or a multiprocessing 'fork' pool has it. Each child gets a working engine of its
own: its tasks reach Redis and a fleet listener, its in-process calls work, it has no listener; the parent,
updating meanwhile, is unaffected."""

import multiprocessing
import os
import threading
import time

import pytest

from redis_support import SERVER, ProgressServer, http_get, wait_until
from progress_engine import ProgressTracker

STEPS = 40
JOBS = 8

tracker = None  # opened by the test before the pool forks; the children use their copy


def child_job(i):
    """In a pool worker: one task run to completion; returns what the child's own engine says of it."""
    task_id = f"child-{i}"
    tracker.create_task_progress_sync(task_id=task_id, template_id="forked")
    for step in range(1, STEPS + 1):
        tracker.update_progress_sync(task_id=task_id, step=step, total_steps=STEPS, message=f"step {step}")
    tracker.complete_task_sync(task_id)
    final = tracker.get_task_progress_sync(task_id)
    return {"pid": os.getpid(), "port": tracker.port, "task": final, "tasks_held": tracker.stats_sync()["tasks"]}


def history_seqs_and_steps(port, task_id):
    status, body = http_get(port, f"/api/v1/progress/tasks/{task_id}/history")
    assert status == 200, body
    return [e["seq"] for e in body["events"]], [e["message"] for e in body["events"] if e["type"] == "progress"]


@pytest.mark.skipif(not SERVER.exists(), reason="build first: make build (.build/release/progress-server)")
def test_fork_pool_children_reach_redis_and_a_listener(redis):
    global tracker
    tracker = ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5)
    try:
        parent_port = tracker.port
        tracker.create_task_progress_sync(task_id="parent", template_id="forked")
        stop = threading.Event()

        def parent_updates():
            # The parent keeps calling the engine through the forks (a message takes the engine call, not the step
            # counter): a fork taken while this thread is in an update must leave neither process with a lock held.
            step = 0
            while not stop.is_set() or step < STEPS:
                step = min(step + 1, STEPS)
                tracker.update_progress_sync(task_id="parent", step=step, total_steps=STEPS, message=f"step {step}")
                time.sleep(0.001)  # each call is an event: a flood past 1,024 per write would be thinned in Redis

        updater = threading.Thread(target=parent_updates)
        updater.start()
        pool = multiprocessing.get_context("fork").Pool(4)
        try:
            results = pool.map(child_job, range(JOBS), chunksize=1)
            stop.set()
            updater.join(10)
            tracker.complete_task_sync("parent")
            assert len({r["pid"] for r in results}) > 1, "the pool ran every job in one process"
            for r in results:
                assert r["port"] == -1, "a child has no listener"
                assert r["task"]["status"] == "completed"
            for pid in {r["pid"] for r in results}:
                # The parent's tasks stay the parent's: a child holds only those it created.
                ran = [r for r in results if r["pid"] == pid]
                assert max(r["tasks_held"] for r in ran) == len(ran), ran
            # The pool's workers are still alive (as Celery's are): their writer threads write.
            with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
                for r in results:
                    task = r["task"]
                    for port in (server.port, parent_port):
                        wait_until(lambda: http_get(port, f"/api/v1/progress/tasks/{task['task_id']}")[1]
                                   .get("seq") == task["seq"], timeout=10,
                                   what=f"{task['task_id']} on the listener at {port}")
                        status, body = http_get(port, f"/api/v1/progress/tasks/{task['task_id']}")
                        assert status == 200 and body["status"] == "completed", body
                    # 0 lost updates: every event of the child's task is in Redis, each step once, in order.
                    seqs, steps = history_seqs_and_steps(server.port, task["task_id"])
                    assert seqs == list(range(1, task["seq"] + 1)), seqs
                    assert steps == [f"step {s}" for s in range(1, STEPS + 1)], steps
                parent = tracker.get_task_progress_sync("parent")
                assert parent["status"] == "completed"
                wait_until(lambda: http_get(server.port, "/api/v1/progress/tasks/parent")[1].get("seq")
                           == parent["seq"], timeout=10, what="the parent's task on the fleet listener")
                seqs, steps = history_seqs_and_steps(server.port, "parent")
                assert seqs == list(range(1, parent["seq"] + 1)), seqs
                assert steps[:STEPS] == [f"step {s}" for s in range(1, STEPS + 1)], steps
                assert set(steps[STEPS:]) <= {f"step {STEPS}"}, steps
                assert tracker.stats_sync()["redis_dropped_events"] == 0
            assert tracker.port == parent_port
            status, _ = http_get(parent_port, "/healthz")
            assert status == 200, "the parent's listener still serves"
        finally:
            pool.close()
            pool.join()
    finally:
        tracker.close()
        tracker = None

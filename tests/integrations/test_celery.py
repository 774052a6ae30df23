"""progress_engine.integrations.celery with a real Celery worker in the prefork pool: the broker, the result backend
and the engines' write-through all on the test's own redis-server, and a `progress-server` on the same Redis
watched over its WebSocket (the fleet topology). Three tasks at once in three pool children, one failing; a
revoked task; the worker is stopped whatever happens."""

from __future__ import annotations

import pytest

from celery_support import (HERE, Worker, fleet, http_get, subscribe_all, until_finished,  # noqa: F401
                            updates_of, wait_until)

N = 12


@pytest.fixture(scope="module")
def worker(fleet):
    folder, redis, server = fleet
    w = Worker(folder, "celery_app", HERE, {"TEST_REDIS_URL": redis.url}, concurrency=3)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def client(fleet):
    from celery import Celery
    redis = fleet[1]
    app = Celery("client", broker=redis.url, backend=redis.url)
    yield app
    app.close()


def test_three_concurrent_tasks_one_failure(fleet, worker, client):
    server = fleet[2]
    ws = subscribe_all(server.port)
    try:
        results = [client.send_task("celery_app.count", args=(N, 0.1)),
                   client.send_task("celery_app.count", args=(N, 0.1)),
                   client.send_task("celery_app.count", args=(N, 0.1, 5))]
        ids = [r.id for r in results]
        msgs = until_finished(ws, ids, worker, server, fleet[1])
    finally:
        ws.close()
    pids = [results[0].get(timeout=30), results[1].get(timeout=30)]
    with pytest.raises(ValueError, match="boom at step 5"):
        results[2].get(timeout=30)
    assert results[2].state == "FAILURE"

    ok, failing = ids[:2], ids[2]
    for task_id in ids:
        seqs = [u["seq"] for u in updates_of(msgs, task_id)]
        assert seqs == sorted(set(seqs)), seqs  # in order, nothing twice
    for task_id in ok:
        final = updates_of(msgs, task_id)[-1]["data"]
        assert final["status"] == "completed" and final["overall_progress"] == 100.0, final
        assert final["template_id"] == "celery_app.count" and final["error"] is None
        stages = final["stages"]
        assert [stages[str(i)]["name"] for i in range(3)] == ["queue", "processing", "finalizing"]
        assert all(s["status"] == "completed" for s in stages.values()), stages
        assert stages["1"]["progress"] == 1.0 and stages["1"]["message"] == f"step {N}/{N}"
        assert stages["2"]["message"] == "saving"
        # Steps arrived while the task ran: several distinct progress values before the end.
        seen = {u["data"]["stages"]["1"]["progress"] for u in updates_of(msgs, task_id)
                if u["data"]["status"] == "executing" and u["data"]["current_stage"] == 1}
        assert len(seen) >= N // 2, sorted(seen)
        # The listener's history has every event (no seq missing), and the steps' messages in order. (The
        # engine folds a step into the next change of the same stage, so the last step's message may reach the
        # history only with the final state; an event carries the stage's message as it then stood.)
        events = http_get(server.port, f"/api/v1/progress/tasks/{task_id}/history")[1]["events"]
        assert [e["seq"] for e in events] == list(range(1, final["seq"] + 1))
        messages = list(dict.fromkeys(e["message"] for e in events if (e["message"] or "").startswith("step ")))
        expected = [f"step {i}/{N}" for i in range(2, N + 1, 2)]
        assert messages == expected[:len(messages)] and len(messages) >= len(expected) - 1, messages
        assert http_get(server.port, f"/api/v1/progress/tasks/{task_id}")[1] == final

    final = updates_of(msgs, failing)[-1]["data"]
    assert final["status"] == "failed" and final["error"] == "boom at step 5", final
    assert final["stages"]["1"]["status"] == "failed"
    assert final["stages"]["1"]["progress"] == pytest.approx(4 / N)  # step 4 was its last
    assert final["stages"]["2"]["status"] == "pending"

    # Three pool children ran them at the same time, each with its own tracker.
    logged = [http_get(server.port, f"/api/v1/progress/tasks/{i}/logs")[1]["logs"][0]["message"] for i in ids]
    assert logged[:2] == [f"pid {p}" for p in pids], logged
    assert len(set(logged)) == 3 and f"pid {worker.proc.pid}" not in logged, logged
    states = {i: http_get(server.port, f"/api/v1/progress/tasks/{i}")[1] for i in ids}
    latest_start = max(s["started_at"] for s in states.values())
    # The two that run to the end: the failing one stops half a second after its start, before which a child
    # slow to start on a loaded machine may not have started.
    assert all(states[i]["completed_at"] > latest_start for i in ok), states


def test_template_option_and_revoked_task(fleet, worker, client):
    server = fleet[2]
    ws = subscribe_all(server.port)
    try:
        # Three tasks keep the three children busy, so the fourth waits in the worker and is revoked there.
        blockers = [client.send_task("celery_app.count", args=(4, 0.4)) for _ in range(3)]
        wait_for_executing(server.port, [b.id for b in blockers])
        victim = client.send_task("celery_app.count", args=(N, 0.1))
        victim.revoke()
        templated = client.send_task("celery_app.render")
        ids = [b.id for b in blockers] + [victim.id, templated.id]
        msgs = until_finished(ws, ids, worker, server, fleet[1])
    finally:
        ws.close()
    final = updates_of(msgs, victim.id)[-1]["data"]
    assert final["status"] == "cancelled" and final["error"] == "revoked", final
    assert final["template_id"] == "celery_app.count"
    assert victim.state == "REVOKED"
    for b in blockers:
        assert updates_of(msgs, b.id)[-1]["data"]["status"] == "completed"
    final = updates_of(msgs, templated.id)[-1]["data"]
    assert final["status"] == "completed" and final["template_id"] == "render-v1", final


def wait_for_executing(port: int, task_ids, timeout: float = 30) -> None:
    def executing():
        return all(http_get(port, f"/api/v1/progress/tasks/{t}")[1].get("status") == "executing" for t in task_ids)
    wait_until(executing, timeout=timeout, interval=0.05, what="the three blockers to run")


def test_terminated_task_is_cancelled_and_the_new_child_reports(fleet, worker, client):
    # revoke(terminate=True) kills the pool child running the task: the worker's main process cancels the task
    # (opening its own tracker), and the pool forks a child to replace the dead one from that main process, which
    # must then open a tracker of its own.
    server = fleet[2]
    ws = subscribe_all(server.port)
    try:
        before = pool_children(worker)
        doomed = client.send_task("celery_app.count", args=(50, 0.1))
        wait_until(lambda: http_get(server.port, f"/api/v1/progress/tasks/{doomed.id}")[1].get("stages", {})
                   .get("1", {}).get("progress", 0) >= 3 / 50, timeout=30, what="three steps")
        doomed.revoke(terminate=True)
        msgs = until_finished(ws, [doomed.id], worker, server, fleet[1])
        replaced = wait_until(lambda: (lambda now: now - before if len(now) == 3 and now - before else None)(
            pool_children(worker)), timeout=30, what="the pool to replace the killed child")
        after = [client.send_task("celery_app.count", args=(6, 0.2)) for _ in range(3)]
        msgs = until_finished(ws, [a.id for a in after], worker, server, fleet[1], into=msgs)
    finally:
        ws.close()
    final = updates_of(msgs, doomed.id)[-1]["data"]
    assert final["status"] == "cancelled" and final["error"] == "terminated (signal 15)", final
    assert 3 / 50 <= final["stages"]["1"]["progress"] < 1, final
    for a in after:
        assert updates_of(msgs, a.id)[-1]["data"]["status"] == "completed"
    pids = [a.get(timeout=30) for a in after]
    assert len(set(pids)) == 3 and replaced <= set(pids), (pids, replaced)


def pool_children(worker) -> set:
    """The pids of the worker's pool processes (children of its main process)."""
    pid = worker.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def test_a_hard_time_limit_fails_the_task(fleet, worker, client):
    # The worker's main process kills the pool child at the hard limit and sends task_failure from there, where
    # no engine holds the task: the handler takes it over from Redis and fails it.
    server = fleet[2]
    ws = subscribe_all(server.port)
    try:
        doomed = client.send_task("celery_app.count", args=(50, 0.1), time_limit=1)
        msgs = until_finished(ws, [doomed.id], worker, server, fleet[1])
    finally:
        ws.close()
    final = updates_of(msgs, doomed.id)[-1]["data"]
    assert final["status"] == "failed" and "TimeLimitExceeded" in final["error"], (final["status"], final["error"])
    assert 0 < final["stages"]["1"]["progress"] < 1, final


def test_runs_ending_in_replace_or_reject_finish_their_tasks(fleet, worker, client):
    # Neither sends task_success nor task_failure: the tasks stayed executing for good.
    server = fleet[2]
    ws = subscribe_all(server.port)
    try:
        replaced = client.send_task("celery_app.hand_on")
        rejected = client.send_task("celery_app.refuse")
        msgs = until_finished(ws, [replaced.id, rejected.id], worker, server, fleet[1])
    finally:
        ws.close()
    assert replaced.get(timeout=30) == "tail"
    final = updates_of(msgs, replaced.id)[-1]["data"]
    assert final["status"] == "completed", final
    final = updates_of(msgs, rejected.id)[-1]["data"]
    assert final["status"] == "failed" and final["error"] == "rejected: bad payload", final

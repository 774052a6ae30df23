"""Cancel in the fleet (docs/API.md "Cancel", docs/REDIS.md "Cancel requests"): runner processes without a listener,
a progress-server, one redis-server. A request made on progress-server reaches the runner process that holds the
task through Redis, the runner stops and cancels, and the server shows the task cancelled; another runner goes on."""

import json
import time

import websocket

from live_support import WS_PATH, http
from redis_support import ProgressServer, run_runner, task_key, wait_until, ws_until

TOKEN = "fleet-token"
#: From the POST to the runner's loop raising TaskCancelled: the runner's writer reads requests every 200 ms and its
#: loop looks after every item (50 ms each); the rest of the bound is room for a busy machine.
REACH_BOUND_S = 1.5

FLUSH = """
while t.stats_sync()["redis_queue_depth"] or not t.stats_sync()["redis_connected"]:
    time.sleep(0.01)
"""

#: A runner looping over `items` items of 50 ms with track(); prints a line when its task exists, and its outcome.
TRACK_RUNNER = """
from progress_engine import TaskCancelled, track
t = ProgressTracker(redis_url={url!r}, throttle_ms=20)
result = {{"task_id": {task_id!r}}}
try:
    for step in track(range({items}), task_id={task_id!r}, tracker=t, template_id="fleet-tpl"):
        if step == 0:
            print("running", flush=True)
        time.sleep(0.05)
    result["status"] = "completed"
except TaskCancelled as e:
    result.update(cancelled_at=time.time(), reason=e.reason, status=t.get_task_progress_sync({task_id!r})["status"])
""" + FLUSH + """
t.close()
print(json.dumps(result), flush=True)
"""


def start_runner(redis, task_id, items):
    proc = run_runner(TRACK_RUNNER.format(url=redis.url, task_id=task_id, items=items), wait=False)
    assert proc.stdout.readline().strip() == "running", proc.communicate(timeout=30)
    return proc


def outcome(proc):
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def api(server, path, method="GET", body=None, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return http(server.port, f"/api/v1/progress{path}", method, headers=headers, body=body)


def state(server, task_id, token=TOKEN):
    r = api(server, f"/tasks/{task_id}", token=token)
    return r.json() if r.status == 200 else {}


def test_cancel_on_the_server_reaches_the_runner_process(redis, tmp_path):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"auth_token": TOKEN, "throttle_ms": 20}))
    with ProgressServer("--config", str(config), "--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}{WS_PATH}?token={TOKEN}", timeout=5)
        assert json.loads(ws.recv())["type"] == "connection.established"
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["job-a", "job-b"]}))
        a = start_runner(redis, "job-a", items=400)  # 20 s of work unless cancelled
        b = start_runner(redis, "job-b", items=60)  # 3 s, never cancelled
        for task_id in ("job-a", "job-b"):
            wait_until(lambda: state(server, task_id).get("status") == "executing", timeout=10,
                       what=f"{task_id} executing on progress-server")

        r = api(server, "/tasks/job-a/cancel", "POST", b'{"reason": "x"}', token="wrong")
        assert r.status == 401 and r.error_code() == "unauthorized", r
        asked = time.time()
        r = api(server, "/tasks/job-a/cancel", "POST", json.dumps({"reason": "operator said so"}).encode())
        assert r.status == 202, r
        assert r.json() == {"task_id": "job-a", "cancel_requested": True}

        done_a = outcome(a)
        assert done_a["status"] == "cancelled" and done_a["reason"] == "operator said so", done_a
        assert done_a["cancelled_at"] - asked < REACH_BOUND_S, done_a["cancelled_at"] - asked
        final = wait_until(lambda: (lambda s: s if s.get("status") == "cancelled" else None)(state(server, "job-a")),
                           timeout=5, what="job-a cancelled on progress-server")
        assert final["cancel_requested"] is False and final["error"] == "operator said so"
        # The server's subscribers saw the request (from the runner's own write) before the cancellation, unless
        # the runner's writer took both changes in one write: the server then sends the latest state only (the
        # history below has both, in order).
        msgs = ws_until(ws, lambda m: any(x.get("type") == "progress.update" and x["task_id"] == "job-a"
                                          and x["data"]["status"] == "cancelled" for x in m))
        states = [m["data"] for m in msgs if m.get("type") == "progress.update" and m["task_id"] == "job-a"]
        assert states[-1]["status"] == "cancelled", [(s["seq"], s["status"]) for s in states]
        requested = [s for s in states if s["cancel_requested"]]
        if requested:
            assert requested[0]["status"] == "executing" and requested[0]["cancel_reason"] == "operator said so"
            assert states[-1]["seq"] > requested[0]["seq"]
        logs = api(server, "/tasks/job-a/logs").json()["logs"]
        assert any(e["message"].startswith("cancel requested (operator said so)") for e in logs), logs
        history = api(server, "/tasks/job-a/history").json()["events"]
        types = [e["type"] for e in history]
        assert types[-1] == "cancelled" and types.count("cancel_requested") == 1, types  # the last step may be between

        done_b = outcome(b)
        assert done_b["status"] == "completed", done_b
        b_state = state(server, "job-b")
        assert b_state["status"] == "completed" and b_state["cancel_requested"] is False
        r = api(server, "/tasks/job-b/cancel", "POST")
        assert r.status == 409 and r.error_code() == "conflict", r
        r = api(server, "/tasks/nobody/cancel", "POST")
        assert r.status == 404 and r.error_code() == "not_found", r
        ws.close()


def test_request_made_while_the_runner_is_away_reaches_it_on_resume(redis):
    with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
        run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, throttle_ms=20)
t.create_task_progress_sync("away", "fleet-tpl")
t.update_progress_sync("away", 3, 10, message="before the restart")
{FLUSH}
t.close()  # the runner stops; the task stays executing in Redis
""")
        wait_until(lambda: state(server, "away", token=None).get("status") == "executing", timeout=5,
                   what="the task on progress-server")
        r = api(server, "/tasks/away/cancel", "POST", b'{"reason": "while away"}', token=None)
        assert r.status == 202, r
        wait_until(lambda: redis.cli("EXISTS", task_key("cancel", "away")) == "1", timeout=5,
                   what="the request in Redis")
        out = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, throttle_ms=20)
t.create_task_progress_sync("away", "fleet-tpl", resume=True)
print(json.dumps({{"requested": t.cancel_requested("away"),
                   "reason": t.get_task_progress_sync("away")["cancel_reason"]}}))
t.cancel_task_sync("away", "resumed and cancelled")
{FLUSH}
t.close()
""")
        assert json.loads(out) == {"requested": True, "reason": "while away"}
        final = wait_until(lambda: (lambda s: s if s.get("status") == "cancelled" else None)(
            state(server, "away", token=None)), timeout=5, what="cancelled on progress-server")
        assert final["error"] == "resumed and cancelled" and final["cancel_requested"] is False
        # A new task under the same id starts without the old request.
        out = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r})
t.create_task_progress_sync("away", "fleet-tpl")
{FLUSH}
print(json.dumps(t.cancel_requested("away")))
t.close()
""")
        assert json.loads(out) is False
        assert redis.cli("EXISTS", task_key("cancel", "away")) == "0"

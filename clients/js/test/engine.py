"""A real engine for the client's tests, driven over stdin: one JSON command a line, one JSON reply a line with
the command's "id". Opened with the engine config in argv[1] (the Python binding over libProgressEngine.so);
prints {"port": P} first (-1 without a listener). Commands:

  create {task_id, batch_id?}           update {task_id, step, total}     log {task_id, message}
  create_many {task_ids}                complete_many {task_ids}
  complete {task_id}                    get {task_id} -> {task}
  cancel_requested {task_id} -> {requested}                              cancel {task_id, reason?} (the runner's)
  run {task_ids, steps, interval}       updates the tasks round robin on a thread (message "s<step>"), completes
                                        them, then replies {final: {task_id: seq}}; other commands go on meanwhile

The tests kill this process (SIGKILL) to stop a listener without a goodbye; end of stdin closes it cleanly."""

import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "bindings", "python"))
from progress_engine import EngineIOError, ProgressTracker  # noqa: E402

config = json.loads(sys.argv[1])
deadline = time.monotonic() + 5
while True:
    try:
        tracker = ProgressTracker(**config)
        break
    except EngineIOError:
        # A restarted listener reopens the port of one just killed: the kernel may need a moment.
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
out = threading.Lock()


def reply(**fields):
    with out:
        print(json.dumps(fields), flush=True)


def run(cid, ids, steps, interval):
    for step in range(1, steps + 1):
        for tid in ids:
            tracker.update_progress_sync(tid, step, steps, f"s{step}")
        time.sleep(interval)
    final = {}
    for tid in ids:
        tracker.complete_task_sync(tid)
        final[tid] = tracker.get_task_progress_sync(tid)["seq"]
    reply(id=cid, final=final)


reply(port=tracker.port)
for line in sys.stdin:
    cmd = json.loads(line)
    op, cid = cmd["op"], cmd["id"]
    try:
        if op == "create":
            tracker.create_task_progress_sync(cmd["task_id"], "tpl", batch_id=cmd.get("batch_id"))
        elif op == "create_many":
            for tid in cmd["task_ids"]:
                tracker.create_task_progress_sync(tid, "tpl")
        elif op == "complete_many":
            for tid in cmd["task_ids"]:
                tracker.complete_task_sync(tid)
        elif op == "update":
            tracker.update_progress_sync(cmd["task_id"], cmd["step"], cmd["total"], f"s{cmd['step']}")
        elif op == "log":
            tracker.log_sync(cmd["task_id"], "info", cmd["message"])
        elif op == "complete":
            tracker.complete_task_sync(cmd["task_id"])
        elif op == "cancel_requested":
            reply(id=cid, requested=tracker.cancel_requested(cmd["task_id"]))
            continue
        elif op == "cancel":
            tracker.cancel_task_sync(cmd["task_id"], cmd.get("reason"))
        elif op == "get":
            reply(id=cid, task=tracker.get_task_progress_sync(cmd["task_id"]))
            continue
        elif op == "run":
            threading.Thread(target=run, args=(cid, cmd["task_ids"], cmd["steps"], cmd["interval"])).start()
            continue
        else:
            raise ValueError(f"unknown op {op!r}")
        reply(id=cid)
    except Exception as e:  # the test sees the failure as a rejected command
        reply(id=cid, error=f"{type(e).__name__}: {e}")
tracker.close()

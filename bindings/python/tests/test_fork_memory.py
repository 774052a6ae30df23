"""os.fork() with a tracker open and no Redis: the child's engine works on its own tasks, has no listener, and
closing it leaves the parent's listener, preview folder and tasks alone (include/progress.h, "fork()")."""

import glob
import os
import time
import traceback
import urllib.request

from progress_engine import ProgressTracker


def wait_for(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def child(t):
    """The forked child's checks; returns its exit status."""
    try:
        assert t.port == -1, "a child has no listener"
        assert t.stats_sync()["tasks"] == 0, "the parent's tasks stay the parent's"
        t.create_task_progress_sync("c", template_id="x")
        t.update_progress_sync("c", 5, 10, message="in the child")
        t.complete_task_sync("c")
        assert t.get_task_progress_sync("c")["status"] == "completed"
        t.close()  # stops the child's own threads; must not remove the parent's preview folder
        return 0
    except BaseException:
        traceback.print_exc()
        return 1


def test_forked_child_has_its_own_engine_and_leaves_the_parent_alone():
    with ProgressTracker(listen="127.0.0.1:0", preview_every_steps=1) as t:
        port = t.port
        t.create_task_progress_sync("p", template_id="x")
        t.update_progress_sync("p", 1, 10, message="before")
        t.update_preview_sync("p", (bytes(12), 2, 2, 3))
        wait_for(lambda: t.get_task_progress_sync("p")["preview_url"])
        name = t.get_task_progress_sync("p")["preview_url"].rsplit("/", 1)[1]
        (folder,) = [os.path.dirname(p) for p in glob.glob(f"/tmp/progress-previews-*/{name}")]

        pid = os.fork()
        if pid == 0:
            os._exit(child(t))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0

        assert os.path.isdir(folder), "the child removed the parent's preview folder"
        assert t.port == port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        t.update_progress_sync("p", 2, 10, message="after")
        task = t.get_task_progress_sync("p")
        assert task["stages"][str(task["current_stage"])]["message"] == "after"
        assert t.stats_sync()["tasks"] == 1, "the child's task is the child's"


def counter_child(t):
    """A child that reuses the id of a task whose counter the parent attached: its steps reach its own task."""
    try:
        t.create_task_progress_sync("p", template_id="x")
        t.update_progress_sync("p", 5, 10)  # the counter path: a new counter, not the parent's
        task = t.get_task_progress_sync("p")
        assert task["stages"][str(task["current_stage"])]["progress"] == 0.5, task
        assert t.stats_sync()["attached_counters"] == 1
        t.close()
        return 0
    except BaseException:
        traceback.print_exc()
        return 1


def test_a_forked_child_does_not_write_to_the_parents_counters():
    with ProgressTracker() as t:
        t.create_task_progress_sync("p", template_id="x")
        t.update_progress_sync("p", 1, 10)  # attaches a counter in the parent
        pid = os.fork()
        if pid == 0:
            os._exit(counter_child(t))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        t.update_progress_sync("p", 3, 10)  # the parent's counter still works
        task = t.get_task_progress_sync("p")
        assert task["stages"][str(task["current_stage"])]["progress"] == 0.3

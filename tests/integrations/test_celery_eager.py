"""ProgressTask's signal handlers in one process, without a broker or a worker: Celery's eager mode (task_always_eager,
which tests of Celery apps use) sends the same task signals, so the task body's calls, a retry and a failure are
checked here against an in-memory tracker. The prefork worker and the fleet are test_celery.py's."""

from __future__ import annotations

import pytest

celery = pytest.importorskip("celery", reason="Celery is not installed (pip install celery)")

from progress_engine.integrations.celery import ProgressTask  # noqa: E402

app = celery.Celery("eager", broker="memory://", backend="cache+memory://")
app.conf.task_always_eager = True
app.conf.progress_engine = {}  # an in-memory tracker in this process
attempts = []


@app.task(base=ProgressTask, bind=True, max_retries=1, progress_template="flaky-v1")
def flaky(self):
    attempts.append(self.request.retries)
    for i in range(1, 4):
        self.progress(i, 6)
    if self.request.retries == 0:
        raise self.retry(exc=OSError("disk busy"), countdown=0)
    for i in range(4, 7):
        self.progress(i, 6, message=f"step {i}")
    return "done"


@app.task(base=ProgressTask, bind=True)
def broken(self):
    self.progress(1, 2)
    raise KeyError("missing")


def test_retry_resumes_the_same_task_and_completes():
    result = flaky.apply()
    assert result.get() == "done" and attempts == [0, 1]
    tracker = flaky.tracker
    state = tracker.get_task_progress_sync(result.id)
    assert state["status"] == "completed" and state["template_id"] == "flaky-v1"
    assert state["stages"]["1"]["message"] == "step 6"
    messages = [e["message"] for e in tracker.get_logs_sync(result.id)["logs"]]
    assert messages == ["retrying: Retry in 0s: OSError('disk busy')"], messages
    events = [e["type"] for e in tracker.get_history_sync(result.id)["events"]]
    assert "resumed" in events, events


def test_failure_keeps_the_exception_text():
    result = broken.apply()
    assert result.failed()
    state = broken.tracker.get_task_progress_sync(result.id)
    assert state["status"] == "failed" and state["error"] == "'missing'", state
    assert state["stages"]["1"]["progress"] == 0.5


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


@app.task(base=ProgressTask, bind=True)
def unprintable(self):
    self.progress(1, 2)
    raise Unprintable()


def test_a_failure_whose_text_cannot_be_read_still_fails_the_task():
    """str() of the exception raised: the signal handler stopped there and the task stayed executing."""
    result = unprintable.apply()
    assert result.failed()
    state = unprintable.tracker.get_task_progress_sync(result.id)
    assert state["status"] == "failed" and state["error"] == "Unprintable", state


def test_a_direct_call_reports_nothing():
    before = flaky.tracker.stats_sync()["tasks"]
    attempts.clear()
    with pytest.raises(OSError, match="disk busy"):
        flaky()  # no request id: progress() does nothing; retry() called directly raises the exception
    assert attempts == [0] and flaky.tracker.stats_sync()["tasks"] == before


@app.task(base=ProgressTask, bind=True)
def ends_in(self, how):
    from celery.exceptions import Ignore, Reject
    self.progress(1, 2)
    if how == "ignore":
        raise Ignore()
    raise Reject("bad payload", requeue=how == "requeue")


@pytest.mark.parametrize("how, status, note", [
    ("ignore", "completed", "the run ended with Celery's Ignore (Ignore)"),
    ("reject", "failed", None),
    ("requeue", "executing", "rejected and requeued (bad payload): it runs again"),
])
def test_a_run_ending_in_ignore_or_reject_is_not_left_executing(how, status, note):
    # Celery sends neither task_success nor task_failure for these.
    result = ends_in.apply((how,))
    state = ends_in.tracker.get_task_progress_sync(result.id)
    assert state["status"] == status, (how, result.state, state)
    messages = [e["message"] for e in ends_in.tracker.get_logs_sync(result.id)["logs"]]
    assert messages == ([note] if note else []), messages
    if how == "reject":
        assert state["error"] == "rejected: bad payload", state


@app.task(base=ProgressTask, bind=True)
def job(self, fail):
    self.progress(1, 2)
    if fail:
        raise RuntimeError("second run broke")
    self.progress(2, 2)


def test_a_task_id_run_again_in_the_same_process_is_a_new_task():
    # The second run resumed the first one's finished task: its progress refused, its failure dropped, and the
    # task stayed "completed" while Celery said FAILURE.
    assert job.apply((False,), task_id="render-42").successful()
    first = job.tracker.get_task_progress_sync("render-42")
    assert first["status"] == "completed"
    assert job.apply((True,), task_id="render-42").failed()
    second = job.tracker.get_task_progress_sync("render-42")
    assert (second["status"], second["error"]) == ("failed", "second run broke"), second
    assert second["stages"]["1"]["progress"] == 0.5


def test_a_reject_reported_by_the_worker_keeps_its_reason():
    """A prefork worker's main process sends task_failure with the Reject (no requeue) while the pool child sends
    task_postrun: both must write the same text, or the one that lands first decides it. The failure's text was the
    exception's args tuple, "('bad payload', False)". Eager mode sends only task_postrun, so the worker's signal
    is sent here as the worker sends it."""
    from celery.exceptions import Reject
    from celery.signals import task_failure
    tracker = ends_in.tracker
    tracker.create_task_progress_sync("rejected-by-worker", "ends_in")
    task_failure.send(sender=ends_in, task_id="rejected-by-worker", exception=Reject("bad payload", requeue=False),
                      args=(), kwargs={}, traceback=None, einfo=None)
    state = tracker.get_task_progress_sync("rejected-by-worker")
    assert (state["status"], state["error"]) == ("failed", "rejected: bad payload"), state


@pytest.mark.parametrize("strict", [False, True])
def test_a_tracker_that_cannot_open_leaves_the_task_body_running(strict):
    """A `listen` port another process holds (in a prefork pool with a fixed port, every child but one) failed every
    task of the process at its first self.progress(). The body now runs on: one ProgressWarning per process, and
    the error raised only when the configuration is strict. Once the port is free, the next task's signal handler
    opens the tracker, and the body reports again. A fresh interpreter: this process's tracker is open already."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path
    code = textwrap.dedent(f"""
        import socket, warnings
        import celery
        from progress_engine.integrations.celery import ProgressTask
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        app = celery.Celery("eager", broker="memory://", backend="cache+memory://")
        app.conf.task_always_eager = True
        app.conf.progress_engine = {{"listen": f"127.0.0.1:{{holder.getsockname()[1]}}", "strict": {strict}}}

        @app.task(base=ProgressTask, bind=True)
        def work(self):
            for i in range(1, 4):
                self.progress(i, 3)
            self.stage("finalizing")
            self.log("info", "done")
            return "finished"

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = [work.apply() for _ in range(2)]
        for r in results:
            print(r.state, r.result if r.successful() else type(r.result).__name__)
        print(len([w for w in caught if w.category.__name__ == "ProgressWarning"]))
        holder.close()
        r = work.apply()
        print(r.state, [e["message"] for e in work.tracker.get_logs_sync(r.id)["logs"]])
        """)
    package_root = Path(__file__).resolve().parents[2] / "bindings" / "python"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(package_root), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    if strict:
        assert lines[:2] == ["FAILURE EngineIOError", "FAILURE EngineIOError"], result.stdout
    else:
        assert lines[:3] == ["SUCCESS finished", "SUCCESS finished", "1"], (result.stdout, result.stderr[-2000:])
    assert lines[-2] == "SUCCESS ['done']", (result.stdout, result.stderr[-2000:])

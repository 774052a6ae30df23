"""A real redis-server for the Redis suite: started once on a free port (AOF on, fsync always, no RDB) in a
temporary folder, flushed before each test, killed / restarted / paused by the tests that need it, and
stopped at the end. Helpers run runner scripts in their own processes with the Python binding. What other
suites share (the server, waits, WebSocket / HTTP clients) is in tests/live_support.py."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Re-exported for the suite's tests: free_port, http_get, task_key, wait_until, ws_connect, ws_until, ProgressServer.
from live_support import (BINDINGS, SERVER, ProgressServer, RedisServer, free_port, http_get,  # noqa: E402,F401
                          task_key, wait_until, ws_connect, ws_until)

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis(redis_session):
    if redis_session.proc is None:
        redis_session.start()
    redis_session.resume()
    redis_session.cli("FLUSHALL")
    yield redis_session


def flushed(tracker):
    """Waits until the tracker's writer is connected and has nothing left to write."""
    def done():
        s = tracker.stats_sync()
        return s.get("redis_connected") == 1 and s.get("redis_queue_depth") == 0
    wait_until(done, what="Redis writes to be flushed")



class IdUsedTwice:
    """Engine A's task, then engine B's under the same id, created later: `apart` "10 ms" (the clock's times), or
    "same millisecond" (creation times 0.3 ms apart given as timestamps: one `created_at`, two tasks)."""

    APART = ["10 ms", "same millisecond"]

    def __init__(self, apart):
        import time
        self.apart = apart
        millisecond = int(time.time() * 1000) / 1000
        self.first, self.second = (None, None) if apart == "10 ms" else (millisecond + 0.0001, millisecond + 0.0004)

    def create_first(self, a, task_id):
        a.create_task_progress_sync(task_id, "tpl", **({} if self.first is None else {"timestamp": self.first}))

    def create_second(self, a, b, task_id):
        import time
        if self.second is None:
            time.sleep(0.01)  # created_at has milliseconds
            b.create_task_progress_sync(task_id, "tpl")
        else:
            b.create_task_progress_sync(task_id, "tpl", timestamp=self.second)
            assert b.get_task_progress_sync(task_id)["created_at"] == a.get_task_progress_sync(task_id)["created_at"]


RUNNER_PRELUDE = f"""
import json, sys, time, ctypes
sys.path.insert(0, {str(BINDINGS)!r})
from progress_engine import ProgressTracker, _lib
def update(t, task_id, step, total, message=None):
    t0 = time.perf_counter()
    _lib.progress_update(t._handle(), _lib.encode(task_id), step, total, _lib.encode(message))
    return time.perf_counter() - t0
"""


def run_runner(code, wait=True, **kwargs):
    """Runs a runner script (RUNNER_PRELUDE + code) in its own process."""
    proc = subprocess.Popen([sys.executable, "-c", RUNNER_PRELUDE + code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"runner failed ({proc.returncode}):\n{err}"
    return out

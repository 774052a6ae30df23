"""A real redis-server for the Redis suite: started once on a free port (AOF on, fsync always, no RDB) in a
temporary folder, flushed before each test, killed / restarted / paused by the tests that need it, and
stopped at the end. Helpers run runner scripts in their own processes with the Python binding."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINDINGS = ROOT / "bindings" / "python"
sys.path.insert(0, str(BINDINGS))

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, folder):
        self.folder = folder
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if self.cli("PING") == "PONG":
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(10)
            self.proc = None

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def cli(self, *args):
        """One command through redis-cli; the raw reply text, stripped."""
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *map(str, args)],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.rstrip("\n")

    def lines(self, *args):
        text = self.cli(*args)
        return text.split("\n") if text else []


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


def wait_until(check, timeout=5.0, interval=0.02, what="condition"):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def flushed(tracker):
    """Waits until the tracker's writer is connected and has nothing left to write."""
    def done():
        s = tracker.stats_sync()
        return s.get("redis_connected") == 1 and s.get("redis_queue_depth") == 0
    wait_until(done, what="Redis writes to be flushed")


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


def ws_connect(port):
    import websocket
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/api/v1/progress/ws", timeout=5)
    hello = json.loads(ws.recv())
    assert hello["type"] == "connection.established"
    return ws


def ws_messages(ws, until, timeout=10.0):
    """Receives messages until `until(messages)` is true."""
    out = []
    deadline = time.time() + timeout
    while not until(out):
        ws.settimeout(max(0.05, deadline - time.time()))
        if time.time() > deadline:
            raise AssertionError(f"timed out; got {[(m.get('type'), m.get('seq')) for m in out][-20:]}")
        out.append(json.loads(ws.recv()))
    return out


def http_get(port, path):
    import urllib.request
    import urllib.error
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

"""What the Celery tests share: a redis-server on a free port (the broker, the result backend and the engines'
Redis at once), a `progress-server` on it (the fleet's listener, watched over its WebSocket), and real Celery
workers in the prefork pool started as subprocesses and always stopped. Every wait is bounded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_support import (BINDINGS, SERVER, ProgressServer, RedisServer, http_get, wait_until,  # noqa: E402,F401
                          ws_connect, ws_until)

pytest.importorskip("celery", reason="Celery is not installed (pip install celery redis)")
if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed (apt-get install redis-server)", allow_module_level=True)

HERE = Path(__file__).resolve().parent
if not SERVER.exists():
    pytest.skip(f"no progress-server at {SERVER}: build first (make build) or set PROGRESS_SERVER",
                allow_module_level=True)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def start_progress_server(folder: Path, redis_url: str) -> ProgressServer:
    """`progress-server --redis-url URL` on a free port."""
    config = folder / "progress-server.json"
    # The default resource sampling: the mirrors must follow their runners through it
    # (tests/redis/test_fleet.py, test_mirror_takes_the_runners_states_after_a_resource_sample).
    config.write_text(json.dumps({"throttle_ms": 20}))
    return ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis_url, "--config", str(config)).start()


class Worker:
    """`celery -A APP worker --pool=prefork -c N` in `cwd`, in its own process group so that its pool
    children go with it. Started with the environment's PYTHONPATH holding the binding and `cwd`."""

    def __init__(self, folder: Path, app: str, cwd: Path, env: Dict[str, str], concurrency: int = 3) -> None:
        self.log = folder / f"worker-{app}.log"
        path = os.pathsep.join([str(BINDINGS), str(cwd), os.environ.get("PYTHONPATH", "")])
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", app, "worker", "--pool=prefork", f"--concurrency={concurrency}",
                 "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
                 "--hostname", f"{app}@test"],
                cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env=dict(os.environ, PYTHONPATH=path, **env))
        try:
            wait_until(self._ready, timeout=60, interval=0.1, what=f"the Celery worker {app} to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the Celery worker exited {self.proc.returncode}:\n{read_log(self.log)}")
        return " ready." in read_log(self.log)

    def output(self) -> str:
        return read_log(self.log)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM: running tasks finish, each pool child closes its tracker), then SIGKILL of
        the whole group if it takes longer than 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this worker leads: children left behind
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)


def updates_of(msgs: List[dict], task_id: str) -> List[dict]:
    return [m for m in msgs if m.get("type") == "progress.update" and m.get("task_id") == task_id]


def until_finished(ws, task_ids, worker: "Worker", server: "ProgressServer", redis: RedisServer,
                   timeout: float = 60, into: Optional[List[dict]] = None) -> List[dict]:
    """The WebSocket's messages (appended to `into`) until every task finished; on a timeout, an AssertionError
    with what each task last showed there, on the listener's REST API and in Redis, and the worker's log."""
    msgs: List[dict] = [] if into is None else into
    try:
        return ws_until(ws, lambda m: finished(m, task_ids), timeout=timeout, into=msgs)
    except Exception as exc:
        report = [repr(exc)]
        for t in task_ids:
            rest = http_get(server.port, f"/api/v1/progress/tasks/{t}")[1]
            history = http_get(server.port, f"/api/v1/progress/tasks/{t}/history")[1]
            stored = json.loads(redis.cli("GET", f"progress:task:{{{t}}}:state") or "{}")
            report.append(f"{t}: ws {[(u['seq'], u['data']['status']) for u in updates_of(msgs, t)][-3:]}, "
                          f"rest {rest.get('status')} seq {rest.get('seq')}, redis {stored.get('status')} seq "
                          f"{stored.get('seq')}, listener history "
                          f"{[(e['seq'], e['type'], e['status']) for e in history.get('events', [])]}")
        raise AssertionError("\n".join(report) + f"\nworker log:\n{worker.output()[-6000:]}") from None


def finished(msgs: List[dict], task_ids) -> bool:
    """Every task's latest update shows it completed, failed or cancelled."""
    for task_id in task_ids:
        ups = updates_of(msgs, task_id)
        if not ups or ups[-1]["data"]["status"] not in ("completed", "failed", "cancelled"):
            return False
    return True


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """(redis, progress-server, a WebSocket subscribed to every task)."""
    folder = tmp_path_factory.mktemp("celery")
    redis = RedisServer(folder, appendfsync="no")
    redis.start()
    server = None
    try:
        server = start_progress_server(folder, redis.url)
        yield folder, redis, server
    finally:
        if server is not None:
            server.stop()
        redis.stop()


def subscribe_all(port: int):
    ws = ws_connect(port)
    ws.send(json.dumps({"type": "subscribe", "task_ids": ["*"]}))
    ws_until(ws, lambda m: any(x["type"] == "subscribed" for x in m))
    return ws

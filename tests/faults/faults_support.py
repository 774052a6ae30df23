"""Fault injection suite support (docs/RELIABILITY.md): a redis-server per test, runner and listener
processes over the Python binding, a small RESP client to read what Redis holds, and the Jepsen-style
accounting of acknowledged updates.

Every acknowledged update (the C call returned PROGRESS_OK) is written by the runner process to its stdout as
`ack TASK STEP MONOTONIC` before the next one is made; its message is `sSTEP`, so it can be found again in a
Redis stream event, in a WebSocket message (live or replayed) or in a listener's history. After the fault each
one is classified:

- persisted: an event with its message is in the task's Redis stream;
- superseded: not in the stream, but inside the seq range of a stream entry marked `complete 0` (a flood or
  an outage backlog thinned to the latest step of a run, which the engine counts in `redis_dropped_events`). When
  the runner reports each update's seq (`seqs=True`) that is exact; otherwise the seqs between the persisted steps
  around it must all be covered by stream entries, one of them incomplete (a hole no entry covers, such as writes
  Redis acknowledged and then lost in a crash, makes it lost);
- delivered: seen by a WebSocket client or in a listener's history;
- lost: none of these.

Figures are printed at the end of the run (and appended as JSON lines to $FAULTS_FIGURES when set).
Every wait is bounded; every process started here is killed at the end of its test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
BINDINGS = ROOT / "bindings" / "python"
sys.path.insert(0, str(BINDINGS))

WS_PATH = "/api/v1/progress/ws"
FIGURES: list = []  # Accounting objects (figures taken at the end: tests add notes) or dicts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=5.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---- Redis ---------------------------------------------------------------------------------------------


class Resp:
    """A minimal RESP2 client (no Python Redis client is needed)."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line!r}")

    def __call__(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._reply()


class RedisServer:
    """redis-server on a free loopback port in its own folder (AOF on; fsync `always` unless told). `env`: extra
    environment variables of the process (LD_PRELOAD for tests/faults/aof_power_loss.c)."""

    def __init__(self, folder: Path, appendfsync: str = "always", env: Optional[Dict[str, str]] = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.appendfsync = appendfsync
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **(self.env or {})))
        wait_until(self._pong, timeout=10, what="redis-server to start")

    def _pong(self) -> bool:
        try:
            c = Resp(self.port, 1)
            try:
                return c("PING") == "PONG"
            finally:
                c.close()
        except (OSError, ConnectionError, RuntimeError):
            return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> Resp:
        return Resp(self.port)


@pytest.fixture
def redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis-data")
    server.folder.mkdir()
    server.start()
    yield server
    server.stop()


def key_tag(task_id: str) -> str:
    return task_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass
class StreamEntry:
    first: int
    last: int
    complete: bool
    events: List[dict]


def read_stream(redis: RedisServer, task_id: str, ns: str = "progress") -> List[StreamEntry]:
    c = redis.client()
    try:
        raw = c("XRANGE", f"{ns}:task:{{{key_tag(task_id)}}}:events", "-", "+")
    finally:
        c.close()
    out = []
    for entry_id, fields in raw or []:
        f = {fields[i].decode(): fields[i + 1] for i in range(0, len(fields), 2)}
        out.append(StreamEntry(int(f["first"]), int(entry_id.decode().split("-")[0]), f["complete"] == b"1",
                               json.loads(f["events"])))
    return out


# ---- processes --------------------------------------------------------------------------------------------


class Procs:
    """Every process a test starts; all are killed (SIGCONT first) at the end of the test."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def python(self, code: str, *, stdout=subprocess.PIPE, preexec_fn=None, **env: str) -> subprocess.Popen:
        e = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        # stderr goes to a file the test can read back at any time (stderr_of).
        err = tempfile.TemporaryFile("w+")
        p = subprocess.Popen([sys.executable, "-c", PRELUDE + code], stdout=stdout, stderr=err,
                             text=True, env=e, preexec_fn=preexec_fn)
        p.errfile = err
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                except ProcessLookupError:
                    pass
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
            for f in (p.stdout, getattr(p, "errfile", None)):
                if f is not None:
                    f.close()


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.close()


PRELUDE = f"""
import json, os, sys, time, socket, signal
sys.path.insert(0, {str(BINDINGS)!r})
from progress_engine import ProgressTracker, _lib
"""

#: A runner: `tasks` tasks updated round-robin, one update every `interval` s, for `seconds`; every acknowledged
#: update printed; then completes the tasks, waits (bounded) for Redis to hold everything, prints its stats.
RUNNER = """
cfg = json.loads(sys.argv[1]) if len(sys.argv) > 1 else json.loads(os.environ["RUNNER_CONFIG"])
t = ProgressTracker(**cfg["engine"])
ids = [f"{cfg['prefix']}-{i}" for i in range(cfg["tasks"])]
for tid in ids:
    t.create_task_progress_sync(task_id=tid, template_id="tpl")
print("started", time.monotonic(), flush=True)
h = t._handle()
lat = []
step = 0
end = time.monotonic() + cfg["seconds"]
next_at = time.monotonic()
while time.monotonic() < end:
    step += 1
    for tid in ids:
        t0 = time.perf_counter()
        rc = _lib.progress_update(h, _lib.encode(tid), step, 1_000_000, _lib.encode(f"s{step}"))
        lat.append(time.perf_counter() - t0)
        if rc == 0:
            at = time.monotonic()
            if cfg.get("seqs"):  # the update's seq (exact while nothing else changes the task: no resource samples)
                print("ack", tid, step, at, t.get_task_progress_sync(tid)["seq"], flush=True)
            else:
                print("ack", tid, step, at, flush=True)
    next_at += cfg["interval"]
    pause = next_at - time.monotonic()
    if pause > 0:
        time.sleep(pause)
final = {}
for tid in ids:
    t.complete_task_sync(tid)
    final[tid] = t.get_task_progress_sync(tid)["seq"]
deadline = time.monotonic() + cfg.get("flush_wait", 15)
while "redis_url" in cfg["engine"] and time.monotonic() < deadline:
    s = t.stats_sync()
    if s["redis_connected"] == 1 and s["redis_queue_depth"] == 0:
        break
    time.sleep(0.05)
lat.sort()
print("result", json.dumps({"final": final, "stats": t.stats_sync(), "slowest": lat[-1],
                            "p99": lat[len(lat) * 99 // 100]}), flush=True)
t.close()
"""

#: A listener process: an engine with `listen` (and usually `redis_url`) and nothing else; prints its port.
LISTENER = """
cfg = json.loads(os.environ["LISTENER_CONFIG"])
t = ProgressTracker(**cfg)
print("port", t.port, flush=True)
for line in sys.stdin:
    pass
t.close()
"""


def start_runner(procs: Procs, **cfg) -> subprocess.Popen:
    cfg.setdefault("prefix", "task")
    p = procs.python(RUNNER, RUNNER_CONFIG=json.dumps(cfg))
    line = p.stdout.readline()
    assert line.startswith("started"), (line, stderr_of(p))
    return p


def start_listener(procs: Procs, preexec_fn=None, **cfg) -> Tuple[subprocess.Popen, int]:
    err = tempfile.TemporaryFile("w+")
    p = subprocess.Popen([sys.executable, "-c", PRELUDE + LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=err, text=True, preexec_fn=preexec_fn,
                         env=dict(os.environ, PYTHONUNBUFFERED="1", LISTENER_CONFIG=json.dumps(cfg)))
    p.errfile = err
    procs.procs.append(p)
    line = p.stdout.readline()
    assert line.startswith("port"), (line, stderr_of(p))
    return p, int(line.split()[1])


def stderr_of(p: subprocess.Popen) -> str:
    p.errfile.flush()
    p.errfile.seek(0)
    return p.errfile.read()


@dataclass
class Ack:
    task: str
    step: int
    at: float  # time.monotonic() of the runner (the same clock in every process of the machine)
    seq: Optional[int] = None  # the update's seq, when the runner was started with seqs=True


def read_runner(p: subprocess.Popen, timeout: float = 60) -> Tuple[List[Ack], Optional[dict]]:
    """Every ack of a runner (to its end, or what it wrote before it was killed) and its result (None if
    killed)."""
    out, _ = p.communicate(timeout=timeout)
    err = stderr_of(p)
    acks, result = [], None
    lines = out.split("\n")
    # A SIGKILLed runner can die in the middle of writing a line: only its last line may be cut short (that
    # ack was never complete on stdout, so it does not count as acknowledged).
    if p.returncode == -signal.SIGKILL and lines:
        lines = lines[:-1]
    for line in lines:
        parts = line.split(" ", 1)
        if parts[0] == "ack":
            task, step, at, *seq = parts[1].split()
            acks.append(Ack(task, int(step), float(at), int(seq[0]) if seq else None))
        elif parts[0] == "result":
            result = json.loads(parts[1])
    if result is None and p.returncode not in (-signal.SIGKILL,):
        raise AssertionError(f"runner failed ({p.returncode}):\n{err}")
    return acks, result


# ---- the accounting --------------------------------------------------------------------------------------


@dataclass
class Accounting:
    name: str
    acknowledged: int = 0
    persisted: int = 0
    superseded: int = 0
    delivered: int = 0
    lost: int = 0
    lost_acks: List[Ack] = field(default_factory=list)
    notes: Dict[str, object] = field(default_factory=dict)

    def figures(self) -> dict:
        d = {"test": self.name, "acknowledged": self.acknowledged, "persisted": self.persisted,
             "superseded_counted": self.superseded, "delivered": self.delivered, "lost": self.lost}
        d.update(self.notes)
        return d


def message_steps(messages: Iterable[dict]) -> Dict[str, Set[int]]:
    """task -> steps (from `sSTEP` messages) found in WebSocket messages or history events."""
    out: Dict[str, Set[int]] = {}
    for m in messages:
        data = m.get("data", m)
        msg = data.get("message") or ""
        if "stages" in data:  # a whole TaskProgress: the message is its current stage's
            msg = (data["stages"].get(str(data.get("current_stage"))) or {}).get("message") or ""
        task = m.get("task_id") or data.get("task_id")
        if task and msg.startswith("s") and msg[1:].isdigit():
            out.setdefault(task, set()).add(int(msg[1:]))
    return out


def account(name: str, acks: List[Ack], redis: Optional[RedisServer] = None,
            delivered: Optional[Dict[str, Set[int]]] = None) -> Accounting:
    """Classifies every acknowledged update (see the module's docstring) and records the figures."""
    acc = Accounting(name, acknowledged=len(acks))
    tasks = sorted({a.task for a in acks})
    in_stream: Dict[str, Set[int]] = {}
    step_seq: Dict[str, List[Tuple[int, int]]] = {}  # task -> sorted (step, seq) of persisted progress events
    thinned: Dict[str, List[Tuple[int, int]]] = {}  # task -> seq ranges of entries marked incomplete
    covered: Dict[str, List[Tuple[int, int]]] = {}  # task -> seq ranges of every entry
    for task in tasks if redis is not None else []:
        steps, pairs, ranges, spans = set(), [], [], []
        for e in read_stream(redis, task):
            spans.append((e.first, e.last))
            if not e.complete:
                ranges.append((e.first, e.last))
            for ev in e.events:
                msg = ev.get("message") or ""
                if msg.startswith("s") and msg[1:].isdigit():
                    # Any event carrying the message (a resources sample too) holds that update's state.
                    steps.add(int(msg[1:]))
                    if ev["type"] == "progress":
                        pairs.append((int(msg[1:]), ev["seq"]))
        in_stream[task], step_seq[task], thinned[task], covered[task] = steps, sorted(pairs), ranges, sorted(spans)
    delivered = delivered or {}
    for a in acks:
        p = a.step in in_stream.get(a.task, ())
        d = a.step in delivered.get(a.task, ())
        s = False
        if not p and a.seq is not None:
            # The update's own seq is known: superseded if an entry marked incomplete covers it.
            s = any(lo <= a.seq <= hi for lo, hi in thinned.get(a.task, ()))
        elif not p and step_seq.get(a.task):
            # Missing from the stream: its seq lies between those of the persisted steps around it. Superseded if
            # an entry marked incomplete overlaps that gap (a complete entry holds every event of its range, so it
            # cannot be there) and entries cover all of it (a hole no entry covers is a loss).
            pairs = step_seq[a.task]
            before = max((q for st, q in pairs if st < a.step), default=0)
            after = min((q for st, q in pairs if st > a.step), default=None)
            s = (after is not None and any(lo < after and hi > before for lo, hi in thinned[a.task])
                 and _covers(covered[a.task], before + 1, after - 1))
        acc.persisted += p
        acc.superseded += s and not p
        acc.delivered += d
        if not (p or s or d):
            acc.lost += 1
            acc.lost_acks.append(a)
    FIGURES.append(acc)
    return acc


def _covers(spans: List[Tuple[int, int]], lo: int, hi: int) -> bool:
    """Whether the sorted (first, last) seq ranges cover every seq of lo..hi."""
    need = lo
    for first, last in spans:
        if first > need:
            break
        need = max(need, last + 1)
    return lo <= hi and need > hi


def record(name: str, **figures) -> None:
    """Figures of a test that has no acknowledged-update accounting."""
    FIGURES.append({"test": name, **figures})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FIGURES:
        return
    terminalreporter.section("fault injection figures")
    rows = [f.figures() if isinstance(f, Accounting) else f for f in FIGURES]
    for f in rows:
        terminalreporter.write_line(json.dumps(f))
    target = os.environ.get("FAULTS_FIGURES")
    if target:
        with open(target, "a") as out:
            for f in rows:
                out.write(json.dumps(f) + "\n")


# ---- WebSocket clients ----------------------------------------------------------------------------------


def ws_connect(port: int, client_id: Optional[str] = None, timeout: float = 5):
    import websocket
    url = f"ws://127.0.0.1:{port}{WS_PATH}" + (f"?client_id={client_id}" if client_id else "")
    ws = websocket.create_connection(url, timeout=timeout)
    hello = json.loads(ws.recv())
    assert hello["type"] == "connection.established", hello
    return ws


def ws_until(ws, until, timeout: float = 10.0, into: Optional[List[dict]] = None) -> List[dict]:
    """Receives messages (into `into`) until `until(all so far)` holds."""
    out = into if into is not None else []
    deadline = time.monotonic() + timeout
    while not until(out):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; last: {[(m.get('type'), m.get('seq')) for m in out][-10:]}")
        ws.settimeout(left)
        out.append(json.loads(ws.recv()))
    return out


def http_get(port: int, path: str, timeout: float = 5):
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

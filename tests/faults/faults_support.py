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
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
# Re-exported for the suite's tests: RawWebSocket, http_get, metrics, wait_until, ws_connect, ws_until.
from live_support import (BINDINGS, RawWebSocket, RedisServer, http_get, metrics, task_key,  # noqa: E402,F401
                          wait_until, ws_connect, ws_until)

FIGURES: list = []  # Accounting objects (figures taken at the end: tests add notes) or dicts


# ---- Redis ---------------------------------------------------------------------------------------------


@pytest.fixture
def redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis-data")
    server.folder.mkdir()
    server.start()
    yield server
    server.stop()


@dataclass
class StreamEntry:
    first: int
    last: int
    complete: bool
    events: List[dict]


def read_stream(redis: RedisServer, task_id: str, ns: str = "progress") -> List[StreamEntry]:
    c = redis.client()
    try:
        raw = c("XRANGE", task_key("events", task_id, ns), "-", "+")
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

    def python(self, code: str, *, stdin=None, stdout=subprocess.PIPE, preexec_fn=None, **env: str) -> subprocess.Popen:
        e = dict(os.environ, PYTHONUNBUFFERED="1", **env)
        # stderr goes to a file the test can read back at any time (stderr_of).
        err = tempfile.TemporaryFile("w+")
        p = subprocess.Popen([sys.executable, "-c", PRELUDE + code], stdin=stdin, stdout=stdout, stderr=err,
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
sys.path[:0] = [{str(BINDINGS)!r}, {str(TESTS)!r}]
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


def start_listener(procs: Procs, **cfg) -> Tuple[subprocess.Popen, int]:
    p = procs.python(LISTENER, stdin=subprocess.PIPE, LISTENER_CONFIG=json.dumps(cfg))
    return p, port_of(p)


def port_of(p: subprocess.Popen) -> int:
    """The port a listener process printed first (`port N`)."""
    line = p.stdout.readline()
    assert line.startswith("port"), (line, stderr_of(p))
    return int(line.split()[1])


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

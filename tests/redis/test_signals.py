"""The engine's threads take no asynchronous signal (Sources/ProgressEngine/Engine/Thread.swift): a signal sent to
the process reaches one of the host's threads, and a SIGPIPE raised by a write on one of the engine's sockets
stays pending on the engine's thread instead of ending a host that left SIGPIPE at its default. Every thread an
engine starts is checked, with `listen` and `redis_url` (all five kinds), in the opening process and in a fork
child, whose threads the child handler starts. (CPython 3.11 runs a handler late when its C-level handler fires on
a thread other than the main one, so a SIGTERM taken by an engine thread could wait long for the runner's handler.)"""

import json
import signal

from redis_support import run_runner

RUNNER = """
import os, signal

def masks():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        status = dict(line.split(":", 1) for line in open(f"/proc/self/task/{tid}/status").read().splitlines())
        out[int(tid)] = (status["Name"].strip(), int(status["SigBlk"], 16))
    return out

def started():
    # A thread that has not run yet has the mask pthread_create gives it until it starts: every signal, glibc's
    # own 32 included (which no pthread_sigmask of a program can block).
    deadline = time.time() + 10
    while any(mask >> 31 & 1 for _, mask in masks().values()) and time.time() < deadline:
        time.sleep(0.01)
    return masks()

before = masks()
t = ProgressTracker(listen="127.0.0.1:0", redis_url=%(url)r)
t.create_task_progress_sync("a", "tpl")
t.update_progress_sync("a", 1, 10)
opened = started()
pid = os.fork()
if pid == 0:
    t.update_progress_sync("a", 2, 10)
    child = started()
    print(json.dumps({"before": before, "child": child, "me": os.getpid()}), flush=True)
    t.close()
    os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"before": before, "opened": opened, "me": os.getpid()}), flush=True)
t.close()
"""

# What an engine thread must block: what a terminal, a supervisor or a dead peer sends to the process.
ASYNCHRONOUS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGPIPE, signal.SIGCHLD, signal.SIGALRM, signal.SIGWINCH]
# What it must not: the signals a thread raises on itself when it faults.
FAULTS = [signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL]


def bit(signum):
    return 1 << (int(signum) - 1)


def engine_threads(report, key):
    """The threads that were not there before the engine opened (the main thread and Python's own excluded)."""
    before = {int(tid) for tid in report["before"]}
    return {int(tid): (name, mask) for tid, (name, mask) in report[key].items()
            if int(tid) not in before and int(tid) != report["me"]}


def test_engine_threads_block_asynchronous_signals_in_the_parent_and_in_a_fork_child(redis):
    reports = [json.loads(line) for line in run_runner(RUNNER % {"url": redis.url}).splitlines()
               if line.startswith("{")]
    child = next(r for r in reports if "child" in r)
    parent = next(r for r in reports if "opened" in r)
    # The parent's maintenance, preview, listener, Redis writer and subscriber threads; the child's maintenance,
    # preview and writer threads (it has no listener).
    for report, key, least in ((parent, "opened", 5), (child, "child", 3)):
        threads = engine_threads(report, key)
        assert len(threads) >= least, (key, report[key])
        for tid, (name, mask) in threads.items():
            assert [s.name for s in ASYNCHRONOUS if not mask & bit(s)] == [], (key, tid, name, hex(mask))
            assert [s.name for s in FAULTS if mask & bit(s)] == [], (key, tid, name, hex(mask))
        # The thread that opened the engine (and forked) has its own mask back: none blocked, as it started.
        assert report[key][str(report["me"])][1] == 0, (key, report[key])

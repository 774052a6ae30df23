"""What an engine leaves to the process that hosts it, with `listen` and `redis_url` (every kind of engine thread
and connection).

Signals: the engine's threads take no asynchronous signal (Sources/ProgressEngine/Engine/Thread.swift): a signal
sent to the process reaches one of the host's threads, and a SIGPIPE raised by a write on one of the engine's
sockets stays pending on the engine's thread instead of ending a host that left SIGPIPE at its default, which the
listener does not change either. Every thread an engine starts is checked, in the opening process and in a fork
child, whose threads the child handler starts. (CPython 3.11 runs a handler late when its C-level handler fires on
a thread other than the main one, so a SIGTERM taken by an engine thread could wait long for the runner's handler.)

Descriptors: every one the engine opens is close-on-exec, so a program the runner starts (os.system("ffmpeg ..."),
posix_spawn) holds none of them: not the listening port, which it would keep bound after the runner exits, nor a
Redis connection."""

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
    # Until a new thread has run, it has the mask pthread_create gives it (every signal, glibc's own included) and
    # the name of the thread that made it; an engine thread names itself first thing.
    deadline = time.time() + 10
    while time.time() < deadline:
        threads = masks()
        if all(name.startswith("pe-") for tid, (name, _) in threads.items() if tid != os.getpid()):
            return threads
        time.sleep(0.01)
    return threads

def ignored():
    return int(dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())["SigIgn"], 16)

signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as a C program starts (Python ignores it)
before = masks()
t = ProgressTracker(listen="127.0.0.1:0", redis_url=%(url)r)
ignored_after_open = ignored()
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
print(json.dumps({"before": before, "opened": opened, "me": os.getpid(), "ignored": ignored_after_open}), flush=True)
t.close()
"""

# What an engine thread must block: what a terminal, a supervisor or a dead peer sends to the process.
ASYNCHRONOUS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGPIPE, signal.SIGCHLD, signal.SIGALRM, signal.SIGWINCH]
# What it must not: the signals a thread raises on itself when it faults, and SIGPROF, with which profilers sample
# and Swift's crash reporter pauses every thread.
FAULTS = [signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGPROF]


def bit(signum):
    return 1 << (int(signum) - 1)


def engine_threads(report, key):
    """The threads that were not there before the engine opened (the main thread and Python's own excluded)."""
    before = {int(tid) for tid in report["before"]}
    return {int(tid): (name, mask) for tid, (name, mask) in report[key].items()
            if int(tid) not in before and int(tid) != report["me"]}


def test_engine_threads_block_asynchronous_signals_and_the_hosts_sigpipe_stays_as_it_was(redis):
    reports = [json.loads(line) for line in run_runner(RUNNER % {"url": redis.url}).splitlines()
               if line.startswith("{")]
    child = next(r for r in reports if "child" in r)
    parent = next(r for r in reports if "opened" in r)
    # The child has no listener (nor, then, a subscriber).
    for report, key, names in ((parent, "opened", {"pe-maintenance", "pe-preview", "pe-listener", "pe-redis-writer",
                                                   "pe-redis-sub"}),
                               (child, "child", {"pe-maintenance", "pe-preview", "pe-redis-writer"})):
        threads = engine_threads(report, key)
        assert sorted(name for name, _ in threads.values()) == sorted(names), (key, report[key])
        for tid, (name, mask) in threads.items():
            assert [s.name for s in ASYNCHRONOUS if not mask & bit(s)] == [], (key, tid, name, hex(mask))
            assert [s.name for s in FAULTS if mask & bit(s)] == [], (key, tid, name, hex(mask))
        # The thread that opened the engine (and forked) has its own mask back: none blocked, as it started.
        assert report[key][str(report["me"])][1] == 0, (key, report[key])
    # libwebsockets sets SIGPIPE to ignored when the listener starts; the host's default is put back.
    assert not parent["ignored"] & bit(signal.SIGPIPE), hex(parent["ignored"])


FDS_RUNNER = """
import os, socket, subprocess, urllib.request

def descriptors():
    return {int(fd): os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}

before = descriptors()
t = ProgressTracker(listen="127.0.0.1:0", redis_url=%(url)r, preview_dir=%(previews)r, preview_every_steps=1)
t.create_task_progress_sync("a", "tpl")
t.update_progress_sync("a", 1, 10)
t.update_preview_sync("a", (bytes(4 * 4 * 3), 4, 4, 3))
client = socket.create_connection(("127.0.0.1", t.port))  # a connection the listener accepts
urllib.request.urlopen(f"{t.url}/api/v1/progress/tasks/a", timeout=5).read()
try:
    t.get_task_progress_sync("held-by-no-one")  # asks Redis on the reader's connection
except Exception as error:
    assert type(error).__name__ == "NotFoundError", error
def settled():
    # Every connection made (this client's and the one the listener accepted, the listening socket, the Redis
    # writer's, subscriber's and reader's) and marked close-on-exec: a connection is marked right after it
    # connects, and the subscriber connects on its own thread. On the code before, the deadline passes.
    new = {fd: target for fd, target in descriptors().items() if fd not in before}
    flags = {}
    for fd in new:
        try:
            flags[fd] = int(open(f"/proc/self/fdinfo/{fd}").read().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            return False
    sockets = sum(target.startswith("socket:") for target in new.values())
    return sockets >= 6 and all(flag & os.O_CLOEXEC for flag in flags.values())

deadline = time.time() + 10
while time.time() < deadline and not (t.stats_sync()["previews_written"] >= 1 and settled()):
    time.sleep(0.01)
opened = descriptors()
# What a child started without closing descriptors (as system() and posix_spawn start one) holds open.
LIST = ("import json, os; d = '/proc/self/fd/'; "
        "print(json.dumps({fd: os.readlink(d + fd) for fd in os.listdir(d) if os.path.exists(d + fd)}))")
child = subprocess.run([sys.executable, "-c", LIST], close_fds=False, capture_output=True, text=True, check=True).stdout
print(json.dumps({"before": before, "opened": opened, "child": json.loads(child)}), flush=True)
t.close()
"""


def test_a_program_the_runner_starts_inherits_none_of_the_engines_descriptors(redis, tmp_path):
    report = json.loads(run_runner(FDS_RUNNER % {"url": redis.url, "previews": str(tmp_path)}).splitlines()[-1])
    before = {int(fd) for fd in report["before"]}
    engine = {int(fd): target for fd, target in report["opened"].items() if int(fd) not in before}
    kinds = sorted(target.split(":")[0] for target in engine.values())
    assert kinds.count("socket") >= 6, engine  # see settled()
    # The same open file under the same number in the child (its own listing's descriptor may reuse a number).
    inherited = {fd: target for fd, target in report["child"].items() if engine.get(int(fd)) == target}
    assert inherited == {}, (inherited, engine)


GUARD_RUNNER = """
import ctypes, os, signal
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
dll = _lib._dll
guard = ctypes.create_string_buffer(256)  # CProgress_sigpipe_guard: a sigset_t and an int

def pending():
    return signal.SIGPIPE in signal.sigpending()

def write_to_a_closed_pipe():
    r, w = os.pipe()
    os.close(r)
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        return "EPIPE"
    finally:
        os.close(w)

# A write that raises SIGPIPE inside hold/release: no signal delivered, none left pending, the mask as it was.
dll.CProgress_sigpipe_hold(guard)
result = write_to_a_closed_pipe()
dll.CProgress_sigpipe_release(guard)
print(json.dumps({"case": "raised inside", "write": result, "pending": pending(),
                  "blocked": signal.SIGPIPE in signal.pthread_sigmask(signal.SIG_BLOCK, [])}), flush=True)
# One the caller had pending (blocked) before: left for the caller.
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGPIPE])
signal.raise_signal(signal.SIGPIPE)
dll.CProgress_sigpipe_hold(guard)
write_to_a_closed_pipe()
dll.CProgress_sigpipe_release(guard)
print(json.dumps({"case": "pending before", "pending": pending(),
                  "blocked": signal.SIGPIPE in signal.pthread_sigmask(signal.SIG_BLOCK, [])}), flush=True)
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGPIPE])  # delivered, ignored
"""


def test_the_sigpipe_guard_takes_back_only_the_signal_raised_under_it():
    """CProgress_sigpipe_hold / _release, which a Redis read on the caller's thread and a log line run under (a
    refused update's line is tested in bindings/python/tests/test_runner_safe.py)."""
    inside, before = [json.loads(line) for line in run_runner(GUARD_RUNNER).splitlines()]
    assert inside == {"case": "raised inside", "write": "EPIPE", "pending": False, "blocked": False}
    assert before == {"case": "pending before", "pending": True, "blocked": True}

"""Listener faults: the listener killed and restarted (clients resume), a client process stopped (SIGSTOP), the
OS file-descriptor limit reached (docs/RELIABILITY.md)."""

import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

from faults_support import (PRELUDE, Ack, RawWebSocket, account, http_get, message_steps, metrics, port_of,
                            read_runner, record, start_listener, start_runner, stderr_of, wait_until, ws_connect,
                            ws_until)


def updates(msgs, task=None):
    return [m for m in msgs if m.get("type") == "progress.update" and (task is None or m["task_id"] == task)]


def test_listener_sigkill_and_restart_clients_resume_with_nothing_lost(redis, procs):
    """Fleet: a runner process and a listener process share Redis. The listener is killed (SIGKILL) mid-run and
    another one started on the same port; the client reconnects with `resume` and gets every event it missed,
    then live updates, with no gap and no duplicate."""
    listener, port = start_listener(procs, listen="127.0.0.1:0", redis_url=redis.url, throttle_ms=20)
    runner = start_runner(procs, engine=dict(redis_url=redis.url, throttle_ms=20), tasks=2, interval=0.01,
                          seconds=4.0, prefix="job")
    tasks = ["job-0", "job-1"]
    ws = ws_connect(port, "resumer")
    ws.send(json.dumps({"type": "subscribe", "task_ids": tasks}))
    seen = []
    ws_until(ws, lambda m: all(any(u["seq"] > 30 for u in updates(m, t)) for t in tasks), 10, seen)
    before = list(seen)
    listener.kill()
    listener.wait(10)
    killed = time.monotonic()
    # The client sees the connection end (it may first read what was already in its socket).
    try:
        ws_until(ws, lambda m: False, 5, seen)
    except Exception:
        pass
    ws.close()
    last = {t: max(u["seq"] for u in updates(seen, t)) for t in tasks}
    time.sleep(0.5)  # updates go on meanwhile, to Redis only
    listener2, port2 = start_listener(procs, listen=f"127.0.0.1:{port}", redis_url=redis.url, throttle_ms=20)
    assert port2 == port
    restarted = time.monotonic()
    ws = ws_connect(port, "resumer")
    ws.send(json.dumps({"type": "subscribe", "task_ids": tasks, "resume": last}))
    acks, result = read_runner(runner)
    final = result["final"]
    after = []
    ws_until(ws, lambda m: all(any(u["seq"] == final[t] for u in updates(m, t)) for t in tasks), 15, after)
    ws.close()
    for t in tasks:
        got = [u["seq"] for u in updates(after, t)]
        # Exactly every seq after the last one seen, in order (replayed from the stream, then live; a live
        # state may cover several seqs when updates come faster than throttle_ms, so: strictly increasing,
        # and the replayed part without a gap).
        assert got == sorted(set(got)) and got[0] == last[t] + 1 and got[-1] == final[t], (t, got[:5], got[-5:])
        replayed = [u["seq"] for u in updates(after, t) if u.get("replayed")]
        assert replayed == list(range(last[t] + 1, last[t] + 1 + len(replayed))), t
        assert [u for u in updates(after, t) if "recovered" in u][0]["recovered"] is True
    acc = account("listener_sigkill_restart", acks, redis, message_steps(seen + after))
    acc.notes["down_ms"] = round((restarted - killed) * 1000)
    acc.notes["replayed_after_resume"] = sum(1 for u in updates(after) if u.get("replayed"))
    assert acc.lost == 0, [vars(a) for a in acc.lost_acks[:10]]
    # Everything acknowledged after the last update the client saw before the kill reached the client after
    # the restart as such, except what a live state coalesced (sent faster than throttle_ms: those are in the
    # stream, and the state that replaced them was delivered).
    seen_before = {t: max(message_steps(before)[t]) for t in tasks}
    after_steps = message_steps(after)
    later = [a for a in acks if a.step > seen_before[a.task]]
    acc.notes["acked_after_last_seen"] = len(later)
    acc.notes["of_which_delivered_after_resume"] = sum(a.step in after_steps.get(a.task, ()) for a in later)


SLOW_CLIENT = """
from live_support import RawWebSocket
ws = RawWebSocket.open(int(os.environ["PORT"]), "stopped", rcvbuf=4096)
ws.send_text('{"type":"subscribe","task_ids":["chatty"]}')
print("ready", flush=True)
print("closed", ws.messages_until_close(60)[1], flush=True)
"""


def test_stopped_client_process_is_dropped_others_served_runner_not_slowed(procs):
    from progress_engine import ProgressTracker, _lib
    with ProgressTracker(listen="127.0.0.1:0", throttle_ms=100) as t:
        t.create_task_progress_sync("chatty", "x")
        t.create_task_progress_sync("quiet", "x")
        slow = procs.python(SLOW_CLIENT, PORT=str(t.port))
        assert slow.stdout.readline().strip() == "ready"
        wait_until(lambda: metrics(t.port)["progress_connections"] == 1, 5, what="the client to be connected")
        slow.send_signal(signal.SIGSTOP)
        reader = ws_connect(t.port, "reader")
        reader.send(json.dumps({"type": "subscribe", "task_ids": ["quiet"]}))
        seen = []
        ws_until(reader, lambda m: any(x["type"] == "subscribed" for x in m), 5, seen)
        stop = threading.Event()

        def read():
            reader.settimeout(0.2)
            while not stop.is_set():
                try:
                    seen.append(json.loads(reader.recv()))
                except Exception:
                    continue

        th = threading.Thread(target=read)
        th.start()
        h = t._handle()
        line = "L" * 4096
        lat, acks = [], []
        try:
            for i in range(12_000):
                t0 = time.perf_counter()
                rc = _lib.progress_log(h, b"chatty", 1, line.encode())
                lat.append(time.perf_counter() - t0)
                assert rc == 0
                if i % 600 == 0:
                    step = i // 600 + 1
                    t0 = time.perf_counter()
                    assert _lib.progress_update(h, b"quiet", step, 100, f"s{step}".encode()) == 0
                    lat.append(time.perf_counter() - t0)
                    acks.append(Ack("quiet", step, time.monotonic()))
                    time.sleep(0.12)  # slower than throttle_ms: every quiet update is its own message
            wait_until(lambda: metrics(t.port)["progress_slow_clients_closed_total"] == 1, 10,
                       what="the stopped client to be dropped")
            wait_until(lambda: message_steps(seen).get("quiet", set()) >= {a.step for a in acks}, 5,
                       what="the reader to get every quiet update")
        finally:
            stop.set()
            th.join(5)
            reader.close()
        slow.send_signal(signal.SIGCONT)
        out, _ = slow.communicate(timeout=30)
        assert "closed 4008" in out, out
        lat.sort()
        history = http_get(t.port, "/api/v1/progress/tasks/quiet/history")[1]["events"]
        acc = account("client_sigstop", acks, None, message_steps(seen))
        hist_steps = message_steps({"task_id": "quiet", **e} for e in history)
        assert acc.lost == 0 and acc.delivered == len(acks)
        assert hist_steps.get("quiet", set()) >= {a.step for a in acks}
        acc.notes["runner_calls"] = len(lat)
        acc.notes["runner_p99_us"] = round(lat[len(lat) * 99 // 100] * 1e6, 1)
        acc.notes["runner_max_ms"] = round(lat[-1] * 1e3, 2)
        # The runner never waits on a client: microseconds per call (the slowest is scheduling noise).
        assert lat[len(lat) * 99 // 100] < 0.001 and lat[-1] < 0.3, (lat[len(lat) * 99 // 100], lat[-1])


FD_LISTENER = """
t = ProgressTracker(listen="127.0.0.1:0", throttle_ms=20)
t.create_task_progress_sync("tick", "x")
print("port", t.port, flush=True)
i = 0
while True:
    i += 1
    t.update_progress_sync(task_id="tick", step=i, total_steps=1_000_000, message=f"s{i}")
    time.sleep(0.05)
"""


def _handshake(port, timeout):
    """A WebSocket handshake on a fresh socket: the connection if the server answered 101 in time, else None."""
    try:
        return RawWebSocket.open(port, "fd", timeout=timeout)
    except (OSError, AssertionError):
        return None


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def _exhaust(port: int, limit: int) -> tuple["websocket.WebSocket", list[RawWebSocket], int | None]:
    """A subscribed watcher of "tick", then connections until one is not answered: (watcher, held, how many
    were accepted, or None if none was refused)."""
    watcher = ws_connect(port, "watcher")
    watcher.send(json.dumps({"type": "subscribe", "task_ids": ["tick"]}))
    ws_until(watcher, lambda m: len(updates(m)) > 0, 5)
    held = []
    for _ in range(limit + 20):
        s = _handshake(port, 3.0)  # a slow answer on a loaded machine is not a refusal
        if s is None:
            return watcher, held, len(held)
        held.append(s)
    return watcher, held, None


def _lower_nofile(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def test_fd_exhaustion_at_the_os_limit(procs):
    limit = 96
    p = procs.python(FD_LISTENER, preexec_fn=_lower_nofile(limit))
    port = port_of(p)
    watcher, held, refused = _exhaust(port, limit)
    try:
        assert refused is not None, f"{len(held)} connections accepted under RLIMIT_NOFILE {limit}"
        # Exhausted, with a connection waiting in the kernel's backlog all along (accept() keeps failing
        # for it): the existing client is still served (new ticks arrive), and the listener does not spin.
        pending = socket.create_connection(("127.0.0.1", port), timeout=2)
        cpu0, t0 = _cpu_seconds(p.pid), time.monotonic()
        got = ws_until(watcher, lambda m: len(updates(m)) >= 10, 5)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - t0)))
        cpu = (_cpu_seconds(p.pid) - cpu0) / (time.monotonic() - t0)
        pending.close()
        assert len(updates(got)) >= 10
        assert cpu < 0.3, f"the listener process used {cpu:.2f} cores while out of descriptors (spinning on accept?)"
        # Half the held connections close: the listener accepts again (the one left pending in the backlog
        # first) and a new client is served.
        for s in held[: len(held) // 2]:
            s.close()
        del held[: len(held) // 2]
        recovered = wait_until(lambda: _handshake(port, 2.0), 10, 0.2, "a new connection after some closed")
        recovered.close()
        ws2 = ws_connect(port, "after")
        ws2.send(json.dumps({"type": "ping"}))
        assert ws_until(ws2, lambda m: any(x["type"] == "pong" for x in m), 5)
        ws2.close()
        assert p.poll() is None
        # While accept() fails with EMFILE the listener stops watching the listening socket for 250 ms at a
        # time and says so at most once per 10 s: no log line per failed accept() (libwebsockets' own
        # "accept: errno 24" lines are not printed), no busy loop.
        err = stderr_of(p)
        lines = [json.loads(line) for line in err.splitlines()]  # the listener's C lines are the engine's JSON too
        warnings = sum(1 for e in lines if (e["component"], e["event"], e["level"]) == ("listener", "out_of_fds",
                                                                                          "warning"))
        assert err.count("accept: errno") == 0, err[-2000:]
        assert 1 <= warnings <= 3, err[-2000:]
        assert "listener out of file descriptors" in err
        record("fd_exhaustion_os_limit", rlimit_nofile=limit, connections_accepted=refused,
               existing_client_served=True, recovered=True, listener_cpu_while_exhausted=round(cpu, 2),
               out_of_fds_warnings=warnings, stderr_lines=err.count("\n"))
    finally:
        for s in held:
            s.close()
        watcher.close()


# The child fills its own stderr pipe (which the test never reads) before it starts the listener.
FULL_STDERR = """
import fcntl
flags = fcntl.fcntl(2, fcntl.F_GETFL)
fcntl.fcntl(2, fcntl.F_SETFL, flags | os.O_NONBLOCK)
try:
    while True:
        os.write(2, b"x" * 4096)
except BlockingIOError:
    pass
fcntl.fcntl(2, fcntl.F_SETFL, flags)
""" + FD_LISTENER


def test_undrained_stderr_does_not_block_the_listener(procs):
    """The engine's log lines go to stderr; when stderr is a full pipe nobody reads (a careless supervisor),
    the listener drops them rather than blocking its thread: running out of descriptors, which makes it
    warn, leaves the existing client served and the listener accepting again afterwards."""
    limit = 96
    p = subprocess.Popen([sys.executable, "-c", PRELUDE + FULL_STDERR], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                         preexec_fn=_lower_nofile(limit))
    procs.procs.append(p)
    line = p.stdout.readline()
    assert line.startswith("port"), line
    port = int(line.split()[1])
    watcher, held, refused = _exhaust(port, limit)
    try:
        assert refused is not None, f"{len(held)} connections accepted under RLIMIT_NOFILE {limit}"
        # Out of descriptors with a connection waiting: the listener warns (into the full pipe) and goes on.
        pending = socket.create_connection(("127.0.0.1", port), timeout=2)
        time.sleep(0.5)
        got = ws_until(watcher, lambda m: len(updates(m)) >= 10, 5)
        assert len(updates(got)) >= 10, "the listener stopped serving its client with stderr full"
        pending.close()
        for s in held:
            s.close()
        held.clear()
        recovered = wait_until(lambda: _handshake(port, 2.0), 10, 0.2, "a new connection with stderr full")
        recovered.close()
        assert p.poll() is None
        record("undrained_stderr", rlimit_nofile=limit, connections_accepted=refused, existing_client_served=True,
               recovered=True)
    finally:
        for s in held:
            s.close()
        watcher.close()

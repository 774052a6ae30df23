"""The listener under load: throttled fan-out to a subscriber of a flooded task, 1,000 concurrent clients,
slow clients (coalescing, then 4008), max_connections (1013), and a clean shutdown with clients connected.
These run in `make test`; only the 1,000-client test skips, and only where the file limit cannot allow it."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import statistics
import threading
import time

import pytest
from progress_engine import ProgressTracker, StageStatus


def test_throttle_coalesces_a_flood_to_about_ten_updates_a_second(wire):
    """A runner reports 1,000 steps a second to one task for 2.5 s; with throttle_ms 100 the subscriber gets
    about 10 progress.update a second, each newer than the last, and the last state always arrives."""
    t = wire.open(throttle_ms=100)
    t.create_task_progress_sync("flood", "sdxl", "image_generation")
    steps = 2500
    timing = {}

    def runner():
        start = time.monotonic()
        timing["start"] = start
        for i in range(1, steps + 1):
            t.update_progress_sync("flood", i, steps, message=f"step {i}")
            if i % 10 == 0:
                delay = start + i / 1000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        timing["end"] = time.monotonic()

    async def scenario():
        async with wire.connect(t, "flood-watcher") as ws:
            (state,) = await wire.subscribed(ws, ["flood"])
            assert state["data"]["status"] == "queued"
            thread = threading.Thread(target=runner)
            thread.start()
            seen = []
            try:
                last = await wire.recv_until(
                    ws, lambda m: m["type"] == "progress.update"
                    and m["data"]["stages"]["2"]["message"] == f"step {steps}", 10, seen)
            finally:
                thread.join(10)
            # Nothing after the last state until the next change.
            assert await wire.request(ws, {"type": "ping"}, "pong", seen=seen) == {"type": "pong"}
            assert seen[-2] is last, seen[-3:]
            t.complete_task_sync("flood")
            done = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3, seen)
            assert done["data"]["status"] == "completed"
            return seen, last

    seen, last = wire.run(scenario(), timeout=30)
    duration = timing["end"] - timing["start"]
    assert steps / duration > 600, f"the runner managed only {steps / duration:.0f} updates/s"
    updates = [m for m in seen if m["type"] == "progress.update"]
    seqs = [m["seq"] for m in updates]
    assert seqs == sorted(set(seqs)), "seq must strictly increase"
    assert last["data"]["stages"]["2"]["progress"] == 1.0 and last["data"]["overall_progress"] == 90
    step_of = [int(m["data"]["stages"]["2"]["message"].split()[1]) for m in updates[:-1]
               if m["data"]["stages"]["2"]["message"]]
    during = [s for s in step_of if s < steps]
    rate = len(during) / duration
    assert 5 <= rate <= 15, f"{len(during)} updates in {duration:.2f} s = {rate:.1f}/s (throttle 100 ms): {step_of}"
    gaps = [b - a for a, b in zip(step_of, step_of[1:])]
    assert statistics.median(gaps) >= 50, f"updates are not coalesced: steps {step_of}"


def test_thousand_concurrent_clients_all_get_their_final_states(wire):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # One process holds both ends of every connection: 2,000 sockets plus the interpreter's own.
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 2200: 1,000 clients need 2,000 sockets in this process")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        _thousand_clients(wire)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _thousand_clients(wire):
    n_clients, n_tasks = 1000, 40
    t = wire.open(throttle_ms=50)
    tasks = [f"job-{i}" for i in range(n_tasks)]
    for task_id in tasks:
        t.create_task_progress_sync(task_id, "sdxl", "image_generation")
    watch = [sorted({tasks[i % n_tasks], tasks[(7 * i + 3) % n_tasks], tasks[(13 * i + 5) % n_tasks]})
             for i in range(n_clients)]

    async def open_client(i):
        ws = await wire.connect(t, f"c{i}", open_timeout=20, close_timeout=5)
        assert (await wire.recv(ws, 20))["client_id"] == f"c{i}"
        await ws.send(f'{{"type":"subscribe","task_ids":{watch[i]!r}}}'.replace("'", '"'))
        return ws

    async def follow(i, ws):
        """Every message up to the completed state of each watched task."""
        seen, done = [], set()
        while done != set(watch[i]):
            m = await wire.recv(ws, 25)
            seen.append(m)
            if m["type"] == "progress.update" and m["data"]["status"] == "completed":
                done.add(m["task_id"])
        return seen

    async def scenario():
        clients = []
        try:
            for first in range(0, n_clients, 100):
                clients += await asyncio.gather(*(open_client(i) for i in range(first, min(first + 100, n_clients))))
            followers = [asyncio.ensure_future(follow(i, ws)) for i, ws in enumerate(clients)]
            peak = await asyncio.to_thread(wire.metrics, t)
            for step in range(1, 6):
                for task_id in tasks:
                    t.update_progress_sync(task_id, step, 5, message=f"step {step}")
                await asyncio.sleep(0.06)
            for task_id in tasks:
                t.update_stage_sync(task_id, 3)
                t.complete_task_sync(task_id)
            results = await asyncio.gather(*followers)
            return peak, results
        finally:
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)

    start = time.monotonic()
    peak, results = wire.run(scenario(), timeout=90)
    elapsed = time.monotonic() - start
    assert peak["progress_connections"] == n_clients
    assert peak["progress_subscriptions"] == sum(len(w) for w in watch)
    final = {task_id: t.get_task_progress_sync(task_id)["seq"] for task_id in tasks}
    for i, seen in enumerate(results):
        assert seen[0] == {"type": "subscribed", "task_ids": watch[i]}, seen[0]
        last = {}
        for m in seen[1:]:
            assert m["type"] == "progress.update" and m["task_id"] in watch[i], m
            assert m["seq"] > last.get(m["task_id"], 0), f"client {i}: seq went back for {m['task_id']}"
            last[m["task_id"]] = m["seq"]
        for task_id in watch[i]:
            assert last[task_id] == final[task_id], f"client {i} ended {task_id} at seq {last[task_id]}"
    assert wire.wait_metric(t, "progress_connections", lambda v: v == 0, timeout=10) == 0
    assert elapsed < 60, f"1,000 clients took {elapsed:.1f} s"


def test_slow_client_gets_the_latest_state_per_task_not_a_backlog(wire):
    """A client that stops reading while 300 tasks change 24,000 times (more than 10,000 messages) is not
    closed: its queue keeps only the newest state of each task, and once it reads again it gets each
    task's final state, in seq order."""
    t = wire.open(throttle_ms=0)
    n_tasks, rounds = 300, 80
    tasks = [f"s{i}" for i in range(n_tasks)]
    for task_id in tasks:
        t.create_task_progress_sync(task_id, "sdxl", "image_generation")
    raw = wire.raw_ws(t, client_id="sleepy", rcvbuf=4096)
    raw.next_frame()
    raw.send_text('{"type":"subscribe","task_ids":["*"]}')
    pad = "p" * 2000  # big messages, so the socket buffers fill quickly
    before = wire.metrics(t)["progress_fanouts_total"]
    for r in range(1, rounds + 1):
        for task_id in tasks:
            t.update_progress_sync(task_id, r, rounds, message=f"{r} {pad}")
        time.sleep(0.005)
    fanouts = wire.metrics(t)["progress_fanouts_total"] - before
    # The test can only fail if more states were fanned out than the slow-client bound allows.
    assert fanouts > 11_000, f"only {fanouts} fan-outs: the flood did not outrun the bound"
    messages = []
    deadline = time.monotonic() + 20
    latest = {}
    while set(latest) != set(tasks) or any(latest[k] != rounds for k in tasks):
        missing = [k for k in tasks if latest.get(k) != rounds]
        assert time.monotonic() < deadline, f"final states missing for {len(missing)} tasks"
        frame = raw.next_frame(5)
        assert frame is not None, "the server closed the slow client"
        opcode, payload = frame
        assert opcode == 0x1, (opcode, payload[:100])
        m = json.loads(payload)
        messages.append(m)
        if m["type"] == "progress.update":
            msg = m["data"]["stages"]["2"]["message"]
            latest[m["task_id"]] = int(msg.split()[0]) if msg else 0
    assert wire.metrics(t)["progress_slow_clients_closed_total"] == 0
    updates = [m for m in messages if m["type"] == "progress.update"]
    assert len(updates) < fanouts, "nothing was coalesced"
    last = {}
    for m in updates:
        assert m["seq"] > last.get(m["task_id"], 0), m["task_id"]
        last[m["task_id"]] = m["seq"]
    wire.assert_alive(t)


def test_a_star_subscribe_to_more_tasks_than_the_bound_is_served(wire):
    """A "*" subscribe's current states are read and queued a slice at a time as the client takes them: a client
    that reads nothing is sent what the sockets hold (4 KB states, at most 4 MiB of kernel send buffer), not
    12,000 states (50 MB, more than the 10,000-message bound) queued at once. Read at the client's own pace,
    every task comes once, oldest first, and the client is not closed."""
    t = wire.open(resource_interval_ms=3600000)
    n = 12_000
    pad = {"pad": "p" * 4000}
    for i in range(n):
        t.create_task_progress_sync(f"many-{i:05d}", "x", metadata=pad)
    raw = wire.raw_ws(t, client_id="dashboard", rcvbuf=4096)
    raw.next_frame()
    raw.send_text('{"type":"subscribe","task_ids":["*"]}')
    time.sleep(0.5)  # the client reading nothing yet
    changed = {f"many-{i:05d}" for i in range(0, n, 1000)}
    for task in changed:  # changes on top, while the states wait
        t.update_progress_sync(task, 1, 10)
    m = wire.metrics(t)
    taken = m["progress_messages_sent_total"] + m["progress_client_queue_depth"]
    assert taken < n / 4, m
    seen = set()
    first_seen = []
    deadline = time.monotonic() + 30
    while len(seen) < n:
        assert time.monotonic() < deadline, f"{len(seen)} of {n} states read"
        frame = raw.next_frame(5)
        assert frame is not None, "the server closed the client"
        opcode, payload = frame
        assert opcode == 0x1, (opcode, payload[:200])
        m = json.loads(payload)
        if m["type"] == "progress.update" and m["task_id"] not in seen:
            seen.add(m["task_id"])
            first_seen.append(m["task_id"])
    unchanged = [task for task in first_seen if task not in changed]
    assert unchanged == sorted(unchanged) and len(unchanged) == n - len(changed)
    assert wire.metrics(t)["progress_slow_clients_closed_total"] == 0
    wire.assert_alive(t)


def test_client_that_never_reads_is_closed_with_4008(wire):
    """Log entries are never coalesced: a client that reads nothing while 12,000 log entries of 4 KiB go to
    it passes the 10,000-message / 32 MiB bound (plus one message and 4 KiB per watched task) and is closed
    with 4008; a reading client of another task
    is served all along, and the slow one finds the close once it reads."""
    t = wire.open()
    t.create_task_progress_sync("chatty", "x")
    t.create_task_progress_sync("quiet", "x")
    raw = wire.raw_ws(t, client_id="never-reads", rcvbuf=4096)
    raw.next_frame()
    raw.send_text('{"type":"subscribe","task_ids":["chatty"]}')
    line = "L" * 4096

    async def scenario():
        async with wire.connect(t, "reader") as ws:
            await wire.subscribed(ws, ["quiet"])
            for i in range(12_000):
                t.log_sync("chatty", "info", line)
                if i % 2000 == 0:
                    t.update_stage_sync("quiet", 0, StageStatus.IN_PROGRESS, i / 12_000)
                    await asyncio.sleep(0)
            closed = await asyncio.to_thread(
                wire.wait_metric, t, "progress_slow_clients_closed_total", lambda v: v >= 1, 10)
            assert closed == 1
            # The reader got every change of its task meanwhile.
            t.complete_task_sync("quiet")
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and m["data"]["status"] == "completed",
                                  5)

    wire.run(scenario(), timeout=40)
    logs, code = raw.messages_until_close(15)
    assert code == 4008, (code, len(logs))
    assert 0 < len(logs) < 12_000 and all(m["type"] in ("subscribed", "progress.update", "task.log") for m in logs)
    assert wire.wait_metric(t, "progress_connections", lambda v: v == 0) == 0
    wire.assert_alive(t)


def test_max_connections_refuses_with_1013(wire):
    t = wire.open(max_connections=3)

    async def scenario():
        clients = [await wire.connect(t, f"c{i}") for i in range(3)]
        try:
            for ws in clients:
                await wire.established(ws)
            async with wire.connect(t, "fourth") as ws:
                code, got = await wire.closed_with(ws)
                assert code == 1013 and got == [], (code, got)
            assert wire.metrics(t)["progress_connections_refused_total"] == 1
            await clients.pop().close()
            await asyncio.to_thread(wire.wait_metric, t, "progress_connections", lambda v: v == 2)
            async with wire.connect(t, "again") as ws:
                await wire.established(ws)
                assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}
            # HTTP is not counted against max_connections.
            assert (await asyncio.to_thread(wire.http, t, "/healthz")).status == 200
        finally:
            for ws in clients:
                await ws.close()

    wire.run(scenario())


def _fd_and_thread_counts():
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


def _settled_counts(timeout=3.0):
    """The counts once they stop changing: helper threads of asyncio's executor shutdown end a moment
    after asyncio.run() returns."""
    deadline = time.monotonic() + timeout
    last = _fd_and_thread_counts()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _fd_and_thread_counts()
        if now == last and threading.active_count() == 1:
            return now
        last = now
    return last


def _shutdown_with_clients(wire):
    """Opens an engine, connects 20 WebSocket clients (subscribed, getting updates), 2 keep-alive HTTP
    connections and a half-sent request, then closes the engine. Returns (seconds close() took, the close
    code each client saw)."""
    t = ProgressTracker(listen="127.0.0.1:0", throttle_ms=20)
    t.create_task_progress_sync("live", "sdxl", "image_generation")
    port = t.port
    idle = [wire.raw_socket(t) for _ in range(3)]
    idle[0].sendall(b"GET /api/v1/progress/ws HTTP/1.1\r\nHost: x\r\n")
    for s in idle[1:]:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = b""
        while not response.endswith(b'{"status":"ok"}'):
            chunk = s.recv(4096)
            assert chunk, response
            response += chunk
        assert response.startswith(b"HTTP/1.1 200")

    async def scenario():
        clients = [await wire.connect(t, f"c{i}") for i in range(20)]
        try:
            for ws in clients:
                await wire.established(ws)
                await wire.request(ws, {"type": "subscribe", "task_ids": ["live"]}, "subscribed")
            for step in range(1, 4):
                t.update_progress_sync("live", step, 100, message="m")
            await asyncio.sleep(0.05)
            took = {}

            def close():
                start = time.monotonic()
                t.close()
                took["s"] = time.monotonic() - start

            closer = threading.Thread(target=close)
            closer.start()
            codes = [(await wire.closed_with(ws, 5))[0] for ws in clients]
            await asyncio.to_thread(closer.join, 10)
            assert not closer.is_alive(), "tracker.close() did not return within 10 s"
            return took["s"], codes
        finally:
            for ws in clients:
                await ws.close()

    try:
        took, codes = wire.run(scenario())
    finally:
        t.close()
    for s in idle:  # the server side of every idle socket is gone as well
        s.settimeout(2)
        try:
            rest = s.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert rest == b"", rest[:100]
        s.close()
    wire._sockets.clear()
    # Nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    return took, codes


def test_close_with_clients_connected_is_prompt_and_leaks_nothing(wire):
    _shutdown_with_clients(wire)  # warm-up: lazy imports, executors and caches of the first run
    threads_before, fds_before = _settled_counts()
    took, codes = _shutdown_with_clients(wire)
    assert took < 2, f"tracker.close() with 20 clients connected took {took:.2f} s"
    assert all(code in (None, 1001, 1006) for code in codes), codes
    threads_after, fds_after = _settled_counts()
    assert threads_after == threads_before, f"threads: {threads_before} before, {threads_after} after"
    assert fds_after == fds_before, f"fds: {fds_before} before, {fds_after} after"

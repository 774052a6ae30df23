"""Redis going away (SPEC §9): the runner never blocks and never fails; after Redis comes back the writer
reconnects and Redis holds the exact final state of every task."""

import json
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from redis_support import IdUsedTwice, flushed, free_port, run_runner, wait_until

RUNNER = """
t = ProgressTracker(redis_url={url!r}, throttle_ms=20)
ids = [f"task-{{i}}" for i in range(8)]
for tid in ids:
    t.create_task_progress_sync(task_id=tid, template_id="tpl")
print("started", flush=True)
lat = []
steps = 0
start = time.time()
while time.time() - start < {seconds}:
    steps += 1
    for tid in ids:
        lat.append(update(t, tid, steps, 1_000_000, "s" if steps % 100 == 0 else None))
lat.sort()
for tid in ids:
    t.complete_task_sync(tid)
# Wait for the reconnection and the flush (the test restarted Redis meanwhile).
deadline = time.time() + 15
while time.time() < deadline:
    s = t.stats_sync()
    if s["redis_connected"] == 1 and s["redis_queue_depth"] == 0:
        break
    time.sleep(0.05)
final = {{tid: t.get_task_progress_sync(tid) for tid in ids}}
print(json.dumps({{"slowest": lat[-1], "p99": lat[len(lat) * 99 // 100], "steps": steps, "final": final, "stats": t.stats_sync()}}), flush=True)
t.close()
"""


def check_final(redis, final):
    for tid, state in final.items():
        stored = json.loads(redis.cli("GET", f"progress:task:{{{tid}}}:state"))
        stored.pop("stored_times")
        assert stored == state


def test_redis_sigkill_mid_run_then_restart(redis):
    proc = run_runner(RUNNER.format(url=redis.url, seconds=3), wait=False)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.7)
    redis.signal(signal.SIGKILL)
    time.sleep(1.0)
    redis.start()  # same folder: the AOF brings back what was written before the kill
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["stats"]["redis_reconnects"] >= 1
    # An update never waits on Redis (whose timeouts are 1 s): the slowest call is scheduling noise of a busy
    # machine at worst (tens of ms on a loaded 2-core box, with or without Redis), the p99 is microseconds.
    assert result["slowest"] < 0.3 and result["p99"] < 0.001, (result["slowest"], result["p99"])
    check_final(redis, result["final"])


def test_redis_paused_runner_unaffected(redis):
    proc = run_runner(RUNNER.format(url=redis.url, seconds=2.5), wait=False)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.5)
    redis.pause()
    time.sleep(1.5)
    redis.resume()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    result = json.loads(out)
    assert result["slowest"] < 0.3 and result["p99"] < 0.001, (result["slowest"], result["p99"])
    check_final(redis, result["final"])


def test_close_with_redis_frozen_mid_write_keeps_the_close_bound(redis):
    """Redis stops answering (SIGSTOP) while the writer waits for a reply: close still returns within the 2 s flush
    bound (counted from the close, the round under way included), and what it could not write is dropped and
    counted. It used to take the rest of the blocked call (up to 1 s) plus a full 2 s more."""
    from progress_engine import ProgressTracker
    from redis_support import flushed
    t = ProgressTracker(redis_url=redis.url, throttle_ms=10)
    try:
        t.create_task_progress_sync(task_id="frozen", template_id="tpl")
        flushed(t)
        redis.pause()
        # 1.2 s of steps: the writer's first pipeline times out after 1 s, it reconnects (the kernel still
        # accepts connections of a stopped process) and blocks on its next reply when the close comes.
        for i in range(60):
            t.update_progress_sync(task_id="frozen", step=i + 1, total_steps=100, message=f"s{i + 1}")
            time.sleep(0.02)
        start = time.monotonic()
        t.close()
        took = time.monotonic() - start
    finally:
        redis.resume()
        t.close()
    assert took < 2.4, f"close took {took:.2f} s with Redis frozen (bound: 2 s)"


def test_async_reads_that_ask_a_stopped_redis_leave_the_event_loop_running(redis):
    """With redis_url, reading a task the engine does not hold asks Redis synchronously (200 ms timeouts). The
    awaitable reads run in a worker thread then, so a stopped Redis stalls the caller, not its event loop."""
    import asyncio
    from progress_engine import NotFoundError, ProgressTracker
    t = ProgressTracker(redis_url=redis.url, throttle_ms=10)
    try:
        redis.pause()

        async def scenario():
            ticks = 0
            done = asyncio.Event()

            async def ticker():
                nonlocal ticks
                while not done.is_set():
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick_task = asyncio.create_task(ticker())
            start = asyncio.get_running_loop().time()
            try:
                await t.get_task_progress("held-elsewhere")
            except NotFoundError:
                pass
            took = asyncio.get_running_loop().time() - start
            done.set()
            await tick_task
            return took, ticks

        took, ticks = asyncio.run(scenario())
        assert took >= 0.15, f"the read did not wait for Redis ({took:.3f} s)"
        assert ticks >= 0.5 * took / 0.01, f"the event loop ran {ticks} ticks in {took:.2f} s"
    finally:
        redis.resume()
        t.close()


class LoadingRedis:
    """A server that answers every command as a restarted Redis does while it loads its dataset (-LOADING)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.commands = 0
        self.clients = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _command_length(buf: bytes):
        """Bytes of the first complete RESP command (an array of bulk strings) in `buf`, or None."""
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        pos = end + 2
        for _ in range(int(buf[1:end])):
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            pos = end + 2 + int(buf[pos + 1:end]) + 2
            if pos > len(buf):
                return None
        return pos

    def _serve(self, conn) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            while (n := self._command_length(buf)) is not None:
                buf = buf[n:]
                self.commands += 1
                conn.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")

    def close(self) -> None:
        self.listener.close()
        for conn in self.clients:
            conn.close()


def test_writes_a_loading_redis_refused_are_written_once_it_has_loaded(tmp_path):
    """A restarted Redis answers LOADING until its AOF is loaded. The writer takes that for "not written yet": it
    backs off and writes again, so what it sends only once (a log entry here, a preview) is not lost."""
    from progress_engine import ProgressTracker
    from redis_support import RedisServer, flushed, task_key
    fake = LoadingRedis()
    with ProgressTracker(redis_url=f"redis://127.0.0.1:{fake.port}/0", throttle_ms=5) as t:
        t.create_task_progress_sync(task_id="early", template_id="tpl")
        t.log_sync("early", "info", "said once")
        wait_until(lambda: fake.commands >= 20, what="the writer to be refused a few times")
        stats = t.stats_sync()
        assert stats["redis_task_writes"] == 0 and stats["redis_command_errors"] == 0, stats
        fake.close()
        server = RedisServer(tmp_path)
        server.port = fake.port  # the same address, now with the dataset loaded
        server.start()
        try:
            flushed(t)
            stored = json.loads(server.cli("GET", task_key("state", "early")))
            assert stored["seq"] == t.get_task_progress_sync("early")["seq"]
            assert [json.loads(e)["message"] for e in server.lines("LRANGE", task_key("logs", "early"), 0, -1)] == \
                ["said once"]
        finally:
            server.stop()


def test_a_write_redis_refuses_for_a_while_goes_again(redis):
    """At maxmemory with noeviction Redis answers OOM to writes: the task's last state is not counted as written, and
    is written once Redis takes writes again."""
    from progress_engine import ProgressTracker

    with ProgressTracker(redis_url=redis.url, throttle_ms=10) as t:
        t.create_task_progress_sync("oom", "tpl")
        t.update_progress_sync("oom", 1, 4, message="one")
        wait_until(lambda: (json.loads(redis.cli("GET", "progress:task:{oom}:state") or "{}").get("status")
                            == "executing"), what="the first write")
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.cli("CONFIG", "SET", "maxmemory", "1")
        try:
            t.complete_task_sync("oom")
            time.sleep(1.0)
            stored = json.loads(redis.cli("GET", "progress:task:{oom}:state"))
            assert stored["status"] == "executing"  # refused: Redis is full
        finally:
            redis.cli("CONFIG", "SET", "maxmemory", "0")
        wait_until(lambda: json.loads(redis.cli("GET", "progress:task:{oom}:state"))["status"] == "completed",
                   timeout=10, what="the last state written once Redis takes writes")


def test_while_redis_refuses_writes_the_writer_backs_off_and_publishes_nothing(redis, capfd):
    """A Redis that takes connections but refuses writes (OOM): the writer's back-off grows from one retry to the
    next, as for one that is down (it started again at 50 ms with each connection: 60-80 retries in 3 s, each with a
    warning), and nothing is published until the state is stored (the listener mirrored each retry's log entry
    again: 60-80 copies of one line)."""
    from progress_engine import ProgressTracker

    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as listener, \
            ProgressTracker(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000) as t:
        t.create_task_progress_sync("full", "tpl")
        t.update_progress_sync("full", 1, 4, message="one")
        def mirrored():
            try:
                return listener.get_task_progress_sync("full")["status"] == "executing"
            except Exception:  # not written yet
                return False

        wait_until(mirrored, what="the mirror")
        capfd.readouterr()
        redis.cli("CONFIG", "SET", "maxmemory-policy", "noeviction")
        redis.cli("CONFIG", "SET", "maxmemory", "1")
        try:
            t.log_sync("full", "info", "while full")
            time.sleep(3.0)
            err = capfd.readouterr().err
        finally:
            redis.cli("CONFIG", "SET", "maxmemory", "0")
        retries = err.count('"event":"disconnected"')
        assert 3 <= retries <= 10, err[-3000:]

        def copies():
            return [e["message"] for e in listener.get_logs_sync("full")["logs"]].count("while full")

        wait_until(lambda: copies() > 0, timeout=10, what="the log entry once Redis takes writes")
        time.sleep(0.3)
        assert copies() == 1


def restart_without_data(redis, *seed):
    """Redis killed and started again without its data (a server without persistence, or one whose AOF was lost);
    `seed`: commands a Redis of its own wrote to a new AOF in the folder first, so the restarted Redis holds them
    before any engine reconnects."""
    redis.signal(signal.SIGKILL)
    for path in redis.folder.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if seed:
        port = free_port()
        seeder = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "yes", "--dir", str(redis.folder)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                                          text=True).stdout.strip() == "PONG", what="the seeding Redis")
        for command in (*seed, ["SHUTDOWN"]):
            subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, check=False)
        seeder.wait(timeout=10)
    redis.start()


def test_a_redis_restarted_without_its_data_gets_back_what_the_engine_holds(redis, capfd):
    """Redis killed and started again without its AOF (a server without persistence, or one whose last second of
    fsync was lost): the engine sees another run_id and writes again each task whose writes Redis no longer holds,
    finished ones included, which would else never be written again (nothing changes them)."""
    from progress_engine import ProgressTracker

    with ProgressTracker(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000) as t:
        t.create_task_progress_sync("done", "tpl")
        t.update_progress_sync("done", 2, 4, message="half")
        t.log_sync("done", "info", "before the restart")
        t.complete_task_sync("done")
        t.create_task_progress_sync("running", "tpl")
        t.update_progress_sync("running", 3, 10, message="three")
        wait_until(lambda: t.stats_sync()["redis_queue_depth"] == 0 and redis.cli("EXISTS", "progress:task:{running}:state") == "1",
                   what="the writes")
        done, running = t.get_task_progress_sync("done"), t.get_task_progress_sync("running")
        restart_without_data(redis)

        def stored(task_id):
            text = redis.cli("GET", f"progress:task:{{{task_id}}}:state")
            return json.loads(text) if text else None

        wait_until(lambda: (stored("done") or {}).get("seq") == done["seq"]
                   and (stored("running") or {}).get("seq") == running["seq"], timeout=10, what="the tasks again")
        assert stored("done")["status"] == "completed" and stored("running")["status"] == "executing"
        logs = [json.loads(x)["message"] for x in redis.lines("LRANGE", "progress:task:{done}:logs", "0", "-1")]
        assert logs == ["before the restart"]
        events = redis.lines("XRANGE", "progress:task:{done}:events", "-", "+")
        assert events, "the task's events written again"
        assert redis.cli("ZSCORE", "progress:heartbeats", "running") != ""
        assert len(redis.lines("ZRANGE", "progress:tasks:created", "0", "-1")) == 2
    assert '"event":"redis_restarted"' in capfd.readouterr().err



def test_a_cancel_request_in_a_restarted_redis_outlives_the_task_written_again(redis):
    """Redis restarted without its data, and a listener's cancel request for a running task reached it before the
    task's engine wrote the task again: that write is not a new task's first one, so it does not DEL the task's keys.
    The request stays under the task's `cancel` key (for a runner that resumes the task later) and reaches the
    engine, which stores the task with cancel_requested."""
    from progress_engine import ProgressTracker

    with ProgressTracker(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000) as t:
        t.create_task_progress_sync("running", "tpl")
        t.update_progress_sync("running", 3, 10, message="three")
        wait_until(lambda: t.stats_sync()["redis_queue_depth"] == 0
                   and redis.cli("EXISTS", "progress:task:{running}:state") == "1", what="the writes")
        # The restarted Redis holds the request only, there before the engine reconnects.
        request = json.dumps({"reason": "stop it", "requested_at": time.time()})
        restart_without_data(redis, ["SET", "progress:task:{running}:cancel", request, "PX", "3600000"])

        def stored():
            text = redis.cli("GET", "progress:task:{running}:state")
            return json.loads(text) if text else {}

        wait_until(lambda: stored().get("cancel_requested") is True, timeout=10,
                   what="the task written again, with the request")
        assert t.get_task_progress_sync("running")["cancel_reason"] == "stop it"
        assert stored()["status"] == "executing" and stored()["cancel_reason"] == "stop it"
        flushed(t)
        assert json.loads(redis.cli("GET", "progress:task:{running}:cancel")) == json.loads(request)


def test_a_redis_restarted_with_part_of_a_long_log_gets_the_rest_again(redis):
    """A log past its 1,000-entry bound, and a Redis restarted from a copy of its AOF taken before the last entries:
    the stored log is as long as it was, so its length cannot tell what is missing. The engine's count, stored with
    the log in the same script (the `logged` key), can."""
    from progress_engine import ProgressTracker

    with ProgressTracker(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000) as t:
        t.create_task_progress_sync("long", "tpl")
        for i in range(1100):
            t.log_sync("long", "info", f"entry {i}")
        flushed(t)
        assert redis.cli("GET", "progress:task:{long}:logged").endswith(" 1100")
        saved = redis.folder.parent / (redis.folder.name + "-copy")
        shutil.copytree(redis.folder, saved)
        for i in range(1100, 1105):
            t.log_sync("long", "info", f"entry {i}")
        flushed(t)
        redis.signal(signal.SIGKILL)
        shutil.rmtree(redis.folder)
        shutil.copytree(saved, redis.folder)
        shutil.rmtree(saved)
        redis.start()
        assert redis.cli("GET", "progress:task:{long}:logged").endswith(" 1100")  # the restart lost the last five

        def last():
            lines = redis.lines("LRANGE", "progress:task:{long}:logs", "-1", "-1")
            return json.loads(lines[0])["message"] if lines else None

        wait_until(lambda: last() == "entry 1104", timeout=10, what="the lost entries written again")
        messages = [json.loads(x)["message"] for x in redis.lines("LRANGE", "progress:task:{long}:logs", "0", "-1")]
        assert messages == [f"entry {i}" for i in range(105, 1105)]


def test_a_redis_restarted_without_its_data_gets_templates_and_completion_records_again(redis):
    """The templates and the fleet's completion records (the ETA's history) live in Redis for engines opened later.
    Redis restarted without its data: every engine that knows them writes back what is missing, each record once
    however many engines restore it, and a template registered anew since is kept."""
    from progress_engine import ProgressTracker

    opts = dict(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000)
    stages = [{"name": "load", "weight": 1}, {"name": "sample", "weight": 3}]
    # B listens, so it mirrors A's tasks and adds their completions to its own history (from its mirror, which
    # lacks what only A measured): it must not write those back as records of its own.
    with ProgressTracker(**opts) as a, ProgressTracker(listen="127.0.0.1:0", **opts) as b:
        a.register_template_stages_sync("img", stages)
        a.register_template_stages_sync("other", stages)
        for i in range(5):
            a.create_task_progress_sync(f"done-{i}", "img")
            for step in range(1, 4):
                a.update_progress_sync(f"done-{i}", step, 3)
                time.sleep(0.01)
            a.complete_task_sync(f"done-{i}")
        flushed(a)
        wait_until(lambda: len(redis.lines("LRANGE", "progress:eta:{img}", "0", "-1")) == 5, what="the records")
        records = redis.lines("LRANGE", "progress:eta:{img}", "0", "-1")
        wait_until(lambda: b.get_task_progress_sync("done-4")["status"] == "completed", what="B's mirror")
        # The restarted Redis holds only what another engine wrote there first: a template registered anew and a
        # completion record newer than A's (there before A and B reconnect).
        newer = json.dumps({"task_id": "elsewhere", "template_id": "img", "stage_durations": {"0": 1.0},
                            "total_duration": 1.0, "timestamp": time.time() + 100})
        restart_without_data(redis, ["HSET", "progress:templates", "other", '[{"name":"newer","weight":1}]'],
                             ["RPUSH", "progress:eta:{img}", newer])
        # (A and B may already be back and restoring: the seeded record is there, among theirs or alone.)
        assert newer in redis.lines("LRANGE", "progress:eta:{img}", "0", "-1")
        # (A template of the binding's StageManager, registered by another test, may be there too.)
        wait_until(lambda: {"img", "other"} <= set(redis.lines("HKEYS", "progress:templates")), timeout=10,
                   what="the templates again")
        wait_until(lambda: len(redis.lines("LRANGE", "progress:eta:{img}", "0", "-1")) >= 6, timeout=10,
                   what="the records again")
        flushed(a)
        flushed(b)
        time.sleep(0.3)
        # Each once, ordered by time (A's older ones before the newer one), whichever engine restored first.
        assert redis.lines("LRANGE", "progress:eta:{img}", "0", "-1") == records + [newer]
        assert [s["name"] for s in json.loads(redis.cli("HGET", "progress:templates", "img"))] == ["load", "sample"]
        assert json.loads(redis.cli("HGET", "progress:templates", "other"))[0]["name"] == "newer"
    # An engine opened afterwards loads the history; once the others are gone, it alone restores it.
    with ProgressTracker(**opts) as c:
        c.create_task_progress_sync("next", "img")
        assert [s["name"] for s in c.get_task_progress_sync("next")["stages"].values()] == ["load", "sample"]
        restart_without_data(redis)
        wait_until(lambda: len(redis.lines("LRANGE", "progress:eta:{img}", "0", "-1")) == 6, timeout=10,
                   what="the records again, from the engine that loaded them")
        back = redis.lines("LRANGE", "progress:eta:{img}", "0", "-1")
        assert back[:5] == records  # loaded and written again, the same bytes
        assert [(r["task_id"], r["timestamp"]) for r in map(json.loads, back)] == \
            [(r["task_id"], r["timestamp"]) for r in map(json.loads, records + [newer])]


@pytest.mark.parametrize("apart", IdUsedTwice.APART)
def test_after_a_redis_restart_a_finished_task_leaves_a_newer_one_of_its_id_alone(redis, apart, capfd):
    """Engine A's task finished; engine B runs a new task under the same id (its seq lower). After a Redis restart
    that lost nothing, A's check finds another task's state under the id and writes nothing: before, it took the
    lower stored seq for a loss and wrote its old events and log entries into the new task's stream and log. The
    check compares the creation times as the engines hold them: tasks created in the same millisecond are two."""
    from progress_engine import ProgressTracker

    opts = dict(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000)
    twice = IdUsedTwice(apart)
    with ProgressTracker(**opts) as a, ProgressTracker(**opts) as b:
        twice.create_first(a, "again")
        for i in range(1, 6):
            a.log_sync("again", "info", f"old {i}")
            a.update_progress_sync("again", i, 5, message=f"old {i}")
        a.complete_task_sync("again")
        wait_until(lambda: a.stats_sync()["redis_queue_depth"] == 0, what="A's writes")
        twice.create_second(a, b, "again")
        b.log_sync("again", "info", "new")
        b.update_progress_sync("again", 1, 5, message="new 1")
        wait_until(lambda: b.stats_sync()["redis_queue_depth"] == 0
                   and json.loads(redis.cli("GET", "progress:task:{again}:state"))["seq"]
                   == b.get_task_progress_sync("again")["seq"], what="B's writes")
        logs = redis.lines("LRANGE", "progress:task:{again}:logs", "0", "-1")
        stream = redis.lines("XRANGE", "progress:task:{again}:events", "-", "+")
        state = redis.cli("GET", "progress:task:{again}:state")
        redis.signal(signal.SIGKILL)
        redis.start()  # AOF with fsync always: nothing lost
        wait_until(lambda: a.stats_sync()["redis_reconnects"] >= 1 and b.stats_sync()["redis_reconnects"] >= 1
                   and a.stats_sync()["redis_queue_depth"] == 0 and b.stats_sync()["redis_queue_depth"] == 0,
                   timeout=10, what="both writers back")
        time.sleep(0.3)
        assert redis.lines("LRANGE", "progress:task:{again}:logs", "0", "-1") == logs
        assert redis.lines("XRANGE", "progress:task:{again}:events", "-", "+") == stream
        after = json.loads(redis.cli("GET", "progress:task:{again}:state"))
        assert after["created_at"] == json.loads(state)["created_at"]
        assert after["stored_times"]["created"] == json.loads(state)["stored_times"]["created"]  # B's, not A's
    # Neither engine took the other's task for a loss of its own (B's stored state is its latest).
    restarts = [json.loads(line) for line in capfd.readouterr().err.splitlines() if '"event":"redis_restarted"' in line]
    assert len(restarts) == 2 and all(r["tasks_written_again"] == "0" for r in restarts), restarts

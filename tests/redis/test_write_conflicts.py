"""Which state Redis keeps when writes of one task id meet (docs/REDIS.md, "Writing" and "The fleet"): the
task-write script (`RedisWriter.writeTaskScript`) refuses an older task's late write whole, a first write run late,
a lower seq, and the same seq with other contents (a listener's takeover), but takes this engine's own state again
at the same seq with another ETA, and appends a log entry sent again once; a listener whose takeover write is
refused mirrors what the worker stored."""

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time

import pytest

from redis_support import IdUsedTwice, flushed, http_get, run_runner, wait_until
from progress_engine import ProgressTracker


def stored(redis, task_id):
    return json.loads(redis.cli("GET", f"progress:task:{{{task_id}}}:state"))


def test_a_log_alone_is_stored_as_the_same_state_not_as_a_conflict(redis):
    """A log entry does not move the seq, while the stored ETA is computed at each write against the engine's time,
    which another task moves: the same seq with another ETA. It was refused as another engine's state, and the
    engine "reclaimed" its own task with a `resumed` event."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000) as t:
        t.create_task_progress_sync("t", "tpl")
        t.create_task_progress_sync("other", "tpl")
        for i in range(1, 6):
            t.update_progress_sync("t", i, 100)
            time.sleep(0.1)
        flushed(t)
        before = t.get_task_progress_sync("t")
        first = stored(redis, "t")
        assert first["seq"] == before["seq"] and first["eta_seconds"] is not None
        time.sleep(0.5)
        t.update_progress_sync("other", 1, 100, message="later")  # the engine's time moves on
        t.log_sync("t", "info", "hello")
        flushed(t)
        time.sleep(0.1)
        flushed(t)
        after = t.get_task_progress_sync("t")
        assert after["seq"] == before["seq"], after
        assert [e["type"] for e in t.get_history_sync("t")["events"]][-1] == "progress"
        doc = stored(redis, "t")
        assert doc["seq"] == before["seq"] and doc["status"] == "executing"
        # The state written with the log differed from the stored one in its ETA only, and was stored.
        assert doc["eta_seconds"] != first["eta_seconds"], (doc["eta_seconds"], first["eta_seconds"])
        assert {k: v for k, v in doc.items() if not k.startswith("eta")} == \
            {k: v for k, v in first.items() if not k.startswith("eta")}
        assert [json.loads(x)["message"] for x in redis.cli("LRANGE", "progress:task:{t}:logs", "0", "-1")
                .splitlines() if x.startswith("{")] == ["hello"]


@pytest.mark.parametrize("apart", IdUsedTwice.APART)
def test_a_finished_tasks_late_write_leaves_a_newer_task_of_its_id_alone(redis, apart):
    """Engine A's task failed; engine B runs a new task under the same id (its seq starts low again). A's late log
    on its finished task carried A's higher seq and replaced B's live state in Redis. The script tells the tasks
    apart by their creation times as the engines hold them, so two created in the same millisecond (the same
    `created_at`) are two tasks as well."""
    opts = dict(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000)
    with ProgressTracker(**opts) as a, ProgressTracker(**opts) as b:
        twice = IdUsedTwice(apart)
        twice.create_first(a, "job-7")
        for i in range(1, 11):
            a.update_progress_sync("job-7", i, 10)
        a.fail_task_sync("job-7", "oom")
        flushed(a)
        twice.create_second(a, b, "job-7")
        b.update_progress_sync("job-7", 1, 10)
        flushed(b)
        mine = b.get_task_progress_sync("job-7")
        assert stored(redis, "job-7")["created_at"] == mine["created_at"]
        b_created = stored(redis, "job-7")["stored_times"]["created"]
        if twice.second is not None:
            assert b_created == twice.second  # B's task, not A's of the same created_at
        a.log_sync("job-7", "info", "cleanup done")  # A's runner's last words on its own finished task
        flushed(a)
        doc = stored(redis, "job-7")
        assert (doc["created_at"], doc["seq"], doc["status"]) == (mine["created_at"], mine["seq"], "executing"), doc
        assert doc["stored_times"]["created"] == b_created
        # Nothing else of A's late write lands on B's task: not its log entry, and not the heartbeat's removal that
        # A's finished task sends (B's task would look like a lost worker's until B's next heartbeat).
        assert "cleanup done" not in redis.cli("LRANGE", "progress:task:{job-7}:logs", "0", "-1")
        assert redis.cli("ZSCORE", "progress:heartbeats", "job-7").strip(), "B's heartbeat was removed"
        with ProgressTracker(**opts) as c:
            assert c.get_task_progress_sync("job-7")["created_at"] == mine["created_at"]


def test_metadata_holding_the_text_of_the_creation_time_does_not_decide_which_task_is_newer(redis):
    """The script reads a state's creation time from its last member, `stored_times`: a caller's metadata, written
    before it, may hold the same text. Read from the metadata, A's task would look created in 2255 and B's newer
    task of the id would be refused as an older one's late write."""
    opts = dict(redis_url=redis.url, throttle_ms=10, resource_interval_ms=3600000)
    with ProgressTracker(**opts) as a, ProgressTracker(**opts) as b:
        a.create_task_progress_sync("job-8", "tpl", metadata={"stored_times": {"created": 9e9}})
        a.fail_task_sync("job-8", "oom")
        flushed(a)
        assert '"metadata":{"stored_times":{"created":' in redis.cli("GET", "progress:task:{job-8}:state")
        time.sleep(0.01)
        b.create_task_progress_sync("job-8", "tpl")
        b.update_progress_sync("job-8", 1, 10)
        flushed(b)
        mine = b.get_task_progress_sync("job-8")
        doc = stored(redis, "job-8")
        assert (doc["created_at"], doc["seq"], doc["status"]) == (mine["created_at"], mine["seq"], "executing"), doc


class DelayingProxy:
    """A TCP proxy to Redis that holds a client's bytes for `delay` seconds once they contain `marker` (and all
    that follows on that connection, in order); everything else passes at once."""

    def __init__(self, port, marker, delay):
        self.port, self.marker, self.delay = port, marker, delay
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"redis://127.0.0.1:{self.server.getsockname()[1]}"
        self.held = threading.Event()
        self.released = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src, dst, outward):
        try:
            while data := src.recv(65536):
                if outward and self.marker in data and not self.held.is_set():
                    self.held.set()
                    time.sleep(self.delay)
                    self.released.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.server.close()


@contextlib.contextmanager
def first_write_held(redis, task_id):
    """A tracker whose first write of task `task_id` a proxy held for 2.5 s, past the writer's 1 s timeout: the
    writer sends it again on a new connection, and the held one runs in Redis later."""
    proxy = DelayingProxy(redis.port, task_id.encode(), delay=2.5)
    try:
        with ProgressTracker(redis_url=proxy.url, throttle_ms=10, resource_interval_ms=3600000) as t:
            t.create_task_progress_sync("warm", "tpl")
            flushed(t)
            t.create_task_progress_sync(task_id, "tpl")
            assert proxy.held.wait(10), "the first write never went out"
            yield t, proxy
    finally:
        proxy.close()


def test_a_first_write_run_late_does_not_undo_the_writes_after_it(redis):
    """When the held first write finally ran, it deleted the task's stream and log and put its first state back
    over the newer one."""
    with first_write_held(redis, "replayed") as (t, proxy):
        for i in range(1, 6):
            t.update_progress_sync("replayed", i, 10, message=f"step {i}")
        t.log_sync("replayed", "info", "after the retry")
        flushed(t)
        mine = t.get_task_progress_sync("replayed")
        assert stored(redis, "replayed")["seq"] == mine["seq"]
        time.sleep(3.0)  # the held first write reached Redis and ran
        doc = stored(redis, "replayed")
        assert (doc["seq"], doc["stages"]["1"]["message"]) == (mine["seq"], "step 5"), doc
        logs = redis.cli("LRANGE", "progress:task:{replayed}:logs", "0", "-1")
        assert "after the retry" in logs, logs
        entries = redis.cli("XRANGE", "progress:task:{replayed}:events", "-", "+")
        assert '"message":"step 5"' in entries, entries  # the stream kept the events after the first write


def test_a_first_write_run_late_keeps_a_log_entry_written_after_it(redis):
    """The first write sent again, then a log entry alone (the seq does not move), then the held first write runs:
    it deleted the task's log (and any cancel request) again."""
    with first_write_held(redis, "rerun") as (t, proxy):
        flushed(t)
        t.log_sync("rerun", "info", "after the retry")
        flushed(t)
        assert not proxy.released.is_set(), "the held write ran before the log entry: nothing tested"
        time.sleep(3.0)  # the held first write reached Redis and ran
        entries = [json.loads(x)["message"] for x in redis.lines("LRANGE", "progress:task:{rerun}:logs", "0", "-1")]
        assert entries == ["after the retry"], entries
        assert stored(redis, "rerun")["seq"] == t.get_task_progress_sync("rerun")["seq"]


def test_a_first_write_run_late_keeps_a_cancel_request_made_after_it(redis):
    """The first write sent again, then a listener's cancel request under the task's key (for a runner that resumes
    the task later), then the held first write runs at the seq Redis holds: its DEL removed the request."""
    with first_write_held(redis, "stopme") as (t, proxy):
        flushed(t)
        request = json.dumps({"reason": "operator", "requested_at": time.time()})
        redis.cli("SET", "progress:task:{stopme}:cancel", request, "PX", "3600000")
        assert not proxy.released.is_set(), "the held write ran before the request: nothing tested"
        time.sleep(3.0)  # the held first write reached Redis and ran
        assert stored(redis, "stopme")["seq"] == t.get_task_progress_sync("stopme")["seq"] == 1
        assert json.loads(redis.cli("GET", "progress:task:{stopme}:cancel")) == json.loads(request)


def test_a_write_sent_again_after_a_lost_reply_appends_its_log_entries_once(redis):
    """A write carrying a log entry is held past the writer's timeout, so the writer sends it again on a new
    connection; then the held one runs too. Its entry was appended twice."""
    proxy = DelayingProxy(redis.port, b"held entry", delay=2.5)
    try:
        with ProgressTracker(redis_url=proxy.url, throttle_ms=10, resource_interval_ms=3600000) as t:
            t.create_task_progress_sync("logged", "tpl")
            flushed(t)
            t.log_sync("logged", "info", "held entry")
            assert proxy.held.wait(10), "the write never went out"
            t.log_sync("logged", "info", "next entry")
            flushed(t)
            time.sleep(3.0)  # the held write reached Redis and ran
            entries = [json.loads(x)["message"] for x in
                       redis.lines("LRANGE", "progress:task:{logged}:logs", "0", "-1")]
            assert entries == ["held entry", "next entry"], entries
    finally:
        proxy.close()


def test_a_takeover_refused_because_the_worker_completed_first_mirrors_the_completion(redis):
    """The listener reads the task of a worker that stopped heartbeating and fails it ("worker lost", seq + 1);
    before that write reaches Redis (held by a proxy), the worker, back from its pause, stores its completion at
    that same seq. Redis refuses the listener's write. The listener then "reclaimed" its own failure one seq higher,
    which every engine took: Redis ended on "failed" for a task whose worker completed it."""
    timeout = 1.0
    proxy = DelayingProxy(redis.port, b"worker lost", delay=1.5)
    try:
        with ProgressTracker(redis_url=proxy.url, listen="127.0.0.1:0", heartbeat_timeout_seconds=timeout,
                             resource_interval_ms=3600000) as listener:
            proc = run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, heartbeat_timeout_seconds={timeout}, throttle_ms=5,
                    resource_interval_ms=3600000)
t.create_task_progress_sync(task_id="raced", template_id="tpl")
t.update_progress_sync(task_id="raced", step=3, total_steps=10, message="working")
while t.stats_sync()["redis_queue_depth"] or not t.stats_sync()["redis_connected"]:
    time.sleep(0.01)
print(t.get_task_progress_sync("raced")["seq"], flush=True)
sys.stdin.readline()
t.complete_task_sync("raced")
while t.stats_sync()["redis_queue_depth"]:
    time.sleep(0.01)
print(t.get_task_progress_sync("raced")["seq"], flush=True)
t.close()
""", wait=False, stdin=subprocess.PIPE)
            seq = int(proc.stdout.readline())
            time.sleep(timeout + 0.5)  # the listener has been connected for the timeout: it scans
            proc.send_signal(signal.SIGSTOP)
            try:
                assert proxy.held.wait(10), "the listener never wrote its takeover"
            finally:
                proc.send_signal(signal.SIGCONT)
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert int(proc.stdout.readline()) == seq + 1  # the worker's completion, stored first
            assert proc.wait(timeout=30) == 0
            assert stored(redis, "raced")["status"] == "completed"
            time.sleep(2.0)  # the held takeover reached Redis and was refused
            doc = stored(redis, "raced")
            assert (doc["status"], doc["seq"]) == ("completed", seq + 1), doc
            shown = wait_until(lambda: (lambda s: s if s["status"] == "completed" else None)(
                http_get(listener.port, "/api/v1/progress/tasks/raced")[1]), timeout=5, what="the worker's state")
            assert shown["seq"] == seq + 1, shown
    finally:
        proxy.close()

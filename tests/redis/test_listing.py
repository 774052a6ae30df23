"""The task listing in a fleet (docs/API.md "Task listing", docs/REDIS.md): a listener lists the tasks of every
engine on the Redis it shares, through the creation index `NS:tasks:created`, merged with the tasks it holds
itself, in one order, with a cursor that pages through both without repeating or skipping a task."""

import json
import threading
import time
import urllib.parse

from redis_support import ProgressServer, flushed, http_get, run_runner, wait_until
from progress_engine import ProgressTracker

LIST = "/api/v1/progress/tasks"
INDEX = "progress:tasks:created"


def page(port, **params):
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    status, body = http_get(port, LIST + (f"?{query}" if query else ""))
    assert status == 200, body
    assert body["count"] == len(body["tasks"])
    return body


def message(task):
    """The current stage's message."""
    return task["stages"][str(task["current_stage"])]["message"]


def pages(port, **params):
    """Every page from the first, following next_cursor: a page may come back short, even empty, before the end."""
    cursor = None
    for _ in range(1000):
        body = page(port, cursor=cursor, **params)
        yield body
        cursor = body["next_cursor"]
        if cursor is None:
            return
    raise AssertionError("the cursor never ends")


def walk(port, **params):
    """Every page from the first: (ids in order, pages)."""
    bodies = list(pages(port, **params))
    return [t["task_id"] for body in bodies for t in body["tasks"]], len(bodies)


def listed(port, **params):
    """Every task of every page, in order."""
    return [t for body in pages(port, **params) for t in body["tasks"]]


def test_a_listener_lists_the_fleets_tasks_with_its_own(redis):
    """Runner A (no listener) writes its tasks to Redis; listener B, started afterwards, holds none of them but has
    tasks of its own. B's listing interleaves both by creation time, pages through them with any limit, filters the
    stored ones like its own, and shows each as GET /tasks/{id} on B does."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
        for i in range(0, 20, 2):
            a.create_task_progress_sync(f"t{i:02d}", "video" if i % 4 == 0 else "image", timestamp=1_000 + i)
        a.fail_task_sync("t04", "oom")
        a.complete_task_sync("t06")
        a.update_progress_sync("t08", 2, 10, message="remote step")
        flushed(a)
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
            for i in range(1, 20, 2):
                b.create_task_progress_sync(f"t{i:02d}", "image", timestamp=1_000 + i)
            b.fail_task_sync("t05", "disk full")
            expected = [f"t{i:02d}" for i in range(19, -1, -1)]
            full = page(b.port)
            assert [t["task_id"] for t in full["tasks"]] == expected and full["next_cursor"] is None
            for task in full["tasks"]:
                assert task == http_get(b.port, f"/api/v1/progress/tasks/{task['task_id']}")[1], task["task_id"]
            remote = {t["task_id"]: t for t in full["tasks"]}
            assert remote["t08"]["status"] == "executing" and message(remote["t08"]) == "remote step"
            for limit in (1, 3, 7, 20):
                assert walk(b.port, limit=limit) == (expected, -(-20 // limit)), limit
            assert walk(b.port, status="failed", limit=1)[0] == ["t05", "t04"]
            assert walk(b.port, status="completed,failed")[0] == ["t06", "t05", "t04"]
            assert walk(b.port, template_id="video", limit=2)[0] == ["t16", "t12", "t08", "t04", "t00"]
            assert walk(b.port, status="executing")[0] == ["t08"]
            # Text in the id: stored (even) and held (odd) tasks alike, filtered before their states are read.
            assert walk(b.port, id_contains="T1", limit=4)[0] == [f"t{i}" for i in range(19, 9, -1)]
            assert walk(b.port, id_contains="4", status="failed")[0] == ["t04"]
            # A's later change reaches B as a mirror (held in memory now): still one entry, in its place.
            a.update_progress_sync("t08", 5, 10, message="mirrored")
            # Paged like any client: a page may come back short (even empty) with a next_cursor.
            wait_until(lambda: [message(t) for t in listed(b.port, status="executing")] == ["mirrored"],
                       what="the mirror's state in the listing")
            assert walk(b.port, limit=3)[0] == expected


def test_progress_server_lists_every_runners_tasks(redis):
    """Two runner processes write tasks; progress-server (a listener with no task of its own) lists them all."""
    for runner in ("r1", "r2"):
        run_runner(f"""
t = ProgressTracker(redis_url={redis.url!r}, throttle_ms=5)
for i in range(5):
    t.create_task_progress_sync(task_id=f"{runner}-{{i}}", template_id="tpl", batch_id={runner!r}, timestamp=2_000 + i)
t.complete_task_sync("{runner}-0")
t.close()
""")
    with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
        seen, pages = walk(server.port, limit=4)
        assert seen == [f"{r}-{i}" for i in range(4, -1, -1) for r in ("r2", "r1")] and pages == 3
        assert walk(server.port, batch_id="r1")[0] == [f"r1-{i}" for i in range(4, -1, -1)]
        assert walk(server.port, status="completed")[0] == ["r2-0", "r1-0"]


def test_paging_while_the_fleet_creates_tasks(redis):
    """A runner creates tasks while a client pages a listener's listing: every task that existed at the start is seen
    once, in order; the new ones are newer than every page already read."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
        before = [f"old-{i:03d}" for i in range(60)]
        for task_id in before:
            a.create_task_progress_sync(task_id, "tpl")
        flushed(a)
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
            stop = threading.Event()

            def runner():
                i = 0
                while not stop.is_set():
                    a.create_task_progress_sync(f"new-{i:04d}", "tpl")
                    a.update_progress_sync(before[i % 60], 1, 2)
                    i += 1
                    time.sleep(0.002)

            thread = threading.Thread(target=runner)
            thread.start()
            try:
                seen, cursor = [], None
                while True:
                    body = page(b.port, limit=5, cursor=cursor)
                    seen += [t["task_id"] for t in body["tasks"]]
                    cursor = body["next_cursor"]
                    if cursor is None:
                        break
                    time.sleep(0.01)
            finally:
                stop.set()
                thread.join()
            assert [x for x in seen if x.startswith("old-")] == list(reversed(before))
            assert len(seen) == len(set(seen))


def test_the_index_holds_creation_order_and_forgets_expired_tasks(redis):
    """Members are 16 hex digits of the creation time's ordered bits, then the id (score 0, so Redis orders them
    bytewise). An entry goes once its task's state has expired; a task that runs longer than the retention keeps its
    entry (its keys are kept alive)."""
    with ProgressTracker(redis_url=redis.url, retention_seconds=1, heartbeat_timeout_seconds=0.3, throttle_ms=5) as a:
        long_ago = time.time() - 3600
        a.create_task_progress_sync("done", "tpl", timestamp=long_ago)
        a.complete_task_sync("done")
        a.create_task_progress_sync("running", "tpl", timestamp=long_ago + 1)
        a.update_progress_sync("running", 1, 10)
        flushed(a)
        members = redis.lines("ZRANGE", INDEX, "0", "-1", "WITHSCORES")
        assert members[1::2] == ["0", "0"]
        assert [m[16:] for m in members[0::2]] == ["done", "running"]
        assert all(len(m) > 16 and all(c in "0123456789abcdef" for c in m[:16]) for m in members[0::2])
        # "done" expires 1 s after its last write; the writer's sweep (every 0.25 s here) then drops its entry.
        wait_until(lambda: [m[16:] for m in redis.lines("ZRANGE", INDEX, "0", "-1")] == ["running"], timeout=10,
                   what="the expired task's index entry to go")
        assert redis.cli("EXISTS", "progress:task:{running}:state") == "1"
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as b:
            assert walk(b.port)[0] == ["running"]


def test_a_reused_id_is_listed_once_at_its_new_place(redis):
    """A new task under an id Redis already had (another engine, no resume) replaces it; the old index entry is
    left behind until it expires, and the listing skips it (its creation time is not the task's)."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
        a.create_task_progress_sync("dup", "tpl", timestamp=1_000)
        a.complete_task_sync("dup")
        a.create_task_progress_sync("mid", "tpl", timestamp=1_500)
        flushed(a)
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a2:
        a2.create_task_progress_sync("dup", "tpl2", timestamp=2_000)
        flushed(a2)
    assert len(redis.lines("ZRANGE", INDEX, "0", "-1")) == 3
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as b:
        body = page(b.port)
        assert [(t["task_id"], t["template_id"]) for t in body["tasks"]] == [("dup", "tpl2"), ("mid", "tpl")]
        assert walk(b.port, limit=1)[0] == ["dup", "mid"]


def test_a_rare_filter_over_many_stored_tasks_pages_in_bounded_steps(redis):
    """Each request examines at most 4,096 stored tasks, so a filter that matches few of many does not hold the
    listener's thread for the whole index: a page may come back short, even empty, with a cursor to go on from.
    Walking to the end finds every match once."""
    with ProgressTracker(redis_url=redis.url, throttle_ms=50) as a:
        for i in range(5_000):
            a.create_task_progress_sync(f"bulk-{i:05d}", "tpl", timestamp=10_000 + i)
        for i in (3, 4_990):
            a.fail_task_sync(f"bulk-{i:05d}", "rare")
        flushed(a)
        with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as b:
            first = page(b.port, status="failed", limit=10)
            assert [t["task_id"] for t in first["tasks"]] == ["bulk-04990"], "the budget ran out before bulk-00003"
            assert first["next_cursor"] is not None
            second = page(b.port, status="failed", limit=10, cursor=first["next_cursor"])
            assert [t["task_id"] for t in second["tasks"]] == ["bulk-00003"]
            assert walk(b.port, status="failed")[0] == ["bulk-04990", "bulk-00003"]
            seen, pages = walk(b.port, limit=1000)
            assert seen == [f"bulk-{i:05d}" for i in range(4_999, -1, -1)] and pages == 5


def test_with_redis_down_a_listener_lists_what_it_holds(redis):
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
        a.create_task_progress_sync("remote", "tpl", timestamp=1_000)
        flushed(a)
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", throttle_ms=5) as b:
        b.create_task_progress_sync("local", "tpl", timestamp=2_000)
        assert walk(b.port)[0] == ["local", "remote"]
        redis.stop()
        try:
            started = time.monotonic()
            assert walk(b.port)[0] == ["local"]
            assert time.monotonic() - started < 2
        finally:
            redis.start()
        wait_until(lambda: walk(b.port)[0] == ["local", "remote"], timeout=10, what="the fleet's tasks again")

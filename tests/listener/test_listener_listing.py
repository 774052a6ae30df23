"""The task listing, `GET /api/v1/progress/tasks` (docs/API.md, "Task listing"), over real sockets: the page's shape,
newest-first order, paging with the cursor while tasks are created and updated, the filters, the limits and every
400. With Redis (the fleet's tasks) it is tested in tests/redis/test_listing.py."""

from __future__ import annotations

import threading
import time
import urllib.parse

import pytest

API = "/api/v1/progress"
LIST = f"{API}/tasks"
TOKEN = "list-T0ken"


def page(wire, t, **params):
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    r = wire.http(t, LIST + (f"?{query}" if query else ""))
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"tasks", "next_cursor", "count"}, body
    assert body["count"] == len(body["tasks"])
    return body


def ids(body):
    return [task["task_id"] for task in body["tasks"]]


def walk(wire, t, **params):
    """Every page from the first: (ids in order, number of pages)."""
    seen, pages, cursor = [], 0, None
    while True:
        body = page(wire, t, cursor=cursor, **params)
        seen += ids(body)
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages
        assert pages < 1000, "the cursor never ends"


def bad(wire, t, query):
    r = wire.http(t, f"{LIST}?{query}")
    assert r.status == 400 and r.error_code() == "bad_request", (query, r)
    return r.json()["error"]["message"]


def test_a_page_is_full_task_progress_documents_newest_first(wire):
    t = wire.open()
    for i in range(5):
        t.create_task_progress_sync(f"l{i}", "sdxl", "image_generation", batch_id="bb", timestamp=1_000 + i)
    t.update_progress_sync("l2", 3, 10, message="three")
    body = page(wire, t)
    assert ids(body) == ["l4", "l3", "l2", "l1", "l0"] and body["next_cursor"] is None and body["count"] == 5
    # Each entry is the task's TaskProgress, as GET /tasks/{id} and the binding show it.
    for task in body["tasks"]:
        assert task == t.get_task_progress_sync(task["task_id"]), task["task_id"]
    two = page(wire, t, limit=2)
    assert two["tasks"] == body["tasks"][:2] and two["count"] == 2 and two["next_cursor"]


def test_empty_engine_lists_nothing(wire):
    t = wire.open()
    assert page(wire, t) == {"tasks": [], "next_cursor": None, "count": 0}


def test_limit_defaults_to_100_and_goes_up_to_1000(wire):
    t = wire.open()
    for i in range(1_050):
        t.create_task_progress_sync(f"n{i:04d}", "x", timestamp=10_000 + i)
    first = page(wire, t)
    assert first["count"] == 100 and ids(first)[0] == "n1049" and ids(first)[-1] == "n0950"
    assert first["next_cursor"]
    full = page(wire, t, limit=1000)
    assert full["count"] == 1000 and ids(full) == [f"n{i:04d}" for i in range(1049, 49, -1)]
    rest = page(wire, t, limit=1000, cursor=full["next_cursor"])
    assert ids(rest) == [f"n{i:04d}" for i in range(49, -1, -1)] and rest["next_cursor"] is None
    message = bad(wire, t, "limit=1001")
    assert "1001" in message and "maximum 1000" in message


def test_ties_in_creation_time_are_ordered_by_id(wire):
    t = wire.open()
    for task_id in ("b", "a", "c", "ab"):
        t.create_task_progress_sync(task_id, "x", timestamp=5_000)
    t.create_task_progress_sync("older", "x", timestamp=4_999.999)
    seen, pages = walk(wire, t, limit=1)
    assert seen == ["c", "b", "ab", "a", "older"] and pages == 5


def test_paging_while_tasks_are_created_and_updated_repeats_and_skips_nothing(wire):
    """The cursor is a place in an order that never changes (creation time, then id): a runner creating and updating
    tasks while a client pages shows every task that existed at the start exactly once, in order. Tasks created
    meanwhile are newer than the pages already read, so they are not among the later pages (a new walk shows them
    first)."""
    t = wire.open()
    before = [f"old-{i:03d}" for i in range(300)]
    for task_id in before:
        t.create_task_progress_sync(task_id, "x")
    stop = threading.Event()
    created = []

    def runner():
        i = 0
        while not stop.is_set():
            task_id = f"new-{i:04d}"
            t.create_task_progress_sync(task_id, "x")
            created.append(task_id)
            # Updates move updated_at, never a task's place.
            t.update_progress_sync(before[i % len(before)], 1, 2)
            i += 1
            time.sleep(0.001)

    thread = threading.Thread(target=runner)
    thread.start()
    try:
        seen, cursor, pages = [], None, 0
        while True:
            body = page(wire, t, limit=7, cursor=cursor)
            seen += ids(body)
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join()
    olds = [x for x in seen if x.startswith("old-")]
    assert olds == list(reversed(before)), "every task of the start once, newest first"
    assert len(seen) == len(set(seen)), "no task twice"
    assert all(x.startswith("new-") for x in seen[: len(seen) - len(olds)]), "new tasks only ahead of the old"
    assert len(created) > 20 and pages >= 300 // 7
    # From the top again: the newest task first.
    assert ids(page(wire, t, limit=1)) == [created[-1]]


def test_filters(wire):
    t = wire.open()
    for i in range(12):
        t.create_task_progress_sync(f"f{i:02d}", "video" if i % 3 == 0 else "image",
                                    batch_id="B1" if i < 6 else None, timestamp=1_000 + i)
    t.fail_task_sync("f01", "boom")
    t.complete_task_sync("f02")
    t.complete_task_sync("f07")
    t.update_progress_sync("f04", 1, 10)
    t.create_task_progress_sync("cancel-me", "image", timestamp=900)
    t.cancel_task_sync("cancel-me", "stop")
    assert ids(page(wire, t, status="failed")) == ["f01"]
    assert ids(page(wire, t, status="completed,failed")) == ["f07", "f02", "f01"]
    assert ids(page(wire, t, status="executing")) == ["f04"]
    assert ids(page(wire, t, status="cancelled")) == ["cancel-me"]
    assert ids(page(wire, t, status="queued", template_id="video")) == ["f09", "f06", "f03", "f00"]
    assert ids(page(wire, t, template_id="video", batch_id="B1")) == ["f03", "f00"]
    assert ids(page(wire, t, batch_id="B1", status="queued,executing")) == ["f05", "f04", "f03", "f00"]
    assert ids(page(wire, t, template_id="nothing")) == []
    # Text in the id, in any case; with the other filters too.
    assert ids(page(wire, t, id_contains="F1")) == ["f11", "f10"]
    assert ids(page(wire, t, id_contains="cel-")) == ["cancel-me"]
    assert ids(page(wire, t, id_contains="f0", status="completed")) == ["f07", "f02"]
    assert ids(page(wire, t, id_contains="%")) == []
    # Filters hold across pages.
    assert walk(wire, t, template_id="image", limit=2) == (["f11", "f10", "f08", "f07", "f05", "f04", "f02", "f01",
                                                            "cancel-me"], 5)


def test_since_is_updated_at_at_or_after_it(wire):
    """`since` keeps the tasks changed since then (updated_at >= since), created before or not: "the failed tasks of
    the last hour" are those that failed in the last hour. ISO-8601 or epoch seconds, as for logs."""
    t = wire.open()
    for i in range(4):
        t.create_task_progress_sync(f"s{i}", "x", timestamp=1_000 + i)
    cut = time.time()
    # progress_update stamps with the coarse clock (a tick of up to 10 ms behind, see progress.h): wait past one.
    time.sleep(0.03)
    t.fail_task_sync("s1", "late failure")
    t.update_progress_sync("s3", 1, 4)
    assert ids(page(wire, t, since=f"{cut:.6f}")) == ["s3", "s1"]
    assert ids(page(wire, t, since=f"{cut:.6f}", status="failed")) == ["s1"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + f".{int(cut % 1 * 1000):03d}Z"
    assert ids(page(wire, t, since=iso)) == ["s3", "s1"]
    assert ids(page(wire, t, since="1970-01-01T00:16:42Z")) == ["s3", "s2", "s1"]  # 1002: s2's creation counts
    assert ids(page(wire, t, since="1002")) == ["s3", "s2", "s1"]
    assert ids(page(wire, t, since=f"{time.time() + 3600:.0f}")) == []


@pytest.mark.parametrize("query, words", [
    ("stauts=failed", ["unknown query parameter stauts", "status, template_id, batch_id, id_contains, since, limit, cursor"]),
    ("offset=10&page=2", ["unknown query parameters offset, page"]),
    ("status=done", ['"done"', "queued, executing, completed, failed, cancelled"]),
    ("status=", ['""']),
    ("status=failed,,completed", ['""']),
    ("status=Failed", ['"Failed"']),
    ("limit=0", ["1 to 1000"]),
    ("limit=-5", ["1 to 1000"]),
    ("limit=ten", ["1 to 1000"]),
    ("limit=", ["1 to 1000"]),
    ("limit=5000", ["over the maximum 1000"]),
    ("cursor=bm9wZQ", ["cursor", "next_cursor"]),
    ("cursor=", ["cursor"]),
    ("cursor=%2B%2B", ["cursor"]),
    ("since=yesterday", ["since", "ISO-8601"]),
    ("since=", ["since"]),
    ("template_id=", ["template_id"]),
    ("batch_id=", ["batch_id"]),
    ("id_contains=", ["id_contains", "1-256"]),
    ("id_contains=" + "x" * 257, ["id_contains", "1-256"]),
])
def test_bad_queries_are_400_naming_what_is_wrong(wire, query, words):
    t = wire.open()
    message = bad(wire, t, query)
    for word in words:
        assert word in message, (query, message)


def test_a_cursor_works_with_other_filters_and_on_another_engine(wire):
    """A cursor is a place in the listing's order, not a saved query: a client may change its filters between pages,
    and a cursor from one listener works on another (the fleet's listeners share the order)."""
    a, b = wire.open(), wire.open()
    for t in (a, b):
        for i in range(6):
            t.create_task_progress_sync(f"c{i}", "odd" if i % 2 else "even", timestamp=2_000 + i)
    cursor = page(wire, a, limit=2)["next_cursor"]  # after c4
    assert ids(page(wire, a, cursor=cursor)) == ["c3", "c2", "c1", "c0"]
    assert ids(page(wire, a, cursor=cursor, template_id="odd")) == ["c3", "c1"]
    assert ids(page(wire, b, cursor=cursor)) == ["c3", "c2", "c1", "c0"]


def test_listing_needs_the_token_like_every_read(wire):
    t = wire.open(auth_token=TOKEN)
    t.create_task_progress_sync("secret", "x")
    r = wire.http(t, LIST)
    assert r.status == 401 and r.error_code() == "unauthorized"
    # The token is checked before the parameters: a wrong query without the token says nothing about the tasks.
    assert wire.http(t, f"{LIST}?stauts=x").status == 401
    r = wire.http(t, f"{LIST}?token={TOKEN}&status=queued")
    assert r.status == 200 and [x["task_id"] for x in r.json()["tasks"]] == ["secret"]
    r = wire.http(t, LIST, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200 and r.json()["count"] == 1


def test_only_get(wire):
    t = wire.open()
    t.create_task_progress_sync("h", "x")
    for method in ("DELETE", "POST", "HEAD"):
        r = wire.http(t, LIST, method=method)
        assert r.status == 405 and r.headers["allow"] == "GET, OPTIONS", (method, r)

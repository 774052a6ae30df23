"""Previews across hosts: with redis_url a worker's previews are written to Redis too (the task's `previews` hash,
with the task's expiry, under a size cap), so any listener of the fleet serves the `preview_url` the worker's
state carries, until the task expires. The worker runs in its own process with no listener, as on a GPU host,
with its own temporary preview folder (removed when it closes): what a listener serves then comes from Redis."""

import json
import struct
import subprocess
import sys
import time
import zlib

from redis_support import RUNNER_PRELUDE, ProgressServer, flushed, task_key, wait_until, ws_connect, ws_until
from live_support import http  # after redis_support, which puts tests/ on the path
from progress_engine import ProgressTracker

#: Source images are 300 x 200; previews are at most 150 pixels on their longest side: 150 x 100.
SOURCE = (300, 200)
PREVIEW = (150, 100)
MILESTONES = ["25", "50", "75"]


def png_size(data: bytes):
    """(width, height) of a PNG, decoded: the signature, every chunk's CRC and the inflated image data's length
    (a filter byte and width x channels bytes per row, 8-bit gray / RGB / RGBA as the engine writes) are
    checked, so a truncated or corrupt PNG fails."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
        if kind == b"IEND":
            break
    assert header is not None and kind == b"IEND", "no IHDR or IEND"
    width, height, depth, colour = header[:4]
    assert depth == 8
    channels = {0: 1, 2: 3, 6: 4}[colour]
    assert len(zlib.decompress(idat)) == height * (1 + width * channels)
    return width, height


#: A worker: a one-stage template (overall progress = step / total) and a preview offered at every step of 8, so
#: one is taken at each of 25 / 50 / 75 %; after each, it waits until the preview is attached (a new preview_url:
#: the counter moves just before) and Redis has every write. It prints the URLs and its stats and exits (closing
#: its engine).
WORKER = """
W, H = {w}, {h}
def image(seed):
    # Detail enough for a PNG of some kB, different at each milestone.
    return bytes((x * 7 + y * 13 + seed * 31 + (x * y) % 17) % 256 for y in range(H) for x in range(W) for _ in range(3))
def settled(t):
    s = t.stats_sync()
    return s["redis_connected"] == 1 and s["redis_queue_depth"] == 0
t = ProgressTracker(throttle_ms=5, preview_max_size=150, **{config!r})
t.register_template_stages_sync("flat", [{{"name": "sampling", "weight": 1}}])
t.create_task_progress_sync({task!r}, "flat")
urls = []
for step in range(1, 9):
    t.update_progress_sync({task!r}, step, 8)
    t.update_preview_sync({task!r}, (image(step), W, H, 3))
    if step in (2, 4, 6):  # 25, 50, 75 %
        deadline = time.monotonic() + 10
        while t.get_task_progress_sync({task!r})["preview_url"] in urls + [None] and time.monotonic() < deadline:
            time.sleep(0.005)
        urls.append(t.get_task_progress_sync({task!r})["preview_url"])
        deadline = time.monotonic() + 10
        while not settled(t) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)  # past the listeners' throttle: each preview_url is fanned out on its own
t.complete_task_sync({task!r})
deadline = time.monotonic() + 10
while not settled(t) and time.monotonic() < deadline:
    time.sleep(0.005)
print(json.dumps({{"urls": urls, "stats": t.stats_sync()}}))
t.close()
"""


def run_worker(task, **config):
    """Runs WORKER in its own process; (its report, its stderr)."""
    code = RUNNER_PRELUDE + WORKER.format(w=SOURCE[0], h=SOURCE[1], task=task, config=config)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stderr}"
    return json.loads(proc.stdout), proc.stderr


def preview_urls(msgs, task):
    urls = []
    for m in msgs:
        url = m.get("type") == "progress.update" and m.get("task_id") == task and m["data"].get("preview_url")
        if url and url not in urls:
            urls.append(url)
    return urls


def milestone(url):
    """The milestone a preview URL names ("25"), or None."""
    return url and url.split("?")[0].rsplit("_", 1)[1].removesuffix(".png")


def check_png_response(r):
    assert r.status == 200, (r.status, r.headers, r.body[:300])
    assert r.headers["content-type"] == "image/png", (r.headers, r.body[:300])
    assert r.headers["cache-control"] == "public, max-age=86400, immutable"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert png_size(r.body) == PREVIEW


def test_a_workers_previews_are_served_by_any_listener_until_the_task_expires(redis):
    task = "fleet img {1}%"  # the URL carries it percent-encoded, the key escaped in its hash tag
    retention = 4
    with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server, \
            ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as other:
        ws = ws_connect(server.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": ["*"]}))
        ws_until(ws, lambda m: any(x["type"] == "subscribed" for x in m))
        report, _ = run_worker(task, redis_url=redis.url, retention_seconds=retention)
        finished = time.monotonic()
        assert report["stats"]["previews_written"] == 3 and report["stats"]["redis_previews_too_large"] == 0
        urls = report["urls"]
        names = [u.split("?")[0].rsplit("/", 1)[1] for u in urls]
        assert [milestone(u) for u in urls] == MILESTONES, urls
        assert all(u == f"/api/v1/previews/{n}?task_id=fleet%20img%20%7B1%7D%25" for u, n in zip(urls, names)), urls

        # The preview_url progress-server hands out: the milestones' (each on its own unless a busy machine delays
        # the listener past the worker's pauses), the last one with the completed state.
        msgs = ws_until(ws, lambda m: any(x.get("task_id") == task and x["data"]["status"] == "completed"
                                          for x in m if x["type"] == "progress.update"))
        seen = preview_urls(msgs, task)
        assert seen[-1] == urls[-1] and all(u in urls for u in seen), (seen, urls)
        stored = task_key("previews", task)
        assert stored == "progress:task:{fleet img %7B1%7D%25}:previews"
        assert 0 < int(redis.cli("PTTL", stored)) <= retention * 1000
        assert sorted(redis.lines("HKEYS", stored)) == sorted(names)
        for url in urls:
            check_png_response(http(server.port, url))
            check_png_response(http(other.port, url))  # another runner's listener serves it too
        assert time.monotonic() - finished < retention - 0.5, "the checks above ran past the task's retention"
        ws.close()

        # Gone with its task: the keys expire, and every listener answers 404.
        wait_until(lambda: http(server.port, urls[0]).status == 404, timeout=retention + 5,
                   what="the preview to expire with its task")
        assert time.monotonic() - finished > retention - 1
        for url in urls:
            assert http(server.port, url).status == 404 and http(other.port, url).status == 404
        assert redis.cli("EXISTS", stored) == "0" and redis.cli("EXISTS", task_key("state", task)) == "0"


def test_previews_over_the_cap_are_counted_logged_once_and_stay_on_their_engine(redis):
    with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
        report, stderr = run_worker("big", redis_url=redis.url, redis_preview_max_bytes=1000)
        stats = report["stats"]
        assert stats["previews_written"] == 3 and stats["redis_previews_too_large"] == 3
        assert stats["redis_dropped_writes"] == 0
        logged = [json.loads(line) for line in stderr.splitlines() if '"preview_too_large"' in line]
        assert len(logged) == 1, stderr
        assert logged[0]["level"] == "warning" and logged[0]["task_id"] == "big"
        assert int(logged[0]["bytes"]) > 1000 and logged[0]["redis_preview_max_bytes"] == "1000"
        assert redis.cli("EXISTS", task_key("previews", "big")) == "0"
        assert all(http(server.port, url).status == 404 for url in report["urls"])
        # The counter is on /metrics too (here progress-server's own, which refused none).
        assert "progress_redis_previews_too_large_total 0" in http(server.port, "/metrics").body.decode()


def test_a_cap_of_zero_keeps_previews_out_of_redis_and_their_urls_plain(redis):
    report, _ = run_worker("off", redis_url=redis.url, redis_preview_max_bytes=0)
    assert report["stats"]["previews_written"] == 3 and report["stats"]["redis_previews_too_large"] == 0
    assert all("?" not in url for url in report["urls"]), report["urls"]
    assert redis.cli("EXISTS", task_key("previews", "off")) == "0"


def test_redis_down_previews_still_go_to_disk_and_reach_redis_once_it_is_back(redis, tmp_path):
    redis.stop()
    preview_dir = tmp_path / "previews"
    with ProgressTracker(redis_url=redis.url, preview_dir=str(preview_dir), preview_max_size=150,
                         throttle_ms=5) as t:
        t.register_template_stages_sync("flat", [{"name": "sampling", "weight": 1}])
        t.create_task_progress_sync("offline", "flat")
        pixels = (bytes(range(256)) * (SOURCE[0] * SOURCE[1] * 3 // 256 + 1))[:SOURCE[0] * SOURCE[1] * 3]
        started = time.monotonic()
        for step in range(1, 9):
            t.update_progress_sync("offline", step, 8)
            t.update_preview_sync("offline", (pixels, SOURCE[0], SOURCE[1], 3))
            if step in (2, 4, 6):
                wait_until(lambda: milestone(t.get_task_progress_sync("offline")["preview_url"]) == str(step * 25 // 2),
                           what="the preview")
        assert time.monotonic() - started < 5
        stats = t.stats_sync()
        assert stats["redis_connected"] == 0 and stats["previews_failed"] == 0 and stats["previews_dropped"] == 0
        files = sorted(p.name for p in preview_dir.glob("*.png"))
        assert len(files) == 3
        for f in files:
            assert png_size((preview_dir / f).read_bytes()) == PREVIEW
        url = t.get_task_progress_sync("offline")["preview_url"]
        assert url.endswith("?task_id=offline")

        redis.start()
        flushed(t)
        assert sorted(redis.lines("HKEYS", task_key("previews", "offline"))) == files
        with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
            check_png_response(http(server.port, url))


def test_the_runners_own_listener_serves_both_url_forms_from_its_folder(redis, tmp_path):
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0", preview_dir=str(tmp_path), preview_max_size=150,
                         throttle_ms=5) as t:
        t.register_template_stages_sync("flat", [{"name": "sampling", "weight": 1}])
        t.create_task_progress_sync("local", "flat")
        t.update_progress_sync("local", 1, 2)
        pixels = bytes(SOURCE[0] * SOURCE[1] * 3)
        t.update_preview_sync("local", (pixels, SOURCE[0], SOURCE[1], 3))
        url = wait_until(lambda: t.get_task_progress_sync("local")["preview_url"], what="the preview")
        assert url.endswith("?task_id=local")
        flushed(t)
        redis.cli("DEL", task_key("previews", "local"))  # the folder answers, not Redis
        check_png_response(http(t.port, url))
        check_png_response(http(t.port, url.split("?")[0]))  # the path alone, as URLs without Redis are


def test_no_preview_of_an_expired_task_even_if_its_previews_key_outlived_it(redis):
    with ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url) as server:
        report, _ = run_worker("short", redis_url=redis.url)
        url = report["urls"][0]
        check_png_response(http(server.port, url))
        redis.cli("DEL", task_key("state", "short"))
        assert http(server.port, url).status == 404
        assert redis.cli("EXISTS", task_key("previews", "short")) == "1"
        # A task id that is not the preview's, or none, finds nothing either.
        redis.cli("SET", task_key("state", "other"), "{}")
        assert http(server.port, url.split("?")[0] + "?task_id=other").status == 404
        assert http(server.port, url.split("?")[0]).status == 404

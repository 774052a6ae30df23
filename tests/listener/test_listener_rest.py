"""The REST API of SPEC §8 (every route and its error statuses), auth (SPEC §14) and /metrics, with
http.client, plus raw sockets where a client library would normalise the request."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

import pytest
from progress_engine import StageStatus

API = "/api/v1/progress"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))


def test_task_route(wire):
    t = wire.open()
    t.create_task_progress_sync("rest-1", "sdxl", "image_generation", quality="high", batch_id="bb")
    t.update_progress_sync("rest-1", 3, 4, message="sampling")
    r = wire.http(t, f"{API}/tasks/rest-1")
    assert r.status == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body == t.get_task_progress_sync("rest-1")
    assert body["overall_progress"] == 72.5 and body["quality"] == "high" and body["batch_id"] == "bb"

    r = wire.http(t, f"{API}/tasks/no-such-task")
    assert r.status == 404 and r.error_code() == "not_found"
    assert "no-such-task" in r.json()["error"]["message"]


def test_task_ids_are_url_decoded(wire):
    t = wire.open()
    t.create_task_progress_sync("with space:and/slash", "x")
    r = wire.http(t, f"{API}/tasks/" + urllib.parse.quote("with space:and/slash", safe=""))
    assert r.status == 200, r
    assert r.json()["task_id"] == "with space:and/slash"


def test_logs_route_since_and_level(wire):
    t = wire.open()
    t.create_task_progress_sync("lg", "sdxl", "image_generation")
    t.log_sync("lg", "debug", "d1")
    t.log_sync("lg", "info", "i1")
    time.sleep(0.05)
    cut = time.time()
    time.sleep(0.05)
    t.log_sync("lg", "warning", "w1")
    t.log_sync("lg", "error", "e1")

    def messages(query=""):
        r = wire.http(t, f"{API}/tasks/lg/logs{query}")
        assert r.status == 200, r
        body = r.json()
        assert body["task_id"] == "lg"
        for entry in body["logs"]:
            assert set(entry) >= {"timestamp", "level", "message", "stage"}
        return [e["message"] for e in body["logs"]]

    assert messages() == ["d1", "i1", "w1", "e1"]
    assert messages("?level=warning") == ["w1", "e1"]
    assert messages("?level=info") == ["i1", "w1", "e1"]
    assert messages(f"?since={cut:.3f}") == ["w1", "e1"]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + f".{int(cut % 1 * 1000):03d}Z"
    assert messages(f"?since={iso}") == ["w1", "e1"]
    assert messages("?since=2000-01-01T00:00:00Z&level=error") == ["e1"]
    assert messages(f"?since={cut + 3600:.0f}") == []


@pytest.mark.parametrize("query", [
    "since=yesterday", "since=", "since=nan", "since=inf", "since=2024-13-45T00:00:00Z",
    "level=loud", "level=", "level=WARNINGS",
])
def test_logs_route_bad_query_values(wire, query):
    t = wire.open()
    t.create_task_progress_sync("lg", "sdxl", "image_generation")
    r = wire.http(t, f"{API}/tasks/lg/logs?{query}")
    assert r.status == 400 and r.error_code() == "bad_request", (query, r)


def test_logs_and_history_of_unknown_task_are_404(wire):
    t = wire.open()
    for suffix in ("logs", "history"):
        r = wire.http(t, f"{API}/tasks/ghost/{suffix}")
        assert r.status == 404 and r.error_code() == "not_found", (suffix, r)


def test_history_route_and_after_seq(wire):
    t = wire.open()
    t.create_task_progress_sync("hs", "sdxl", "image_generation")
    t.update_stage_sync("hs", 1, StageStatus.IN_PROGRESS, 0.5, "loading")
    t.update_stage_sync("hs", 2)
    t.complete_task_sync("hs")
    r = wire.http(t, f"{API}/tasks/hs/history")
    assert r.status == 200
    body = r.json()
    assert body["task_id"] == "hs"
    events = body["events"]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["type"] for e in events] == ["created", "stage", "stage", "completed"]
    assert set(events[0]) >= {"seq", "timestamp", "type", "stage", "progress", "overall_progress", "status", "message"}
    assert events[1]["message"] == "loading" and events[1]["stage"] == 1 and events[1]["progress"] == 0.5
    assert events[-1]["status"] == "completed" and events[-1]["overall_progress"] == 100
    assert [e["seq"] for e in wire.http(t, f"{API}/tasks/hs/history?after_seq=2").json()["events"]] == [3, 4]
    assert wire.http(t, f"{API}/tasks/hs/history?after_seq=4").json()["events"] == []


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "", "99999999999999999999999", "0x10"])
def test_history_route_bad_after_seq(wire, value):
    t = wire.open()
    t.create_task_progress_sync("hs", "sdxl", "image_generation")
    r = wire.http(t, f"{API}/tasks/hs/history?after_seq={value}")
    assert r.status == 400 and r.error_code() == "bad_request", (value, r)


def test_batch_route(wire):
    t = wire.open()
    t.create_task_progress_sync("b-a", "sdxl", "image_generation", batch_id="B1")
    t.create_task_progress_sync("b-b", "sdxl", "image_generation", batch_id="B1")
    t.create_task_progress_sync("solo", "sdxl", "image_generation")
    t.fail_task_sync("b-b", "OOM")
    r = wire.http(t, f"{API}/batch/B1")
    assert r.status == 200
    body = r.json()
    assert body == t.get_batch_progress_sync("B1")
    assert body["batch_id"] == "B1" and body["total_tasks"] == 2 and body["failed_tasks"] == 1
    assert set(body["tasks"]) == {"b-a", "b-b"} and body["tasks"]["b-b"]["status"] == "failed"
    body = wire.http(t, f"{API}/batch/B1?task_ids=solo,b-a,ghost").json()
    assert body["total_tasks"] == 2 and set(body["tasks"]) == {"solo", "b-a"} and body["missing"] == ["ghost"]
    body = wire.http(t, f"{API}/batch/empty").json()
    assert body["total_tasks"] == 0 and body["missing"] == []


def test_bad_ids_are_400(wire):
    t = wire.open()
    long_id = "a" * 257
    for path in (f"{API}/tasks/{long_id}", f"{API}/tasks/{long_id}/logs", f"{API}/tasks/{long_id}/history",
                 f"{API}/batch/{long_id}", f"{API}/tasks/bad%01id", f"{API}/batch/a/b"):
        r = wire.http(t, path)
        assert r.status == 400 and r.error_code() == "bad_request", (path[:80], r)
    # 256 characters is still a valid id: an unknown task, not a bad request.
    assert wire.http(t, f"{API}/tasks/{'a' * 256}").status == 404


def test_unknown_routes_are_404_json(wire):
    t = wire.open()
    for path in ("/api/v1/progress", "/api/v1/progress/task", "/api/v2/progress/tasks/x", "/favicon.ico",
                 "/api/v1/progress/ws"):
        r = wire.http(t, path)
        assert r.status == 404 and r.error_code() == "not_found", (path, r)


def test_dashboard_at_root(wire):
    """SPEC §8: GET / serves the live dashboard (config `dashboard`, default true). Its files hold no data,
    so they are served without a token; `dashboard: false` turns them off."""
    t = wire.open(auth_token="tok")
    r = wire.http(t, "/")
    assert r.status == 200, (r.status, r.body[:200])
    assert r.headers["content-type"].startswith("text/html") and b"<html" in r.body.lower()
    off = wire.open(dashboard=False)
    r = wire.http(off, "/")
    assert r.status == 404 and r.error_code() == "not_found"


def test_healthz(wire):
    t = wire.open()
    r = wire.http(t, "/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "PUT", "POST"])
def test_non_get_methods_are_405(wire, method):
    """405 with `Allow` (GET, and OPTIONS for the CORS preflight) and a JSON error, on every route, with
    or without a request body; the request (its body unread) does not keep the connection. Raw socket, one write
    per request."""
    t = wire.open()
    t.create_task_progress_sync("m", "x")
    for path in (f"{API}/tasks/m", "/healthz", "/metrics", f"{API}/batch/b"):
        for body in (b"", b'{"status":"completed"}'):
            request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            try:
                data = wire.raw_exchange(t, request, timeout=3)
            except AssertionError as e:
                raise AssertionError(f"{method} {path} with a {len(body)}-byte body: {e}") from None
            r = wire.parse_response(data)
            assert r.status == 405, (method, path, r)
            assert r.headers.get("allow") == "GET, OPTIONS", r.headers
            assert len(r.body) == int(r.headers["content-length"]) > 0, (method, path, len(body), r)
            assert r.error_code() == "method_not_allowed"
    assert t.get_task_progress_sync("m")["status"] == "queued"
    wire.assert_alive(t)


def test_head_response_has_no_body(wire):
    """A HEAD response must not carry a body (RFC 9110 §9.3.2): on a keep-alive connection its bytes
    would be read as the start of the next response. Raw socket: http.client hides stray bytes by
    dropping its read buffer between responses."""
    t = wire.open()
    s = wire.raw_socket(t)
    s.sendall(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.2)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    s.settimeout(3)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 405"), head
    assert rest.startswith(b"HTTP/1.1 200"), f"bytes after the HEAD response's headers: {rest[:120]!r}"


def test_keep_alive_serves_several_requests_on_one_connection(wire):
    t = wire.open()
    t.create_task_progress_sync("ka", "x")
    conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=3)
    try:
        for path, status in [("/healthz", 200), (f"{API}/tasks/ka", 200), (f"{API}/tasks/none", 404),
                             (f"{API}/tasks/ka/history?after_seq=x", 400), (f"{API}/tasks/ka", 200)]:
            conn.request("GET", path)
            r = conn.getresponse()
            body = json.loads(r.read())
            assert r.status == status, (path, body)
    finally:
        conn.close()


def test_large_response_body(wire):
    """A response larger than one write chunk (32 KiB) arrives whole: 1000 log entries of 200 bytes."""
    t = wire.open()
    t.create_task_progress_sync("big", "x")
    for i in range(1000):
        t.log_sync("big", "info", f"{i:05d}" + "x" * 195)
    r = wire.http(t, f"{API}/tasks/big/logs")
    assert r.status == 200 and len(r.body) > 200_000
    logs = r.json()["logs"]
    assert [e["message"][:5] for e in logs] == [f"{i:05d}" for i in range(1000)]


# ---- previews ----------------------------------------------------------------------------------------


@pytest.fixture
def previews(tmp_path):
    folder = tmp_path / "previews"
    folder.mkdir()
    (folder / "task-1_50.png").write_bytes(PNG)
    (folder / ".hidden.png").write_bytes(PNG)
    (folder / "notes.txt").write_bytes(b"text")
    (tmp_path / "secret.png").write_bytes(b"SECRET-OUTSIDE")
    return folder


def test_preview_served_by_exact_name(wire, previews):
    t = wire.open(preview_dir=str(previews))
    r = wire.http(t, "/api/v1/previews/task-1_50.png")
    assert r.status == 200 and r.body == PNG
    assert r.headers["content-type"] == "image/png"
    for name in ("missing.png", ".hidden.png", "notes.txt", "task-1_50.PNG", "task-1_50.png.bak", "task-1_50"):
        r = wire.http(t, f"/api/v1/previews/{name}")
        assert r.status == 404 and r.error_code() == "not_found", (name, r)


def test_preview_without_preview_dir_is_404(wire):
    t = wire.open()
    r = wire.http(t, "/api/v1/previews/x.png")
    assert r.status == 404 and r.error_code() == "not_found"


@pytest.mark.parametrize("target", [
    "/api/v1/previews/../secret.png",
    "/api/v1/previews/../../secret.png",
    "/api/v1/previews/%2e%2e/secret.png",
    "/api/v1/previews/%2E%2E%2Fsecret.png",
    "/api/v1/previews/..%2fsecret.png",
    "/api/v1/previews/..%5csecret.png",
    "/api/v1/previews/....//secret.png",
    "/api/v1/previews/%252e%252e%252fsecret.png",
    "/api/v1/previews/ABSOLUTE",
    "/api/v1/previews/ABSOLUTE_ENCODED",
    "/api/v1/previews//etc/passwd",
    "/api/v1/previews/%2Fetc%2Fpasswd",
    "/api/v1/previews/task-1_50.png%00.png",
])
def test_preview_path_traversal_is_refused(wire, previews, target):
    """Sent byte for byte over a raw socket, so no client normalises the `..` away."""
    t = wire.open(preview_dir=str(previews))
    secret = previews.parent / "secret.png"
    target = target.replace("ABSOLUTE_ENCODED", urllib.parse.quote(str(secret), safe="")).replace(
        "ABSOLUTE", str(secret).lstrip("/"))
    data = wire.raw_exchange(t, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert b"SECRET-OUTSIDE" not in data and b"root:" not in data, data[:300]
    if data:  # no answer at all (the connection dropped) is a refusal too
        r = wire.parse_response(data)
        assert r.status in (400, 403, 404), (target, r)
    wire.assert_alive(t)


def test_preview_too_large_is_413(wire, previews):
    t = wire.open(preview_dir=str(previews))
    with open(previews / "huge.png", "wb") as f:  # sparse: 33 MiB without writing them
        f.truncate(33 << 20)
    r = wire.http(t, "/api/v1/previews/huge.png", timeout=10)
    assert r.status == 413 and r.error_code() == "too_large"
    wire.assert_alive(t)


# ---- auth ---------------------------------------------------------------------------------------------

TOKEN = "s3cr3t-T0ken"
PROTECTED = [f"{API}/tasks/at", f"{API}/tasks/at/logs", f"{API}/tasks/at/history", f"{API}/batch/B",
             f"{API}/tasks", f"{API}/tasks?status=queued", "/api/v1/previews/task-1_50.png", "/metrics", "/nowhere"]


def test_auth_required_on_every_route_but_healthz(wire, previews):
    t = wire.open(auth_token=TOKEN, preview_dir=str(previews))
    t.create_task_progress_sync("at", "x", batch_id="B")
    for path in PROTECTED:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"bearer{TOKEN}"}):
            r = wire.http(t, path, headers=headers)
            assert r.status == 401, (path, headers, r)
            assert r.error_code() == "unauthorized"
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), r.headers
        sep = "&" if "?" in path else "?"
        assert wire.http(t, f"{path}{sep}token=wrong").status == 401, path
    assert wire.http(t, "/healthz").status == 200
    assert wire.http(t, "/healthz", headers={"Authorization": "Bearer wrong"}).status == 200


def test_auth_with_bearer_header_or_token_query(wire, previews):
    t = wire.open(auth_token=TOKEN, preview_dir=str(previews))
    t.create_task_progress_sync("at", "x", batch_id="B")
    expected = {f"{API}/tasks/at": 200, f"{API}/tasks/at/logs": 200, f"{API}/tasks/at/history": 200,
                f"{API}/batch/B": 200, f"{API}/tasks": 200, "/api/v1/previews/task-1_50.png": 200, "/metrics": 200}
    for path, status in expected.items():
        assert wire.http(t, path, headers={"Authorization": f"Bearer {TOKEN}"}).status == status, path
        assert wire.http(t, f"{path}?token={TOKEN}").status == status, path
    r = wire.http(t, f"{API}/tasks/at/logs?level=info&token={TOKEN}")
    assert r.status == 200 and r.json()["task_id"] == "at"


def test_auth_token_with_url_special_characters(wire):
    token = "a+b/c=d&e%f"
    t = wire.open(auth_token=token)
    assert wire.http(t, "/metrics", headers={"Authorization": f"Bearer {token}"}).status == 200
    assert wire.http(t, "/metrics?token=" + urllib.parse.quote(token, safe="")).status == 200
    assert wire.http(t, "/metrics?token=a%2Bb").status == 401


def test_websocket_auth(wire):
    t = wire.open(auth_token=TOKEN)

    async def code_for(**kwargs):
        async with wire.connect(t, "auth", **kwargs) as ws:
            code, got = await wire.closed_with(ws, 3)
            return code, got

    async def established(**kwargs):
        async with wire.connect(t, "auth", **kwargs) as ws:
            await wire.established(ws)
            assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}

    async def scenario():
        for kwargs in ({}, {"token": "wrong"}, {"headers": {"Authorization": "Bearer wrong"}},
                       {"headers": {"Authorization": TOKEN}}):
            code, got = await code_for(**kwargs)
            assert code == 4401 and got == [], (kwargs, code, got)
        await established(token=TOKEN)
        await established(headers={"Authorization": f"Bearer {TOKEN}"})

    wire.run(scenario())
    m = wire.metrics(t, token=TOKEN)
    assert m["progress_connections"] == 0


# ---- metrics ------------------------------------------------------------------------------------------


def test_metrics_counters_move(wire):
    t = wire.open()
    r = wire.http(t, "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.body.decode()
    assert "# TYPE progress_messages_sent_total counter" in text
    assert "# TYPE progress_connections gauge" in text
    before = wire.metrics(t)
    t.create_task_progress_sync("mt", "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "m") as ws:
            await wire.established(ws)
            await wire.request(ws, {"type": "subscribe", "task_ids": ["mt", "other"]}, "subscribed")
            await wire.recv(ws)
            during = wire.metrics(t)
            await wire.request(ws, "not json", "pong")
            t.update_stage_sync("mt", 1)
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3)
            await wire.request(ws, {"type": "ping"}, "pong")
            return during

    during = wire.run(scenario())
    after = wire.wait_metric(t, "progress_connections", lambda v: v == 0)
    assert after == 0
    after = wire.metrics(t)
    assert during["progress_connections"] == before["progress_connections"] + 1
    assert during["progress_subscriptions"] == 2 and after["progress_subscriptions"] == 0
    assert after["progress_connections_opened_total"] == before["progress_connections_opened_total"] + 1
    # established, subscribed, state, error, update, pong
    assert after["progress_messages_sent_total"] >= before["progress_messages_sent_total"] + 6
    assert after["progress_messages_received_total"] == before["progress_messages_received_total"] + 3
    assert after["progress_invalid_messages_total"] == before["progress_invalid_messages_total"] + 1
    assert after["progress_http_requests_total"] >= before["progress_http_requests_total"] + 2
    assert after["progress_fanouts_total"] >= before["progress_fanouts_total"] + 1
    assert after["progress_updates_received_total"] >= before["progress_updates_received_total"] + 1
    assert after["progress_tasks"] == 1


def test_many_concurrent_http_requests(wire):
    """400 connections send their request at once (more than libwebsockets' 256 header slots): every
    one is answered."""
    import socket

    t = wire.open()
    t.create_task_progress_sync("busy", "x")
    socks = [socket.create_connection(("127.0.0.1", t.port), timeout=10) for _ in range(400)]
    try:
        for i, s in enumerate(socks):
            path = "/healthz" if i % 2 else f"{API}/tasks/busy"
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        statuses = []
        for s in socks:
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            statuses.append(wire.parse_response(data).status)
    finally:
        for s in socks:
            s.close()
    assert statuses == [200] * 400


def test_get_with_a_request_body_gets_the_whole_response(wire):
    """A body on a GET is ignored, but the response still arrives whole (headers and body)."""
    t = wire.open()
    for keep_alive in (False, True):
        s = wire.raw_socket(t)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                  + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\nhello")
        data = b""
        s.settimeout(3)
        try:
            while not data.endswith(b'{"status":"ok"}'):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            pass
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b'{"status":"ok"}'), (keep_alive, data)


def test_pipelined_requests_are_answered_in_order(wire):
    t = wire.open()
    data = wire.raw_exchange(t, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"GET /api/v1/progress/tasks/zz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first = wire.parse_response(data)
    assert first.status == 200 and first.json() == {"status": "ok"}
    rest = data.split(b'{"status":"ok"}', 1)[1]
    second = wire.parse_response(rest)
    assert second.status == 404 and second.error_code() == "not_found"

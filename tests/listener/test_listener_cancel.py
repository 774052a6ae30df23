"""Cancel over the wire (docs/API.md, "Cancel"): REST `POST /api/v1/progress/tasks/{id}/cancel` and the WebSocket
`cancel` message against a real listener, with and without auth_token; what subscribers see; the runner's side
through the binding (its own tests are in bindings/python/tests/test_cancel.py)."""

import json
import time

import pytest

API = "/api/v1/progress"
TOKEN = "s3cret"


def cancel_path(task_id, token=None):
    return f"{API}/tasks/{task_id}/cancel" + (f"?token={token}" if token else "")


def post(wire, t, task_id, body=None, token=None, headers=None):
    hdrs = {"Content-Type": "application/json", **(headers or {})} if body is not None else dict(headers or {})
    return wire.http(t, cancel_path(task_id, token), "POST", headers=hdrs, body=body)


@pytest.mark.parametrize("token", [None, TOKEN])
def test_rest_statuses(wire, token):
    t = wire.open(**({"auth_token": token} if token else {}))
    t.create_task_progress_sync("run", "tpl")
    t.create_task_progress_sync("done", "tpl")
    t.complete_task_sync("done")

    r = post(wire, t, "run", json.dumps({"reason": "user pressed stop"}).encode(), token=token)
    assert r.status == 202, r
    assert r.json() == {"task_id": "run", "cancel_requested": True}
    task = t.get_task_progress_sync("run")
    assert task["cancel_requested"] is True and task["cancel_reason"] == "user pressed stop"
    assert task["status"] == "queued"  # only the runner changes the status
    # Asked again (no body this time): accepted, the first reason kept, nothing recorded twice.
    seq = task["seq"]
    assert post(wire, t, "run", token=token).status == 202
    assert t.get_task_progress_sync("run")["seq"] == seq
    assert t.get_task_progress_sync("run")["cancel_reason"] == "user pressed stop"

    r = post(wire, t, "nope", token=token)
    assert r.status == 404 and r.error_code() == "not_found", r
    r = post(wire, t, "done", token=token)
    assert r.status == 409 and r.error_code() == "conflict", r
    assert "completed" in r.json()["error"]["message"]
    assert t.get_task_progress_sync("done")["cancel_requested"] is False

    for body in (b"{", b"[]", b'{"reason": 3}', b'{"reson": "typo"}', json.dumps({"reason": "x" * 1025}).encode()):
        r = post(wire, t, "run", body, token=token)
        assert r.status == 400 and r.error_code() == "bad_request", (body, r)
    r = post(wire, t, "run", b'{"reason": "' + b"x" * 20000 + b'"}', token=token)
    assert r.status == 413 and r.error_code() == "too_large", r

    for method in ("GET", "PUT", "DELETE"):
        r = wire.http(t, cancel_path("run", token), method)
        assert r.status == 405 and r.headers["allow"] == "POST, OPTIONS", (method, r)
    # The task's other routes are GET only, as before (and OPTIONS, which every path answers for CORS).
    r = wire.http(t, f"{API}/tasks/run" + (f"?token={token}" if token else ""), "POST", body=b"{}")
    assert r.status == 405 and r.headers["allow"] == "GET, OPTIONS", r
    wire.assert_alive(t, token)


def test_rest_needs_the_token(wire):
    t = wire.open(auth_token=TOKEN)
    t.create_task_progress_sync("run", "tpl")
    for kwargs in ({}, {"token": "wrong"}, {"headers": {"Authorization": "Bearer wrong"}}):
        r = post(wire, t, "run", b'{"reason": "no"}', **kwargs)
        assert r.status == 401 and r.error_code() == "unauthorized", (kwargs, r)
        assert r.headers.get("www-authenticate") == "Bearer"
    # Refused before anything is looked up: an unknown task is 401 too, not 404.
    assert post(wire, t, "nope").status == 401
    assert t.get_task_progress_sync("run")["cancel_requested"] is False
    assert post(wire, t, "run", headers={"Authorization": f"Bearer {TOKEN}"}).status == 202
    assert t.cancel_requested("run")


def test_keep_alive_connection_serves_requests_after_a_body(wire):
    """The listener reads a POST's body before it answers, so the next request on the same connection is parsed
    from where the body ended."""
    t = wire.open()
    t.create_task_progress_sync("a", "tpl")
    body = b'{"reason": "one"}'
    data = (f"POST {cancel_path('a')} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    data += f"GET {API}/tasks/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    out = wire.raw_exchange(t, data)
    first, _, second = out.partition(b"HTTP/1.1 200")
    assert first.startswith(b"HTTP/1.1 202"), out[:300]
    task = json.loads(second.partition(b"\r\n\r\n")[2])
    assert task["cancel_requested"] is True and task["cancel_reason"] == "one"


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_a_chunked_body_is_refused_and_the_connection_closed(wire, method):
    """A chunked body (no Content-Length) was taken for none: the cancel was recorded without its reason (202 even
    for a body that is no JSON), and the body's bytes were then read as the next request, which got no answer."""
    t = wire.open()
    t.create_task_progress_sync("a", "tpl")
    body = b'{"reason": "chunky"}'
    path = cancel_path("a") if method == "POST" else f"{API}/tasks/a"
    data = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    data += f"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    out = wire.raw_exchange(t, data)  # asserts the listener closes the connection
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411"), out[:300]
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    error = json.loads(rest[:length])
    assert error["error"]["code"] == "length_required" and "Content-Length" in error["error"]["message"], error
    assert out.count(b"HTTP/1.1") == 1, out  # the pipelined request is not answered from the body's bytes
    assert t.get_task_progress_sync("a")["cancel_requested"] is False


@pytest.mark.parametrize("token", [None, TOKEN])
def test_websocket_cancel(wire, token):
    t = wire.open(**({"auth_token": token} if token else {}))
    t.create_task_progress_sync("w", "tpl")
    t.create_task_progress_sync("done", "tpl")
    t.fail_task_sync("done", "boom")

    async def scenario():
        async with wire.connect(t, "canceller", token=token) as ws:
            await wire.subscribed(ws, ["w"])
            seen = []
            reply = await wire.request(ws, {"type": "cancel", "task_id": "w", "reason": "from the page"},
                                       "cancel.accepted", seen=seen)
            assert reply == {"type": "cancel.accepted", "task_id": "w"}
            # The subscriber gets the new state at once (an urgent update), with the request in it.
            update = await wire.recv_until(
                ws, lambda m: m["type"] == "progress.update" and m["data"]["cancel_requested"], timeout=2, seen=seen)
            assert update["data"]["cancel_reason"] == "from the page"
            log = await wire.recv_until(ws, lambda m: m["type"] == "task.log", timeout=2, seen=seen)
            assert log["entry"]["message"].startswith("cancel requested (from the page)")
            assert (await wire.request(ws, {"type": "cancel", "task_id": "w"}, "cancel.accepted"))["task_id"] == "w"
            for message, code in (({"type": "cancel", "task_id": "nope"}, "not_found"),
                                  ({"type": "cancel", "task_id": "done"}, "conflict"),
                                  ({"type": "cancel"}, "invalid_message"),
                                  ({"type": "cancel", "task_id": 7}, "invalid_message"),
                                  ({"type": "cancel", "task_id": "w", "reason": ["x"]}, "invalid_message"),
                                  ({"type": "cancel", "task_id": "w", "reason": "x" * 1025}, "invalid_message")):
                error = await wire.request(ws, message, "cancel.accepted")
                assert error["type"] == "error" and error["code"] == code, (message, error)
                assert error["message"]
            # The runner answers: subscribers see the task cancelled and the request gone.
            t.cancel_task_sync("w", "from the page")
            final = await wire.recv_until(ws, lambda m: m["type"] == "progress.update"
                                          and m["data"]["status"] == "cancelled", timeout=2)
            assert final["data"]["cancel_requested"] is False and final["data"]["error"] == "from the page"

    wire.run(scenario())


def test_websocket_needs_no_token_of_its_own_but_the_connection_does(wire):
    """A WebSocket proves the token when it opens (4401 otherwise), so `cancel` on an open connection is allowed."""
    t = wire.open(auth_token=TOKEN)
    t.create_task_progress_sync("w", "tpl")

    async def scenario():
        async with wire.connect(t, "no-token") as ws:
            code, _ = await wire.closed_with(ws)
            assert code == 4401
        async with wire.connect(t, "with-token", token=TOKEN) as ws:
            await wire.established(ws)
            assert (await wire.request(ws, {"type": "cancel", "task_id": "w"}, "cancel.accepted"))["task_id"] == "w"

    wire.run(scenario())
    assert t.cancel_requested("w")


def test_the_request_is_urgent_despite_the_throttle(wire):
    """A cancel request is not held back by throttle_ms, even right after a throttled step."""
    t = wire.open(throttle_ms=5000)
    t.create_task_progress_sync("slow", "tpl")

    async def scenario():
        async with wire.connect(t, "watcher") as ws:
            await wire.subscribed(ws, ["slow"])
            t.update_progress_sync("slow", 1, 10, message="one")  # enters the main stage: sent at once
            await wire.recv_until(ws, lambda m: m["type"] == "progress.update" and m["data"]["current_stage"] > 0)
            t.update_progress_sync("slow", 2, 10, message="two")  # throttled for 5 s
            start = time.monotonic()
            assert post(wire, t, "slow").status == 202
            update = await wire.recv_until(ws, lambda m: m["type"] == "progress.update"
                                           and m["data"]["cancel_requested"], timeout=2)
            assert time.monotonic() - start < 1.0
            assert update["data"]["stages"][str(update["data"]["current_stage"])]["message"] == "two"

    wire.run(scenario())


def test_unanswered_request_is_warned_about_once_and_stands(wire):
    t = wire.open(cancel_timeout_seconds=0.3)
    t.create_task_progress_sync("stubborn", "tpl")
    assert post(wire, t, "stubborn", b'{"reason": "please"}').status == 202

    def warnings():
        return [e for e in t.get_logs_sync("stubborn")["logs"] if "is not answered" in e["message"]]

    deadline = time.monotonic() + 5
    while not warnings() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # a few more maintenance rounds
    found = warnings()
    assert len(found) == 1 and found[0]["level"] == "warning", t.get_logs_sync("stubborn")
    task = t.get_task_progress_sync("stubborn")
    assert task["cancel_requested"] is True and task["status"] == "queued"
    # The runner can still answer late.
    t.update_progress_sync("stubborn", 1, 2, message="still going")
    t.cancel_task_sync("stubborn", "please")
    assert t.get_task_progress_sync("stubborn")["status"] == "cancelled"

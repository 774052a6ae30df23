"""Bad input over the wire (SPEC §7, §14): every rejection is a clear error or a close, and the engine
lives on afterwards (checked with a WebSocket ping, /healthz and a REST lookup)."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest

BAD_MESSAGES = [
    # (what the client sends, the error code it gets back)
    ("{", "invalid_json"),
    ("", "invalid_json"),
    ("nul", "invalid_json"),
    ('{"type":"ping"} trailing', "invalid_json"),
    ('{"type":"ping",}', "invalid_json"),
    ('"\\ud800"', "invalid_json"),
    ("[" * 100 + "]" * 100, "invalid_json"),
    ("[" * 30000 + "]" * 30000, "invalid_json"),
    ('{"a":' * 10000 + "1" + "}" * 10000, "invalid_json"),
    ("[]", "invalid_message"),
    ('{"type":"subscribe","task_ids":[]}', "invalid_message"),
    ('"subscribe"', "invalid_message"),
    ("42", "invalid_message"),
    ("null", "invalid_message"),
    ("{}", "invalid_message"),
    ('{"type":5}', "invalid_message"),
    ('{"type":null}', "invalid_message"),
    ('{"type":["ping"]}', "invalid_message"),
    ('{"type":"nope"}', "unknown_type"),
    ('{"type":"PING"}', "unknown_type"),
    ('{"type":""}', "unknown_type"),
    ('{"type":"subscribe"}', "invalid_message"),
    ('{"type":"subscribe","task_ids":"a"}', "invalid_message"),
    ('{"type":"subscribe","task_ids":[1,2]}', "invalid_message"),
    ('{"type":"subscribe","task_ids":[null]}', "invalid_message"),
    ('{"type":"subscribe","task_ids":[""]}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["' + "x" * 257 + '"]}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["a\\u0001b"]}', "invalid_message"),
    ('{"type":"subscribe","task_ids":{"a":1}}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["a"],"resume":[1]}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["a"],"resume":{"a":-1}}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["a"],"resume":{"a":"3"}}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["a"],"resume":{"a":1.5}}', "invalid_message"),
    ('{"type":"subscribe","task_ids":["a"],"resume":{"a":1e300}}', "invalid_message"),
    ('{"type":"unsubscribe"}', "invalid_message"),
    ('{"type":"unsubscribe","task_ids":[7]}', "invalid_message"),
    ('{"type":"get_progress"}', "invalid_message"),
    ('{"type":"get_progress","task_id":5}', "invalid_message"),
    ('{"type":"get_progress","task_id":""}', "invalid_message"),
    ('{"type":"get_progress","task_id":"ghost"}', "not_found"),
    ('{"type":"get_batch_progress"}', "invalid_message"),
    ('{"type":"get_batch_progress","batch_id":3}', "invalid_message"),
    ('{"type":"get_batch_progress","batch_id":""}', "invalid_message"),
    ('{"type":"get_batch_progress","batch_id":"b","task_ids":"a,b"}', "invalid_message"),
    ('{"type":"get_batch_progress","batch_id":"b","task_ids":[1]}', "invalid_message"),
]


def test_bad_messages_get_errors_and_the_connection_lives_on(wire):
    t = wire.open()
    t.create_task_progress_sync("a", "sdxl", "image_generation")

    async def scenario():
        async with wire.connect(t, "bad") as ws:
            await wire.established(ws)
            wrong = []
            for text, code in BAD_MESSAGES:
                reply = await wire.request(ws, text, "error")
                if reply.get("type") != "error" or reply.get("code") != code or not reply.get("message"):
                    wrong.append((text[:60], code, reply))
                assert set(reply) == {"type", "code", "message"}, reply
                # The connection still works after each.
                assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}, text[:60]
            assert wrong == [], "\n".join(map(repr, wrong))
            # Nothing was subscribed by the rejected subscribes.
            t.update_stage_sync("a", 1)
            assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}
            await wire.request(ws, {"type": "get_progress", "task_id": "a"}, "progress.current")

    wire.run(scenario())
    m = wire.metrics(t)
    assert m["progress_invalid_messages_total"] == len(BAD_MESSAGES)
    assert m["progress_subscriptions"] == 0
    wire.assert_alive(t)


def test_binary_frames_are_rejected(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "bin") as ws:
            await wire.established(ws)
            for payload in (b"\x00\x01\x02", json.dumps({"type": "ping"}).encode(), b""):
                await ws.send(payload)
                reply = await wire.recv(ws)
                assert reply["type"] == "error" and reply["code"] == "binary_not_supported", reply
            assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}

    wire.run(scenario())
    wire.assert_alive(t)


def test_invalid_utf8_text_frame_closes_with_1007(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "utf8") as ws:
            await wire.established(ws)
            await ws.send(b'{"type":"\xff\xfe"}', text=True)
            code, _ = await wire.closed_with(ws)
            assert code == 1007

    wire.run(scenario())
    wire.assert_alive(t)


def test_ten_megabyte_frame_closes_with_1009(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "big") as ws:
            await wire.established(ws)
            try:
                await ws.send('{"type":"ping","pad":"' + "x" * (10 << 20) + '"}')
            except wire.ConnectionClosed:
                pass
            code, got = await wire.closed_with(ws)
            # SPEC §7: an `error` message first, then close 1009.
            assert code == 1009 and [m["type"] for m in got] == ["error"], (code, got)
            assert got[0]["code"] == "message_too_large" and "(65536)" in got[0]["message"], got  # the default

    wire.run(scenario())
    wire.assert_alive(t)


def test_message_just_under_the_limit_is_accepted_and_over_it_closes(wire):
    t = wire.open(max_message_bytes=1024)

    async def scenario():
        async with wire.connect(t, "edge") as ws:
            await wire.established(ws)
            text = '{"type":"ping","pad":"' + "x" * 1000
            text += '"}'.rjust(1024 - len(text), " ")
            assert len(text) == 1024
            assert await wire.request(ws, text, "pong") == {"type": "pong"}
            # The same limit holds for a message split into fragments.
            await ws.send(iter(['{"type":"ping","pad":"', "x" * 600, "x" * 600, '"}']))
            code, got = await wire.closed_with(ws)
            assert code == 1009 and [m.get("code") for m in got] == ["message_too_large"], (code, got)
            assert "(1024)" in got[0]["message"], got

    wire.run(scenario())
    wire.assert_alive(t)


def test_fragmented_message_is_reassembled(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "frag") as ws:
            await wire.established(ws)
            await ws.send(iter(['{"type":', '"pi', 'ng"}']))
            assert await wire.recv(ws) == {"type": "pong"}

    wire.run(scenario())


def test_ten_thousand_subscriptions_in_one_message_hit_the_limit(wire):
    t = wire.open(max_message_bytes=1 << 20)  # 10,000 ids do not fit in the default 64 KiB
    ids = [f"t{i}" for i in range(10_000)]

    async def scenario():
        async with wire.connect(t, "many") as ws:
            await wire.established(ws)
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ids}, "subscribed")
            assert reply["type"] == "error" and reply["code"] == "limit", reply
            assert "1000" in reply["message"]
            assert wire.metrics(t)["progress_subscriptions"] == 0  # all or nothing
            assert await wire.request(ws, {"type": "ping"}, "pong") == {"type": "pong"}
            # Up to the cap (default 1000) is fine; one more is not.
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ids[:1000]}, "subscribed")
            assert reply["type"] == "subscribed" and len(reply["task_ids"]) == 1000
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ids[:1000]}, "subscribed")
            assert reply["type"] == "subscribed", "re-subscribing to the same ids adds nothing"
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ["one-more"]}, "subscribed")
            assert reply["type"] == "error" and reply["code"] == "limit", reply
            # "*" counts as none.
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ["*"]}, "subscribed")
            assert reply["type"] == "subscribed", reply
            assert wire.metrics(t)["progress_subscriptions"] == 1000

    wire.run(scenario())
    wire.assert_alive(t)


def test_raised_max_subscriptions_is_the_cap(wire):
    t = wire.open(max_message_bytes=1 << 20, max_subscriptions=20_000)
    ids = [f"t{i}" for i in range(10_000)]
    t.create_task_progress_sync("t9999", "x")

    async def scenario():
        async with wire.connect(t, "many") as ws:
            await wire.established(ws)
            reply = await wire.request(ws, {"type": "subscribe", "task_ids": ids}, "subscribed")
            assert reply["type"] == "subscribed" and reply["task_ids"] == ids
            state = await wire.recv(ws)
            assert state["type"] == "progress.update" and state["task_id"] == "t9999"
            assert wire.metrics(t)["progress_subscriptions"] == 10_000
            t.complete_task_sync("t9999")
            m = await wire.recv_until(ws, lambda m: m["type"] == "progress.update", 3)
            assert m["data"]["status"] == "completed"

    wire.run(scenario())


def test_invalid_client_id_is_closed_with_1008(wire):
    t = wire.open()

    async def scenario():
        async with wire.connect(t, "x" * 257) as ws:
            code, got = await wire.closed_with(ws)
            assert code == 1008 and got == []
        async with wire.connect(t, "%01abc") as ws:
            code, got = await wire.closed_with(ws)
            assert code == 1008 and got == []
        async with wire.connect(t, "x" * 256) as ws:
            assert (await wire.established(ws))["client_id"] == "x" * 256

    wire.run(scenario())
    wire.assert_alive(t)


def test_wrong_websocket_path_is_closed_with_4404(wire):
    t = wire.open()

    async def scenario():
        for path in ("/", "/ws", "/api/v1/progress/ws/extra", "/api/v1/progress/tasks/x"):
            async with wire.connect(t, "p", path=path) as ws:
                code, got = await wire.closed_with(ws)
                assert code == 4404 and got == [], (path, code, got)

    wire.run(scenario())
    wire.assert_alive(t)


# ---- raw sockets: broken upgrades and frames -----------------------------------------------------------


def upgrade(key, version="13", extra=""):
    return (f"GET /api/v1/progress/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"{'Sec-WebSocket-Key: ' + key + chr(13) + chr(10) if key is not None else ''}"
            f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n").encode()


API_TASKS = "/api/v1/progress/tasks/"
GOOD_KEY = base64.b64encode(b"0123456789abcdef").decode()


@pytest.mark.parametrize("request_bytes", [
    upgrade(None),
    upgrade(""),
    upgrade("bad"),  # not base64 of 16 bytes (RFC 6455 §4.2.1)
    upgrade(base64.b64encode(b"too short").decode()),
    upgrade(GOOD_KEY, version="99"),
    upgrade(GOOD_KEY, version=""),
], ids=["no-key", "empty-key", "bad-key", "short-key", "version-99", "empty-version"])
def test_broken_upgrade_is_refused(wire, request_bytes):
    """An upgrade with a bad key or an unsupported version must not become a WebSocket (RFC 6455 §4.2.1:
    400, or 426 with Sec-WebSocket-Version: 13 for a version); the server ends that connection."""
    t = wire.open()
    try:
        data = wire.raw_exchange(t, request_bytes, timeout=3)
    except AssertionError as e:
        raise AssertionError(f"the server kept a broken upgrade open: {e}") from None
    assert not data.startswith(b"HTTP/1.1 101"), data[:300]
    if data:
        assert wire.parse_response(data).status in (400, 403, 404, 426), data[:200]
    assert wire.metrics(t)["progress_connections"] == 0
    wire.assert_alive(t)


@pytest.mark.parametrize("garbage", [
    b"\x00\xff\x10garbage\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(64),  # a TLS ClientHello
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 20000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n",
    b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_garbage_requests_are_closed(wire, garbage):
    t = wire.open()
    try:
        data = wire.raw_exchange(t, garbage, timeout=5)
    except AssertionError as e:
        raise AssertionError(f"the server kept a garbage connection open: {e}") from None
    if data:
        assert wire.parse_response(data).status >= 400 or data.startswith(b"HTTP/1.1 200"), data[:200]
    wire.assert_alive(t)


BROKEN_FRAMES = {
    # RFC 6455 §5.1: a server MUST close the connection on an unmasked client frame.
    "unmasked": lambda f: f(0x1, b'{"type":"ping"}', mask=False),
    "reserved-opcode-3": lambda f: f(0x3, b"x"),
    "reserved-opcode-0xB": lambda f: f(0xB, b"x"),
    "rsv-bits-without-extension": lambda f: f(0x1, b'{"type":"ping"}', rsv=4),
    "continuation-without-start": lambda f: f(0x0, b'{"type":"ping"}'),
    "control-frame-over-125-bytes": lambda f: f(0x9, b"x" * 200),
    "fragmented-control-frame": lambda f: f(0x9, b"x", fin=False),
    "close-with-1-byte-payload": lambda f: f(0x8, b"x"),
    "length-2^63": lambda f: bytes([0x81, 0xFF]) + (2 ** 63 + 5).to_bytes(8, "big") + b"abcd",
    "new-message-inside-fragmented-one": lambda f: f(0x1, b'{"type":', fin=False) + f(0x1, b'"ping"}'),
}


# libwebsockets 4.1 does not check the mask bit of client frames and exposes no way to see it, so an unmasked
# frame is not refused; the server lives on for every other client (test_broken_frames_leave_others_served).
LWS_ACCEPTS_UNMASKED = pytest.mark.xfail(strict=True, reason="libwebsockets 4.1 does not enforce RFC 6455 §5.1 masking")


@pytest.mark.parametrize("case", [pytest.param(c, marks=LWS_ACCEPTS_UNMASKED) if c == "unmasked" else c
                                  for c in BROKEN_FRAMES])
def test_broken_frames_close_the_connection(wire, case):
    t = wire.open()
    raw = wire.raw_ws(t)
    assert raw.next_frame()[0] == 0x1  # connection.established
    raw.sock.sendall(BROKEN_FRAMES[case](raw.frame))
    assert raw.is_closed_by_server(3), f"{case}: the server neither answered nor closed within 3 s"
    raw.close()
    assert wire.wait_metric(t, "progress_connections", lambda v: v == 0) == 0
    wire.assert_alive(t)


def test_broken_frames_leave_others_served(wire):
    t = wire.open()
    raw = wire.raw_ws(t)
    assert raw.next_frame()[0] == 0x1
    raw.sock.sendall(BROKEN_FRAMES["unmasked"](raw.frame))
    wire.assert_alive(t)
    raw.close()


@pytest.mark.parametrize("partial", [b"\x81", b"\x81\xfe\x00", b"\x81\xff\x00\x00", b"\x81\x8a\x01\x02",
                                     b"\x81\x8a\x01\x02\x03\x04abc"])
def test_truncated_frame_then_hangup_is_cleaned_up(wire, partial):
    t = wire.open()
    raw = wire.raw_ws(t)
    raw.next_frame()
    raw.sock.sendall(partial)
    time.sleep(0.05)
    raw.close()
    assert wire.wait_metric(t, "progress_connections", lambda v: v == 0) == 0
    wire.assert_alive(t)


def test_valid_raw_frames_work(wire):
    """The raw client itself is sound: a masked ping text frame gets a pong, a WebSocket ping a pong
    frame, and a close frame an echoed close."""
    t = wire.open()
    raw = wire.raw_ws(t, client_id="rawok")
    assert json.loads(raw.next_frame()[1]) == {"type": "connection.established", "client_id": "rawok"}
    raw.send_text('{"type":"ping"}')
    assert raw.next_frame() == (0x1, b'{"type":"pong"}')
    raw.sock.sendall(raw.frame(0x9, b"hi"))
    assert raw.next_frame() == (0xA, b"hi")
    raw.sock.sendall(raw.frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
    opcode, payload = raw.next_frame()
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1000


def test_half_open_handshake_is_dropped(wire):
    """A client that sends half a request and stalls is not served; the others are."""
    t = wire.open()
    s = wire.raw_socket(t)
    s.sendall(b"GET /api/v1/progress/ws HTTP/1.1\r\nHost: x\r\nUpg")
    wire.assert_alive(t)
    s.close()


def test_many_bad_connections_in_a_row_leave_nothing_open(wire):
    t = wire.open()
    for i in range(30):
        raw = wire.raw_ws(t, client_id=f"c{i}")
        raw.next_frame()
        raw.sock.sendall(os.urandom(64))
        raw.close()
    for i in range(30):
        s = wire.raw_socket(t)
        s.sendall(os.urandom(100))
        s.close()
    assert wire.wait_metric(t, "progress_connections", lambda v: v == 0) == 0
    wire.assert_alive(t)


@pytest.mark.parametrize("size", [9000, 70000])
def test_overlong_request_is_refused(wire, size):
    """A request line or header larger than the header space (8 KiB) is refused (ideally 414 / 431; a
    dropped connection at least), and the server serves the next client."""
    t = wire.open()
    for request in (f"GET {API_TASKS}a?pad={'x' * size} HTTP/1.1\r\nHost: x\r\n\r\n",
                    f"GET /api/v1/progress/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {GOOD_KEY}\r\nSec-WebSocket-Version: 13\r\nX-Pad: {'x' * size}\r\n\r\n"):
        try:
            data = wire.raw_exchange(t, request.encode(), timeout=5)
        except (AssertionError, ConnectionResetError, BrokenPipeError) as e:
            if "kept the connection open" in str(e):
                raise
            data = b""
        if data:
            assert wire.parse_response(data).status in (400, 413, 414, 431), data[:200]
    wire.assert_alive(t)

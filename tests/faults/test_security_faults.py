"""Security faults not covered by tests/listener: slow-loris (headers trickled) and Redis keys for hostile ids."""

import json
import socket
import threading
import time

from faults_support import http_get, read_stream, record, wait_until, ws_connect, ws_until


def test_slow_loris_headers_are_timed_out_and_others_served():
    """Sockets that trickle a request's headers a byte a second are closed by the listener's header timeout
    (10 s, listener.c), while a normal client is served the whole time."""
    from progress_engine import ProgressTracker
    with ProgressTracker(listen="127.0.0.1:0") as t:
        t.create_task_progress_sync("x", "tpl")
        head = b"GET /api/v1/progress/tasks/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100
        lorises, closed_after = [], {}
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", t.port), timeout=1)
            lorises.append(s)
        start = time.monotonic()
        stop = threading.Event()

        def trickle(i, s):
            for b in head:
                if stop.is_set():
                    return
                try:
                    s.sendall(bytes([b]))
                    s.settimeout(1.0)
                    if s.recv(1) == b"":
                        closed_after[i] = time.monotonic() - start
                        return
                except socket.timeout:
                    continue
                except OSError:
                    closed_after[i] = time.monotonic() - start
                    return

        threads = [threading.Thread(target=trickle, args=(i, s)) for i, s in enumerate(lorises)]
        for th in threads:
            th.start()
        served = 0
        try:
            while time.monotonic() - start < 16 and len(closed_after) < len(lorises):
                status, body = http_get(t.port, "/api/v1/progress/tasks/x", timeout=2)
                assert status == 200 and body["task_id"] == "x"
                served += 1
                time.sleep(0.5)
        finally:
            stop.set()
            for th in threads:
                th.join(5)
            for s in lorises:
                s.close()
        record("slow_loris", sockets=len(lorises), closed=len(closed_after),
               slowest_close_s=round(max(closed_after.values(), default=-1), 1), normal_requests_served=served)
        assert len(closed_after) == len(lorises), closed_after
        assert all(8 <= v <= 15 for v in closed_after.values()), closed_after


# ("*" is refused at creation: it means every task in a subscription; test_listener_ids.py.)
HOSTILE_IDS = ["a{b}", "a%7Bb%7D", "}{", "{}", "%", "%25", "x:y:z", "progress:task:{a}:state", "a/b/c", "?[]",
               "space and more", "quote\"'`", "back\\slash", "日本語", "😀", "a" * 200, "-", "0"]


def test_redis_keys_are_safe_for_any_id(redis):
    """Each hostile id gets its own keys (never another id's, never outside its hash tag) and reads back exactly
    through a second engine."""
    from progress_engine import ProgressTracker
    with ProgressTracker(redis_url=redis.url, throttle_ms=5) as a:
        for i, tid in enumerate(HOSTILE_IDS):
            a.create_task_progress_sync(task_id=tid, template_id="tpl")
            a.update_progress_sync(task_id=tid, step=i + 1, total_steps=100, message=f"s{i + 1}")
            a.log_sync(tid, "info", f"log of {tid}")
        wait_until(lambda: a.stats_sync()["redis_queue_depth"] == 0 and a.stats_sync()["redis_connected"] == 1,
                   5, what="the writes")
    c = redis.client()
    try:
        keys = sorted(k.decode() for k in c("KEYS", "progress:task:*"))
    finally:
        c.close()
    # 4 keys (state, events, logs, logged) per id, all distinct.
    assert len(keys) == 4 * len(HOSTILE_IDS), keys
    with ProgressTracker(redis_url=redis.url, listen="127.0.0.1:0") as b:
        for i, tid in enumerate(HOSTILE_IDS):
            got = b.get_task_progress_sync(tid)
            assert got["task_id"] == tid and got["stages"][str(got["current_stage"])]["message"] == f"s{i + 1}", tid
            events = [ev for e in read_stream(redis, tid) for ev in e.events]
            assert any(ev.get("message") == f"s{i + 1}" for ev in events), tid
            logs = b.get_logs_sync(tid)["logs"]
            assert [e["message"] for e in logs] == [f"log of {tid}"], tid
        # And through the listener's WebSocket: ids come back as they went in (JSON-escaped on the wire).
        ws = ws_connect(b.port)
        ws.send(json.dumps({"type": "subscribe", "task_ids": HOSTILE_IDS}))
        ws_until(ws, lambda m: {x.get("task_id") or (x.get("data") or {}).get("task_id") for x in m}
                        >= set(HOSTILE_IDS), 10)
        ws.close()
    record("redis_keys_hostile_ids", ids=len(HOSTILE_IDS), keys=len(keys), read_back=len(HOSTILE_IDS))


def _ws_close_code(port, headers=None, source=None):
    """Opens a WebSocket (optionally with extra headers, from a given local address) and returns
    ("open", None) if it gets connection.established and stays open, else ("closed", code)."""
    import websocket
    sock = None
    if source is not None:
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
    ws = websocket.WebSocket()
    try:
        ws.connect(f"ws://127.0.0.1:{port}/api/v1/progress/ws", header=headers or [], timeout=5,
                   suppress_origin=True, socket=sock)
        first = ws.recv_data(control_frame=True)
        if first[0] == websocket.ABNF.OPCODE_CLOSE:
            return "closed", int.from_bytes(first[1][:2], "big")
        assert json.loads(first[1])["type"] == "connection.established"
        return "open", ws
    except websocket.WebSocketConnectionClosedException:
        return "closed", None


def test_origin_allow_list():
    from progress_engine import ProgressTracker
    allowed = ["https://app.example.com", "http://localhost:3000/"]
    with ProgressTracker(listen="127.0.0.1:0", allowed_origins=allowed) as t:
        outcomes = {}
        for origin in ["https://app.example.com", "HTTPS://APP.EXAMPLE.COM", "http://localhost:3000", None,
                       "https://evil.example.com", "https://app.example.com.evil.net", "null",
                       "http://localhost:3001"]:
            state, ws = _ws_close_code(t.port, [f"Origin: {origin}"] if origin else [])
            outcomes[origin] = ws if state == "closed" else "open"
            if state == "open":
                ws.close()
        assert outcomes == {"https://app.example.com": "open", "HTTPS://APP.EXAMPLE.COM": "open",
                            "http://localhost:3000": "open", None: "open",
                            "https://evil.example.com": 4403, "https://app.example.com.evil.net": 4403,
                            "null": 4403, "http://localhost:3001": 4403}, outcomes
    # Without the option every origin is accepted (the default, as before).
    with ProgressTracker(listen="127.0.0.1:0") as t:
        state, ws = _ws_close_code(t.port, ["Origin: https://anything.example"])
        assert state == "open"
        ws.close()
    record("origin_allow_list", allowed=2, accepted=4, refused_4403=4)


def test_bad_allowed_origins_is_a_config_error():
    import pytest
    from progress_engine import ProgressTracker
    for bad in (["", "x"], "https://a.example", [1]):
        with pytest.raises(Exception, match="allowed_origins"):
            ProgressTracker(listen="127.0.0.1:0", allowed_origins=bad)
    with pytest.raises(Exception, match="max_connections_per_ip"):
        ProgressTracker(listen="127.0.0.1:0", max_connections_per_ip=0)


def test_connections_per_ip_limit():
    """max_connections_per_ip 3: a fourth connection from 127.0.0.1 is closed with 1013 while another address
    (127.0.0.2, loopback too) still connects; a slot freed is usable again."""
    from progress_engine import ProgressTracker
    with ProgressTracker(listen="127.0.0.1:0", max_connections_per_ip=3) as t:
        held = []
        for _ in range(3):
            state, ws = _ws_close_code(t.port)
            assert state == "open"
            held.append(ws)
        assert _ws_close_code(t.port) == ("closed", 1013)
        state, other = _ws_close_code(t.port, source="127.0.0.2")
        assert state == "open"
        other.close()
        held.pop().close()
        ok = wait_until(lambda: (lambda r: r if r[0] == "open" else None)(_ws_close_code(t.port)), 5,
                        what="a freed slot")
        ok[1].close()
        for ws in held:
            ws.close()
    record("connections_per_ip", limit=3, fourth_refused_code=1013, other_address_served=True)

"""CORS on the REST API (docs/API.md, "CORS"): the `allowed_origins` key decides which browser origins may read the
REST API from their pages, on real sockets. What a browser does with these headers is tested in headless Chromium
(tests/dashboard/test_cors_browser.py)."""

from __future__ import annotations

import pytest

API = "/api/v1/progress"
APP = "https://app.example.com"
TOKEN = "cors-T0ken"
CORS_HEADERS = ("access-control-allow-origin", "access-control-allow-methods", "access-control-allow-headers",
                "access-control-max-age", "access-control-allow-credentials")


def cors_of(r):
    return {k: v for k, v in r.headers.items() if k in CORS_HEADERS}


def preflight(wire, t, origin, path=f"{API}/tasks", method="GET", headers="authorization"):
    h = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}
    if origin is not None:
        h["Origin"] = origin
    return wire.http(t, path, method="OPTIONS", headers=h)


def test_allowed_origin_gets_its_exact_origin_on_every_answer(wire):
    """200s, 404s, 400s and 401s alike carry the allow header, so the page can read why a request failed."""
    t = wire.open(allowed_origins=[APP, "http://localhost:3000"], auth_token=TOKEN)
    t.create_task_progress_sync("c1", "sdxl")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path, headers, status in [(f"{API}/tasks/c1", auth, 200), (f"{API}/batch/b", auth, 200),
                                  (f"{API}/tasks/c1/history", auth, 200), ("/healthz", {}, 200),
                                  (f"{API}/tasks/nope", auth, 404), (f"{API}/tasks/c1/history?after_seq=x", auth, 400),
                                  (f"{API}/tasks/c1", {}, 401), ("/metrics", auth, 200)]:
        for origin in (APP, "http://localhost:3000"):
            r = wire.http(t, path, headers={**headers, "Origin": origin})
            assert r.status == status, (path, r)
            assert cors_of(r) == {"access-control-allow-origin": origin}, (path, origin, r.headers)
            assert r.headers.get("vary") == "Origin", (path, r.headers)


def test_origin_is_echoed_as_the_browser_sent_it(wire):
    """Origins match case-insensitively (as for WebSockets); the answer repeats the request's own spelling, which is
    what a browser compares with."""
    t = wire.open(allowed_origins=["https://App.Example.com/"])
    for origin in (APP, "HTTPS://APP.EXAMPLE.COM"):
        r = wire.http(t, "/healthz", headers={"Origin": origin})
        assert r.headers.get("access-control-allow-origin") == origin, r.headers


def test_other_origins_get_no_cors_headers_but_the_same_answer(wire):
    """A request from another origin is answered as before (a browser then keeps the body from the page; an <img> of
    a preview still loads), with `Vary: Origin` so no shared cache hands it an allowed origin's answer."""
    t = wire.open(allowed_origins=[APP])
    t.create_task_progress_sync("c2", "sdxl")
    for origin in ("https://evil.example.com", "https://app.example.com.evil.net", "http://app.example.com",
                   "https://app.example.com:8443", "null", None):
        r = wire.http(t, f"{API}/tasks/c2", headers={"Origin": origin} if origin is not None else {})
        assert r.status == 200 and r.json()["task_id"] == "c2", (origin, r)
        assert cors_of(r) == {}, (origin, r.headers)
        assert r.headers.get("vary") == "Origin", (origin, r.headers)


def test_without_allowed_origins_nothing_is_cross_origin(wire):
    """CORS is off unless configured: no header for any origin, and no Vary (the answer never depends on Origin)."""
    t = wire.open()
    t.create_task_progress_sync("c3", "sdxl")
    r = wire.http(t, f"{API}/tasks/c3", headers={"Origin": APP})
    assert r.status == 200 and cors_of(r) == {} and "vary" not in r.headers, r.headers
    r = preflight(wire, t, APP)
    assert r.status == 403 and r.error_code() == "origin_not_allowed", r
    assert "allowed_origins" in r.json()["error"]["message"]
    assert cors_of(r) == {}, r.headers


def test_preflight_from_an_allowed_origin(wire):
    """204 with the methods (GET, POST for the write routes, OPTIONS), the headers a page may send (Authorization for
    the token, Content-Type for JSON bodies) and how long it holds; no token needed (a browser never sends one on a
    preflight), on any path; no body, so no Content-Type or Content-Length (RFC 9110 §8.6)."""
    t = wire.open(allowed_origins=[APP], auth_token=TOKEN)
    for path in (f"{API}/tasks", f"{API}/tasks/x", f"{API}/tasks/x/cancel", "/metrics", "/nowhere"):
        for method in ("GET", "POST"):
            r = preflight(wire, t, APP, path, method, "authorization, content-type")
            assert r.status == 204, (path, r)
            assert cors_of(r) == {"access-control-allow-origin": APP,
                                  "access-control-allow-methods": "GET, POST, OPTIONS",
                                  "access-control-allow-headers": "Authorization, Content-Type",
                                  "access-control-max-age": "600"}, r.headers
            assert r.headers.get("vary") == "Origin"
            assert r.body == b"" and "content-length" not in r.headers and "content-type" not in r.headers, r


def test_preflight_keeps_the_connection_for_the_request_that_follows(wire):
    """A browser sends the real request on the preflight's connection: the 204 must end where its headers end.
    Raw socket, so stray bytes or a closed connection would show."""
    t = wire.open(allowed_origins=[APP])
    t.create_task_progress_sync("ka", "sdxl")
    s = wire.raw_socket(t)
    s.sendall((f"OPTIONS {API}/tasks/ka HTTP/1.1\r\nHost: x\r\nOrigin: {APP}\r\n"
               "Access-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n\r\n").encode())
    s.settimeout(3)
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, extra = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 204"), head
    s.sendall(f"GET {API}/tasks/ka HTTP/1.1\r\nHost: x\r\nOrigin: {APP}\r\nConnection: close\r\n\r\n".encode())
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        extra += chunk
    r = wire.parse_response(extra)
    assert r.status == 200 and r.json()["task_id"] == "ka", r
    assert r.headers["access-control-allow-origin"] == APP


def test_preflight_from_another_origin_is_403(wire):
    t = wire.open(allowed_origins=[APP])
    for origin in ("https://evil.example.com", "null", "http://app.example.com"):
        r = preflight(wire, t, origin)
        assert r.status == 403 and r.error_code() == "origin_not_allowed", (origin, r)
        assert origin in r.json()["error"]["message"]
        assert cors_of(r) == {}, r.headers
    wire.assert_alive(t)


def test_options_without_origin_is_no_preflight(wire):
    """Not from a browser's CORS machinery: 204 with the methods the API has, no CORS headers."""
    for config in ({}, {"allowed_origins": [APP]}):
        t = wire.open(**config)
        r = preflight(wire, t, None)
        assert r.status == 204 and r.headers.get("allow") == "GET, OPTIONS", r
        assert cors_of(r) == {}, r.headers


def test_star_allows_every_origin_without_credentials(wire):
    """`"*"` only when configured: `Access-Control-Allow-Origin: *` for any origin, never with credentials; nothing
    varies by origin then. WebSockets from any origin are accepted too."""
    t = wire.open(allowed_origins=["*"])
    t.create_task_progress_sync("c4", "sdxl")
    for origin in (APP, "http://localhost:5173", "null"):
        r = wire.http(t, f"{API}/tasks/c4", headers={"Origin": origin})
        assert r.status == 200 and cors_of(r) == {"access-control-allow-origin": "*"}, r.headers
        assert "vary" not in r.headers
        r = preflight(wire, t, origin)
        assert r.status == 204 and r.headers["access-control-allow-origin"] == "*", r
        assert "access-control-allow-credentials" not in r.headers
    r = wire.http(t, f"{API}/tasks/c4")
    assert cors_of(r) == {}, "no Origin, no CORS answer"

    async def ws_from(origin):
        async with wire.connect(t, "star", headers={"Origin": origin}) as ws:
            return (await wire.recv(ws))["type"]

    assert wire.run(ws_from("https://anything.example")) == "connection.established"


def test_websocket_origin_check_unchanged_beside_cors(wire):
    """The same list guards WebSockets: an allowed origin connects, another is closed with 4403."""
    t = wire.open(allowed_origins=[APP])

    async def outcome(origin):
        async with wire.connect(t, "o", headers={"Origin": origin}) as ws:
            if origin == APP:
                return (await wire.recv(ws))["type"]
            return (await wire.closed_with(ws, 3))[0]

    assert wire.run(outcome(APP)) == "connection.established"
    assert wire.run(outcome("https://evil.example.com")) == 4403


@pytest.mark.parametrize("bad", ["localhost:3000", "https://app.example.com/path", "null", "https://",
                                 "app.example.com", "https://a.example?x=1", "https://user@a.example",
                                 "https://a b.example", "3http://a.example", "*.example.com"])
def test_allowed_origins_must_be_origins(wire, bad):
    """A value no browser could send as Origin is a typo: a config error naming it (config typos are errors here)."""
    with pytest.raises(Exception, match="allowed_origins") as e:
        wire.open(allowed_origins=[APP, bad])
    assert bad in str(e.value)


def test_allowed_origins_accepts_what_browsers_send(wire):
    t = wire.open(allowed_origins=["http://localhost:3000/", "HTTPS://APP.EXAMPLE.COM", "http://127.0.0.1:8080",
                                   "https://xn--bcher-kva.example", "chrome-extension://abcdefghijklmnop", "*"])
    assert t.port > 0

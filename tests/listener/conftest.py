"""Shared fixtures of the listener tests: real engines (the Python binding over libProgressEngine.so) with
`listen` set, and real clients of their port: the `websockets` library, `http.client`, and raw sockets
for what a well-behaved client library refuses to send.

Everything is reached through the `wire` fixture (a `Wire`), so the test modules import nothing from
here. Async scenarios run with `wire.run(coro)` (pytest-asyncio is not needed); every wait has a
timeout, so a hung listener fails a test instead of hanging the suite.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

# The binding runs from the checkout (as in bindings/python/tests, live_support puts it on sys.path); the library
# from .build/release.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_support import WS_PATH, RawWebSocket, Response, http, metrics, tcp_connect  # noqa: E402

from progress_engine import ProgressTracker  # noqa: E402
from websockets.asyncio.client import connect as _ws_connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

API = "/api/v1/progress"
#: The engine's default throttle_ms.
THROTTLE_MS = 100
#: Message types a test usually wants to skip over while waiting for a reply.
PUSHED = ("progress.update", "task.log")


def pytest_configure(config):
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")


class Wire:
    """Engines with a listener and clients of them; closes what it opened at the end of the test."""

    WS_PATH = WS_PATH
    API = API
    THROTTLE_MS = THROTTLE_MS
    ConnectionClosed = ConnectionClosed

    def __init__(self) -> None:
        self._trackers: List[ProgressTracker] = []
        self._sockets: List[socket.socket] = []

    # ---- engines ---------------------------------------------------------------------------------

    def open(self, **config: Any) -> ProgressTracker:
        """An engine listening on a free port of 127.0.0.1 (throttle_ms 100 unless given)."""
        config.setdefault("listen", "127.0.0.1:0")
        config.setdefault("throttle_ms", THROTTLE_MS)
        tracker = ProgressTracker(**config)
        self._trackers.append(tracker)
        assert tracker.port > 0
        return tracker

    def close(self) -> None:
        for s in self._sockets:
            s.close()
        for t in self._trackers:
            t.close()

    @staticmethod
    def run(coro: Any, timeout: float = 30) -> Any:
        """Runs an async scenario with an overall deadline."""

        async def bounded() -> Any:
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    # ---- WebSocket (the websockets library) ------------------------------------------------------

    @staticmethod
    def ws_url(tracker: ProgressTracker, path: str = WS_PATH, **query: str) -> str:
        qs = "&".join(f"{k}={v}" for k, v in query.items() if v is not None)
        return f"ws://127.0.0.1:{tracker.port}{path}" + (f"?{qs}" if qs else "")

    def connect(self, tracker: ProgressTracker, client_id: Optional[str] = None, *, path: str = WS_PATH,
                token: Optional[str] = None, headers: Optional[Dict[str, str]] = None, **kwargs: Any):
        """`websockets` client connection (use with `async with`)."""
        kwargs.setdefault("open_timeout", 5)
        kwargs.setdefault("close_timeout", 2)
        kwargs.setdefault("max_size", None)
        kwargs.setdefault("compression", None)
        kwargs.setdefault("ping_interval", None)
        kwargs.setdefault("proxy", None)
        url = self.ws_url(tracker, path, client_id=client_id, token=token)
        return _ws_connect(url, additional_headers=headers, **kwargs)

    @staticmethod
    async def recv(ws: Any, timeout: float = 5) -> dict:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        assert isinstance(raw, str), f"binary message from the server: {raw!r:.200}"
        return json.loads(raw)

    async def recv_until(self, ws: Any, accept: Callable[[dict], bool], timeout: float = 5,
                         seen: Optional[List[dict]] = None) -> dict:
        """Receives until `accept(message)`; every message read (the accepted one too) goes to `seen`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message within {timeout} s; last seen: {(seen or [])[-5:]}")
            try:
                msg = await self.recv(ws, left)
            except asyncio.TimeoutError:
                raise AssertionError(f"no matching message within {timeout} s; last seen: {(seen or [])[-5:]}")
            if seen is not None:
                seen.append(msg)
            if accept(msg):
                return msg

    async def established(self, ws: Any) -> dict:
        msg = await self.recv(ws)
        assert msg["type"] == "connection.established", msg
        return msg

    async def request(self, ws: Any, message: Any, reply_type: str, timeout: float = 5,
                      seen: Optional[List[dict]] = None) -> dict:
        """Sends a message (a dict as JSON, or raw str/bytes) and returns the first reply of `reply_type`
        (or an `error`), skipping pushed updates and logs."""
        await ws.send(json.dumps(message) if isinstance(message, (dict, list)) else message)
        return await self.recv_until(ws, lambda m: m["type"] in (reply_type, "error"), timeout, seen)

    async def subscribed(self, ws: Any, task_ids: List[str], timeout: float = 5) -> List[dict]:
        """A new connection's usual start: `connection.established`, `subscribe` to task_ids (existing tasks),
        and the current state each of them gets at once (SPEC §7), which it returns."""
        await self.established(ws)
        await self.request(ws, {"type": "subscribe", "task_ids": task_ids}, "subscribed", timeout)
        return [await self.recv(ws, timeout) for _ in task_ids]

    @staticmethod
    async def closed_with(ws: Any, timeout: float = 5) -> Tuple[Optional[int], List[dict]]:
        """Reads until the connection closes: (the close code the server sent, None if it sent none;
        the messages received before)."""
        got: List[dict] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the server did not close within {timeout} s; got {got[-5:]}")
                try:
                    raw = await asyncio.wait_for(ws.recv(), left)
                except asyncio.TimeoutError:
                    raise AssertionError(f"the server did not close within {timeout} s; got {got[-5:]}")
                got.append(json.loads(raw) if isinstance(raw, str) else {"binary": raw})
        except ConnectionClosed as e:
            return (e.rcvd.code if e.rcvd is not None else None), got

    async def assert_ws_alive(self, tracker: ProgressTracker, token: Optional[str] = None) -> None:
        async with self.connect(tracker, "alive-check", token=token) as ws:
            await self.established(ws)
            assert (await self.request(ws, {"type": "ping"}, "pong"))["type"] == "pong"

    def assert_alive(self, tracker: ProgressTracker, token: Optional[str] = None) -> None:
        """The listener still answers: a WebSocket ping, /healthz, and a REST lookup of a task."""
        self.run(self.assert_ws_alive(tracker, token), timeout=10)
        assert self.http(tracker, "/healthz").status == 200
        query = f"?token={token}" if token else ""
        r = self.http(tracker, f"{API}/tasks/alive-check-missing{query}")
        assert r.status == 404 and r.error_code() == "not_found", r

    # ---- HTTP --------------------------------------------------------------------------------------

    @staticmethod
    def http(tracker: ProgressTracker, path: str, method: str = "GET", headers: Optional[Dict[str, str]] = None,
             body: Optional[bytes] = None, timeout: float = 5) -> Response:
        return http(tracker.port, path, method, headers, body, timeout)

    def raw_socket(self, tracker: ProgressTracker, rcvbuf: Optional[int] = None) -> socket.socket:
        s = tcp_connect(tracker.port, rcvbuf)
        self._sockets.append(s)
        return s

    def raw_exchange(self, tracker: ProgressTracker, data: bytes, timeout: float = 5) -> bytes:
        """Sends bytes on a fresh socket and returns everything the server sends until it closes the
        connection (AssertionError if it does not close within the timeout)."""
        s = self.raw_socket(tracker)
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the server kept the connection open {timeout} s; got {out[:300]!r}")
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            except socket.timeout:
                raise AssertionError(f"the server kept the connection open {timeout} s; got {out[:300]!r}")
            if not chunk:
                return out
            out += chunk

    def raw_http(self, tracker: ProgressTracker, target: str, method: str = "GET", extra: str = "") -> Response:
        """One request with the target sent byte for byte (no client-side normalisation of `..`)."""
        data = self.raw_exchange(
            tracker, f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode("latin-1"))
        return self.parse_response(data)

    @staticmethod
    def parse_response(data: bytes) -> Response:
        head, sep, body = data.partition(b"\r\n\r\n")
        assert sep, f"no HTTP response: {data[:300]!r}"
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})", lines[0])
        assert m, f"bad status line {lines[0]!r}"
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = body[: int(headers["content-length"])]
        return Response(int(m.group(1)), headers, body)

    def raw_ws(self, tracker: ProgressTracker, client_id: str = "raw", rcvbuf: Optional[int] = None,
               query: str = "", extensions: str = "") -> RawWebSocket:
        """A raw socket after a valid handshake (the 101 response consumed); `extensions`: an offer."""
        ws = RawWebSocket.open(tracker.port, client_id, query, rcvbuf, extensions=extensions)
        self._sockets.append(ws.sock)
        return ws

    # ---- /metrics ----------------------------------------------------------------------------------

    def metrics(self, tracker: ProgressTracker, token: Optional[str] = None) -> Dict[str, float]:
        return metrics(tracker.port, token)

    def wait_metric(self, tracker: ProgressTracker, name: str, accept: Callable[[float], bool],
                    timeout: float = 5) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.metrics(tracker)[name]
            if accept(value) or time.monotonic() >= deadline:
                return value
            time.sleep(0.01)


#: No listener test takes this long; past it every thread's stack is dumped and the run ends, so a hung
#: engine (a close() that never returns, a socket read without a timeout) fails loudly instead of hanging.
HANG_SECONDS = 180


@pytest.fixture
def wire():
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    w = Wire()
    try:
        yield w
    finally:
        w.close()
        faulthandler.cancel_dump_traceback_later()

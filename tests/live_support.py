"""What the suites that run real servers share (tests/redis, tests/faults): free loopback ports, bounded
waits, a real redis-server on a free port with a minimal RESP client, and WebSocket / HTTP clients of a
listener. Each suite's support module imports from here (it puts this folder on sys.path first)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
BINDINGS = ROOT / "bindings" / "python"
if str(BINDINGS) not in sys.path:
    sys.path.insert(0, str(BINDINGS))

WS_PATH = "/api/v1/progress/ws"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout=5.0, interval=0.02, what="condition"):
    """`check()`'s first truthy value, polled every `interval` s; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# ---- Redis ---------------------------------------------------------------------------------------------


class Resp:
    """A minimal RESP2 client (no Python Redis client is needed)."""

    def __init__(self, port: int, timeout: float = 5) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError(f"bad RESP line {line!r}")

    def __call__(self, *args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._reply()


class RedisServer:
    """redis-server on a free loopback port in `folder` (AOF on, fsync `appendfsync`, no RDB). `env`: extra
    environment variables of the process (LD_PRELOAD for tests/faults/aof_power_loss.c). The port stays the
    same across stop / start, so a restarted server is found at the same URL."""

    def __init__(self, folder: Path, appendfsync: str = "always", env: Optional[Dict[str, str]] = None) -> None:
        self.folder = Path(folder)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **(self.env or {})))
        wait_until(self._pong, timeout=10, what=f"redis-server to answer PING on port {self.port}")

    def _pong(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited {self.proc.returncode} (port {self.port} taken?)")
        try:
            c = Resp(self.port, 1)
            try:
                return c("PING") == "PONG"
            finally:
                c.close()
        except (OSError, ConnectionError, RuntimeError):
            return False

    def signal(self, sig: int) -> None:
        """Sends `sig`; after SIGKILL or SIGTERM waits for the exit (start() brings the server back)."""
        self.proc.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def client(self) -> Resp:
        return Resp(self.port)

    def cli(self, *args) -> str:
        """One command through redis-cli; the raw reply text, stripped."""
        out = subprocess.run(["redis-cli", "-p", str(self.port), "--raw", *map(str, args)],
                             capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.rstrip("\n")

    def lines(self, *args) -> List[str]:
        text = self.cli(*args)
        return text.split("\n") if text else []


# ---- a listener's clients ----------------------------------------------------------------------------------


def ws_connect(port: int, client_id: Optional[str] = None, timeout: float = 5):
    """A `websocket-client` connection to a listener, past its `connection.established`."""
    import websocket
    url = f"ws://127.0.0.1:{port}{WS_PATH}" + (f"?client_id={client_id}" if client_id else "")
    ws = websocket.create_connection(url, timeout=timeout)
    hello = json.loads(ws.recv())
    assert hello["type"] == "connection.established", hello
    return ws


def ws_until(ws, until, timeout: float = 10.0, into: Optional[List[dict]] = None) -> List[dict]:
    """Receives messages (into `into`) until `until(all so far)` holds."""
    out = into if into is not None else []
    deadline = time.monotonic() + timeout
    while not until(out):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out; last: {[(m.get('type'), m.get('seq')) for m in out][-10:]}")
        ws.settimeout(left)
        out.append(json.loads(ws.recv()))
    return out


def http_get(port: int, path: str, timeout: float = 5):
    """(status, parsed JSON body) of a GET to the listener, error statuses included."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- progress-server ---------------------------------------------------------------------------------------


SERVER = ROOT / ".build" / "release" / "progress-server"


class ProgressServer:
    """The built `progress-server` as a fleet's listener on a free port (`with ProgressServer(redis_url) as s:`
    then `s.port`); stopped with SIGTERM on leaving."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: Optional[subprocess.Popen] = None
        self.port = -1

    def __enter__(self) -> "ProgressServer":
        self.proc = subprocess.Popen([str(SERVER), "--listen", "127.0.0.1:0", *self.args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"progress-server exited {self.proc.wait(5)} before listening")
            entry = json.loads(line) if line.startswith("{") else {}
            if entry.get("event") == "listening":
                self.port = entry["port"]
                return self
        raise AssertionError("progress-server did not log 'listening' within 10 s")

    def __exit__(self, *exc_info) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.communicate(timeout=15)

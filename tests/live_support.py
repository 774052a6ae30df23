"""What the suites that run real servers share: free loopback ports, bounded waits, a real redis-server on a free
port with a minimal RESP client, clients of a listener (websocket-client, HTTP, and a raw WebSocket for bytes a
client library refuses to send), and the built `progress-server`. Each suite's support module imports from here
(it puts this folder on sys.path first)."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

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


def task_key(kind: str, task_id: str, ns: str = "progress") -> str:
    """A task's Redis key (`state`, `events`, `logs`, `previews`): the id inside a hash tag, with `%`, `{` and `}`
    percent-encoded."""
    tag = task_id.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    return f"{ns}:task:{{{tag}}}:{kind}"


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


@dataclass
class Response:
    status: int
    headers: Dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error_code(self) -> str:
        """The code of a `{"error": {"code", "message"}}` body (asserting that shape)."""
        doc = self.json()
        assert set(doc) == {"error"}, doc
        assert isinstance(doc["error"].get("message"), str) and doc["error"]["message"], doc
        return doc["error"]["code"]


def http(port: int, path: str, method: str = "GET", headers: Optional[Dict[str, str]] = None,
         body: Optional[bytes] = None, timeout: float = 5) -> Response:
    """One request to the listener on `port` (error statuses are returned, not raised)."""
    conn = HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        conn.close()


def http_get(port: int, path: str, timeout: float = 5):
    """(status, parsed JSON body) of a GET to the listener, error statuses included."""
    r = http(port, path, timeout=timeout)
    return r.status, r.json()


def metrics(port: int, token: Optional[str] = None) -> Dict[str, float]:
    """The listener's /metrics as {name (with labels): value}."""
    r = http(port, "/metrics" + (f"?token={token}" if token else ""))
    assert r.status == 200, r
    out = {}
    for line in r.body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def tcp_connect(port: int, rcvbuf: Optional[int] = None, timeout: float = 5) -> socket.socket:
    """A plain socket connected to the listener (SO_RCVBUF set before the connection when given)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
    except BaseException:
        s.close()
        raise
    return s


class RawWebSocket:
    """A hand-driven WebSocket client over a plain socket: sends any bytes (broken frames included) and
    parses what the server sends back."""

    def __init__(self, sock: socket.socket, buffered: bytes, head: bytes = b"") -> None:
        self.sock = sock
        self.buf = buffered
        #: The server's 101 response, headers included.
        self.head = head
        #: The RSV bits of the last frame `next_frame` returned (4: RSV1, "compressed" under permessage-deflate).
        self.rsv = 0

    @classmethod
    def open(cls, port: int, client_id: str = "raw", query: str = "", rcvbuf: Optional[int] = None,
             timeout: float = 5, extensions: str = "") -> "RawWebSocket":
        """A connection past a valid handshake (the 101 response consumed). `extensions`: a
        Sec-WebSocket-Extensions offer. OSError if the listener cannot be reached or does not answer within
        `timeout` s, AssertionError if it answers anything but 101."""
        s = tcp_connect(port, rcvbuf, timeout)
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
            s.sendall((f"GET {WS_PATH}?client_id={client_id}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       f"Sec-WebSocket-Version: 13\r\n{offer}\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                assert chunk, f"the server closed during the handshake: {data!r}"
                data += chunk
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101"), head
        except BaseException:
            s.close()
            raise
        return cls(s, rest, head)

    @staticmethod
    def frame(opcode: int, payload: bytes, *, mask: bool = True, fin: bool = True, rsv: int = 0) -> bytes:
        head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
        n = len(payload)
        m = 0x80 if mask else 0
        if n < 126:
            head += bytes([m | n])
        elif n < 65536:
            head += bytes([m | 126]) + struct.pack("!H", n)
        else:
            head += bytes([m | 127]) + struct.pack("!Q", n)
        if not mask:
            return head + payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.frame(0x1, text.encode()))

    def _fill(self, deadline: float) -> bool:
        """Reads more bytes; False at EOF (or a reset)."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def next_frame(self, timeout: float = 5) -> Optional[Tuple[int, bytes]]:
        """(opcode, payload) of the next whole frame from the server, or None at EOF. Raises
        socket.timeout if nothing complete arrives in time."""
        deadline = time.monotonic() + timeout
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if time.monotonic() >= deadline:
                raise socket.timeout("no whole frame within %.1f s" % timeout)
            if not self._fill(deadline):
                return None

    def _parse(self) -> Optional[Tuple[int, bytes]]:
        b = self.buf
        if len(b) < 2:
            return None
        assert b[1] & 0x80 == 0, "the server masked a frame"
        n, at = b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        if len(b) < at + n:
            return None
        self.buf = b[at + n:]
        self.rsv = (b[0] >> 4) & 0x7
        return b[0] & 0x0F, b[at:at + n]

    def messages_until_close(self, timeout: float = 5) -> Tuple[List[dict], Optional[int]]:
        """Every text message up to the server's close frame or EOF, and the close code (None: no close
        frame, the socket just ended)."""
        out: List[dict] = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.next_frame(max(0.01, deadline - time.monotonic()))
            if frame is None:
                return out, None
            opcode, payload = frame
            if opcode == 0x8:
                return out, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            if opcode == 0x1:
                out.append(json.loads(payload))

    def is_closed_by_server(self, timeout: float = 5) -> bool:
        """Whether the server ends the connection (close frame or EOF) within the timeout, skipping
        whatever it sends before."""
        try:
            self.messages_until_close(timeout)
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


# ---- progress-server ---------------------------------------------------------------------------------------


#: The listener binary: $PROGRESS_SERVER, else the checkout's build (`make build`).
SERVER = Path(os.environ.get("PROGRESS_SERVER") or ROOT / ".build" / "release" / "progress-server")


class ProgressServer:
    """`progress-server` run with `args` as given (`"--listen", "127.0.0.1:0"` for a free port) after `command`
    (default: SERVER). start() returns once it logged `listening` (kept as `listening`, its port as `port`).
    Its log goes to a file, not a pipe (a pipe nobody reads could fill), and log() reads it at any time.
    `with ProgressServer(...) as s:` starts it and stops it on leaving, failing if SIGTERM did not stop it."""

    def __init__(self, *args: str, command: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None) -> None:
        self.argv = [*(command or [str(SERVER)]), *args]
        self.env = env
        self.proc: Optional[subprocess.Popen] = None
        self.port = -1
        self.listening: dict = {}
        self._log = None
        self._final_log = ""

    def start(self, timeout: float = 20) -> "ProgressServer":
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=self._log, env=self.env)
        try:
            self.listening = wait_until(self._listening, timeout=timeout, what="progress-server to log 'listening'")
        except BaseException:
            self.stop()
            raise
        self.port = self.listening["port"]
        return self

    def _listening(self) -> Optional[dict]:
        for entry in self.log_entries():
            if entry.get("event") == "listening":
                return entry
        if self.proc.poll() is not None:
            raise AssertionError(f"progress-server exited {self.proc.returncode} before listening:\n{self.log()}")
        return None

    def log(self) -> str:
        """What it logged so far (read without moving the offset it writes at)."""
        if self._log.closed:
            return self._final_log
        fd = self._log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def log_entries(self) -> List[dict]:
        """Its JSON log lines so far, parsed (a line still being written is left out)."""
        return [json.loads(line) for line in self.log().split("\n")[:-1] if line.startswith("{")]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Sends `sig` if it still runs and waits for the exit (SIGKILL after 15 s); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self._log.closed:
            self._final_log = self.log()
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ProgressServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        code = self.stop()
        assert code != -signal.SIGKILL, f"progress-server did not stop within 15 s of SIGTERM:\n{self.log()[-4000:]}"

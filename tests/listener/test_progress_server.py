"""`progress-server` (Sources/ProgressServer), the built binary run as a fleet's listener: its configuration
(--config, --listen overriding it, the default address, no server without a listener), its JSON log lines
(secrets masked), serving the REST API with auth, and a clean stop on SIGTERM / SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / ".build" / "release" / "progress-server"

pytestmark = pytest.mark.skipif(not SERVER.exists(), reason="build first: make build (.build/release/progress-server)")


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(SERVER), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def log_line(proc: subprocess.Popen, event: str, timeout: float = 10) -> dict:
    """The server's next JSON log line with this event (others are skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"progress-server exited {proc.wait(5)} before logging {event!r}")
        entry = json.loads(line)
        if entry.get("event") == event:
            return entry
    raise AssertionError(f"no {event!r} log line within {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    proc.send_signal(sig)
    rest = proc.communicate(timeout=15)[1]
    return rest


def test_serves_with_auth_masks_secrets_and_stops_cleanly_on_sigterm(tmp_path):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"listen": "127.0.0.1:1", "auth_token": "s3cret-token", "throttle_ms": 20}))
    proc = start("--config", str(config), "--listen", "127.0.0.1:0")  # the command line wins over the file
    try:
        listening = log_line(proc, "listening")
        port = listening["port"]
        assert port > 1
        assert "s3cret-token" not in json.dumps(listening)
        assert json.loads(listening["config"])["auth_token"] == "***"
        assert json.loads(listening["config"])["throttle_ms"] == 20
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/progress/tasks/x", timeout=5)
        assert refused.value.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/progress/tasks/x",
                                         headers={"Authorization": "Bearer s3cret-token"})
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(request, timeout=5)
        assert missing.value.code == 404  # past auth: the task does not exist
    finally:
        rest = stop(proc)
    assert proc.returncode == 0, rest
    events = [json.loads(line)["event"] for line in rest.splitlines() if line.startswith("{")]
    assert events[-2:] == ["stopping", "stopped"], rest


def test_default_address_and_sigint(tmp_path):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"throttle_ms": 10}))
    proc = start("--config", str(config))
    try:
        listening = log_line(proc, "listening")
        if listening["port"] == -1 or "error" in listening:
            pytest.fail(f"no listener: {listening}")
        assert json.loads(listening["config"])["listen"] == "127.0.0.1:8000"
    except AssertionError:
        # Port 8000 may be taken on this machine: then the server says so and exits 2.
        if proc.poll() == 2:
            pytest.skip("127.0.0.1:8000 is in use here")
        raise
    finally:
        if proc.poll() is None:
            rest = stop(proc, signal.SIGINT)
            assert proc.returncode == 0, rest
            assert '"signal":"SIGINT"' in rest


@pytest.mark.parametrize("listen, fragment", [("null", '"listen" is null'), ("8000", '"listen" is')])
def test_no_server_without_a_listener(tmp_path, listen, fragment):
    config = tmp_path / "server.json"
    config.write_text('{"listen": %s}' % listen)
    proc = subprocess.run([str(SERVER), "--config", str(config)], capture_output=True, text=True, timeout=15)
    assert proc.returncode != 0
    assert fragment in proc.stderr and "listen address" in proc.stderr, proc.stderr


def test_redis_password_is_masked_in_the_log(tmp_path):
    port = free_tcp_port()
    proc = start("--listen", "127.0.0.1:0", "--redis-url", f"redis://worker:pa55word@127.0.0.1:{port}/0")
    try:
        listening = log_line(proc, "listening")
        assert "pa55word" not in json.dumps(listening)
        assert json.loads(listening["config"])["redis_url"] == f"redis://worker:***@127.0.0.1:{port}/0"
    finally:
        rest = stop(proc)
    assert "pa55word" not in rest


def free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

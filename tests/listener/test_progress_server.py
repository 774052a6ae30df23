"""`progress-server` (Sources/ProgressServer), the built binary run as a fleet's listener: its configuration
(--config, --listen overriding it, the default address, no server without a listener), its JSON log lines
(secrets masked), serving the REST API with auth, and a clean stop on SIGTERM / SIGINT."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_support import SERVER, ProgressServer, free_port, http  # noqa: E402

pytestmark = pytest.mark.skipif(not SERVER.exists(), reason="build first: make build (.build/release/progress-server)")


def test_serves_with_auth_masks_secrets_and_stops_cleanly_on_sigterm(tmp_path):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"listen": "127.0.0.1:1", "auth_token": "s3cret-token", "throttle_ms": 20}))
    server = ProgressServer("--config", str(config), "--listen", "127.0.0.1:0").start()  # the command line wins
    try:
        listening = server.listening
        port = listening["port"]
        assert port > 1
        assert "s3cret-token" not in json.dumps(listening)
        assert json.loads(listening["config"])["auth_token"] == "***"
        assert json.loads(listening["config"])["throttle_ms"] == 20
        assert http(port, "/healthz").status == 200
        assert http(port, "/api/v1/progress/tasks/x").status == 401
        # Past auth: the task does not exist.
        assert http(port, "/api/v1/progress/tasks/x", headers={"Authorization": "Bearer s3cret-token"}).status == 404
    finally:
        code = server.stop()
    assert code == 0, server.log()
    events = [entry["event"] for entry in server.log_entries()]
    assert events[-2:] == ["stopping", "stopped"], server.log()


def test_default_address_and_sigint(tmp_path):
    config = tmp_path / "server.json"
    config.write_text(json.dumps({"throttle_ms": 10}))
    server = ProgressServer("--config", str(config))
    try:
        listening = server.start().listening
        if listening["port"] == -1 or "error" in listening:
            pytest.fail(f"no listener: {listening}")
        assert json.loads(listening["config"])["listen"] == "127.0.0.1:8000"
    except AssertionError:
        # Port 8000 may be taken on this machine: then the server says so and exits 2.
        if server.proc.poll() == 2:
            pytest.skip("127.0.0.1:8000 is in use here")
        raise
    finally:
        if server.proc.poll() is None:
            assert server.stop(signal.SIGINT) == 0, server.log()
            assert '"signal":"SIGINT"' in server.log()


def test_a_log_reader_that_went_away_does_not_end_the_server():
    """Its log goes to a pipe whose reader exits (a log shipper restarting): the next lines fail with EPIPE, and the
    server still stops cleanly (closing its engine, which flushes to Redis) rather than dying of SIGPIPE."""
    proc = subprocess.Popen([str(SERVER), "--listen", "127.0.0.1:0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in proc.stderr:
            if b'"event":"listening"' in line:
                break
        else:
            pytest.fail(f"progress-server exited {proc.wait()} before listening")
        proc.stderr.close()  # the reader goes away; the server's "stopping" and "stopped" lines go nowhere
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("listen, fragment", [("null", '"listen" is null'), ("8000", '"listen" is')])
def test_no_server_without_a_listener(tmp_path, listen, fragment):
    config = tmp_path / "server.json"
    config.write_text('{"listen": %s}' % listen)
    proc = subprocess.run([str(SERVER), "--config", str(config)], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 2, proc.stderr  # the configuration refused: a start_failed line, exit status 2
    message = next(json.loads(x) for x in proc.stderr.splitlines() if '"start_failed"' in x)["message"]
    assert fragment in message and "listen address" in message, message


def test_redis_password_is_masked_in_the_log(tmp_path):
    port = free_port()
    server = ProgressServer("--listen", "127.0.0.1:0", "--redis-url", f"redis://worker:pa55word@127.0.0.1:{port}/0")
    try:
        listening = server.start().listening
        assert "pa55word" not in json.dumps(listening)
        assert json.loads(listening["config"])["redis_url"] == f"redis://worker:***@127.0.0.1:{port}/0"
    finally:
        server.stop()
    assert "pa55word" not in server.log()


def test_a_configuration_mistake_names_the_file_and_the_key_meant(tmp_path):
    # The engine's message says "config_json": the start_failed line says where the operator wrote it.
    config = tmp_path / "server.json"
    config.write_text('{"throttle_msec": 50}')
    proc = subprocess.run([str(SERVER), "--config", str(config), "--listen", "127.0.0.1:0"], capture_output=True,
                          text=True, timeout=15)
    assert proc.returncode == 2, proc.stderr
    line = next(json.loads(x) for x in proc.stderr.splitlines() if '"start_failed"' in x)
    assert '(did you mean "throttle_ms"?)' in line["message"], line
    assert line["configuration"] == f"--config {config} and --listen", line


@pytest.mark.parametrize("form", ["json", "text"])
def test_log_format_holds_for_the_engine_lines_too(form):
    # Redis down: the engine's own lines (component redis, "disconnected") come beside the server's.
    argv = [str(SERVER), "--listen", "127.0.0.1:0", "--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    proc = subprocess.Popen(argv + (["--log-format", "text"] if form == "text" else []), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("disconnected" in x for x in lines) or not any("listening" in x for x in lines):
            line = proc.stderr.readline()
            assert line, f"progress-server exited {proc.wait(5)}:\n{''.join(lines)}"
            lines.append(line)
        proc.send_signal(signal.SIGTERM)
        lines += proc.stderr.read().splitlines(keepends=True)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
        proc.wait(10)
    if form == "json":
        entries = [json.loads(line) for line in lines]  # every line, the engine's too
        engine = next(e for e in entries if e["event"] == "disconnected")
        assert engine["component"] == "redis" and engine["level"] == "warning", engine
        assert [e["event"] for e in entries[-2:]] == ["stopping", "stopped"], entries
    else:
        assert not any(line.startswith("{") for line in lines), lines
        engine = next(line for line in lines if "disconnected" in line)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z warning progress-engine: component=redis "
                            r"redis=redis://127\.0\.0\.1:\d+/0 role=writer reason=\"[^\"]*Connection refused\" .* "
                            r"\[ProgressEngine\] disconnected\n", engine), engine
        assert re.search(r" info progress-server: \[ProgressServer\] stopped\n$", lines[-1]), lines

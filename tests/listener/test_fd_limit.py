"""The listener raises the soft open-file limit as far as max_connections needs (Listener/FileLimit.swift),
never above the hard limit, and says so once when the hard limit is too low. Each case runs in a process of
its own whose limits the test sets before the engine opens."""

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESERVE = 64  # FileLimit.reserve: descriptors besides the connections

PROBE = r"""
import json, resource, sys
from progress_engine import ProgressTracker
config = json.loads(sys.argv[1])
with ProgressTracker(**config) as t:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(json.dumps({"soft": soft, "hard": hard, "port": t.port}), flush=True)
"""


def probe(config, soft, hard):
    def limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bindings" / "python"))
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(config)], capture_output=True, text=True,
                          preexec_fn=limits, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    warnings = [json.loads(line) for line in proc.stderr.splitlines()
                if line.startswith("{") and json.loads(line).get("event") == "fd_limit"]
    return result, warnings


def test_soft_limit_raised_as_far_as_max_connections_needs():
    result, warnings = probe({"listen": "127.0.0.1:0", "max_connections": 2000}, 256, 8192)
    assert result["port"] > 0
    assert result["soft"] == 2000 + RESERVE and result["hard"] == 8192
    assert warnings == []


def test_capped_by_the_hard_limit_and_said_once():
    result, warnings = probe({"listen": "127.0.0.1:0", "max_connections": 5000}, 256, 1000)
    assert result["soft"] == 1000 and result["hard"] == 1000
    assert len(warnings) == 1, warnings
    message = warnings[0]["message"]
    assert "max_connections 5000" in message and "hard limit" in message and "ulimit -Hn" in message, message
    assert warnings[0]["level"] == "warning" and warnings[0]["hard_limit"] == "1000"


def test_never_lowered_and_untouched_without_a_listener():
    high, _ = probe({"listen": "127.0.0.1:0", "max_connections": 100}, 4096, 8192)
    assert high["soft"] == 4096
    no_listener, warnings = probe({"max_connections": 5000}, 256, 8192)
    assert no_listener["soft"] == 256 and no_listener["port"] == -1 and warnings == []

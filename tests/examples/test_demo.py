"""The README's demo (`make demo` runs examples/demo.py): two fast rounds on a free port, as a user would start it;
the dashboard URL it prints answers (page, REST of the task it printed, metrics) while it runs, and it exits 0."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200, url
        return r.read()


def test_demo_runs_and_serves_what_it_prints():
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bindings" / "python"))
    proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "demo.py"), "--rounds", "2", "--speed", "20",
                             "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    try:
        out = ""
        deadline = time.monotonic() + 60
        while "next round in" not in out:  # round 1 done; the demo waits 3 s before round 2
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, f"the demo stopped early:\n{out}{proc.stderr.read()}"
            out += line
        url = re.search(r"ProgressEngine dashboard: (http://127\.0\.0\.1:\d+)/", out).group(1)
        printed = json.loads(out.split("TaskProgress of ", 1)[1].split(":\n", 1)[1].split("\n\nhistory of", 1)[0])
        assert printed["status"] in ("completed", "failed", "cancelled") and printed["stages"], printed
        assert b"<html" in get(url + "/").lower()
        served = json.loads(get(f"{url}/api/v1/progress/tasks/{printed['task_id']}"))
        assert served["task_id"] == printed["task_id"] and served["status"] == printed["status"]
        assert b"progress_connections" in get(url + "/metrics")
        rest, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert "batch-a:" in out + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

"""examples/swift-host, a separate Swift package that depends on ProgressEngine by version: built against a tag
of a clone of this repository (as SwiftPM resolves any remote package) and run. Its task, stepped through the
Swift API, streams through `changes(of:)`, is served over the listener's REST API and is read back completed.

The clone holds the committed HEAD: what is not committed is not tested here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def header_version() -> str:
    return subprocess.run([str(ROOT / "scripts" / "version.sh")], capture_output=True, text=True,
                          check=True).stdout.strip()


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def host():
    if shutil.which("swift") is None:
        pytest.fail("swift is not on PATH (make test runs where the toolchain is)")
    # A folder of its own that survives the run (ignored by git, like the other .build-* folders): the next run
    # clones again at the same path, so SwiftPM sees the same package URL and rebuilds only what changed.
    work = ROOT / ".build-swift-host"
    # Named like the project's repository, so the package identity SwiftPM derives from the URL is the same.
    clone = work / "progress-engine"
    shutil.rmtree(clone, ignore_errors=True)
    work.mkdir(exist_ok=True)
    run(["git", "clone", "-q", str(ROOT), str(clone)])
    version = header_version()
    run(["git", "-C", str(clone), "tag", "-f", version])
    package = clone / "examples" / "swift-host"
    env = {k: v for k, v in os.environ.items() if k != "PROGRESS_ENGINE_PACKAGE_URL"}
    run(["swift", "build", "--package-path", str(package), "--scratch-path", str(work / "build")], env=env,
        timeout=1200)
    return package, work / "build" / "debug" / "SwiftHost", version


def test_resolved_by_version_not_by_path(host):
    package, _, version = host
    pins = json.loads((package / "Package.resolved").read_text())["pins"]
    (pin,) = [p for p in pins if p["identity"] == "progress-engine"]
    assert pin["kind"] in ("remoteSourceControl", "localSourceControl"), pin
    assert pin["state"].get("version") == version, pin


def test_runs_streams_serves_and_reads_back(host):
    _, binary, _ = host
    proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("serving until"):
            line = proc.stdout.readline()
            assert line, f"exited {proc.wait(10)} early:\n{''.join(lines)}\n{proc.stderr.read()}"
            lines.append(line.strip())
        port = int(re.fullmatch(r"listening on http://127\.0\.0\.1:(\d+)", lines[0]).group(1))

        changes = [dict(kv.split("=") for kv in l.split()[1:]) for l in lines if l.startswith("change ")]
        # The first change is the task's state when the stream first looked (queued, or already stepping).
        assert changes[0]["status"] in ("queued", "executing") and changes[-1]["status"] == "completed", changes
        seqs = [int(c["seq"]) for c in changes]
        assert seqs == sorted(set(seqs)), seqs
        streamed = int(re.search(r"streamed (\d+) changes", "\n".join(lines)).group(1))
        assert streamed == len(changes) and 2 <= streamed <= 30
        assert "final status=completed overall=100.0 stages=4" in lines

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/progress/tasks/render-1", timeout=5) as r:
            body = json.loads(r.read())
        assert r.status == 200 and body["status"] == "completed" and body["seq"] == seqs[-1], body
    finally:
        proc.stdin.close()
        code = proc.wait(30)
    assert code == 0, proc.stderr.read()

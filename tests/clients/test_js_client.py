"""The JavaScript client (clients/js): its Node tests (clients/js/test/*.test.js, Node's own test runner against
real engines, progress-server, redis-server and headless Chromium, which they start themselves), run one file
each; its package as `npm pack` makes it: the files it carries, its `exports` resolved by Node, its version; and
the README's JavaScript quick start, run with that package against an engine."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "js"
SERVER = ROOT / ".build" / "release" / "progress-server"
CHROMIUM = os.environ.get("PROGRESS_CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")


def node_major() -> int:
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


pytestmark = pytest.mark.skipif(NODE is None or node_major() < 20,
                                reason="the JavaScript client's tests need Node 20 or later as `node` on PATH "
                                       "(Debian 12's nodejs is 18)")


def node(*args: str, cwd: Path = CLIENT, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    # Node 20 and 21 have the standard WebSocket behind a flag; 22 has it on.
    flags = ["--experimental-websocket"] if node_major() < 22 else []
    return subprocess.run([NODE, *flags, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **env))


def node_test_files():
    for path in sorted((CLIENT / "test").glob("*.test.js")):
        marks = []
        if path.name == "fleet.test.js" and (not SERVER.exists() or shutil.which("redis-server") is None):
            marks.append(pytest.mark.skip(reason=f"needs redis-server (apt-get install redis-server) and {SERVER} "
                                                 "(make build)"))
        yield pytest.param(path.name, marks=marks, id=path.stem)


@pytest.mark.parametrize("name", node_test_files())
def test_node(name):
    env = {"PROGRESS_PYTHON": sys.executable, "PROGRESS_SERVER": str(SERVER), "PROGRESS_CHROMIUM": CHROMIUM}
    redis = shutil.which("redis-server")
    if redis:
        env["PROGRESS_REDIS_SERVER"] = redis
    r = node("--test", "--test-reporter=spec", f"test/{name}", timeout=90, **env)
    assert r.returncode == 0, f"node --test test/{name} exited {r.returncode}:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """`npm pack` of clients/js, unpacked as `npm install <tarball>` would: (npm's JSON about it, the folder
    whose node_modules holds it)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed (apt-get install npm)")
    folder = tmp_path_factory.mktemp("app")
    # No registry is asked: the package has no dependencies, and npm's own checks are off.
    env = dict(os.environ, npm_config_update_notifier="false", npm_config_audit="false", npm_config_fund="false",
               npm_config_offline="true", npm_config_cache=str(folder / "npm-cache"))
    r = subprocess.run([npm, "pack", "--json", "--pack-destination", str(folder)], cwd=CLIENT,
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)[0]
    installed = folder / "node_modules" / info["name"]
    installed.mkdir(parents=True)
    subprocess.run(["tar", "-xzf", str(folder / info["filename"]), "-C", str(installed), "--strip-components=1"],
                   check=True)
    return info, folder


def test_npm_pack_carries_the_module_and_its_types_and_node_resolves_it(packed):
    info, folder = packed
    assert sorted(f["path"] for f in info["files"]) == [
        "README.md", "package.json", "progress-client.d.ts", "progress-client.js"]
    script = (f"import {{ ProgressClient, ProgressError }} from {json.dumps(info['name'])};\n"
              "console.log(typeof ProgressClient, new ProgressError('x', 'y').code);\n")
    r = node("--input-type=module", "-e", script, cwd=folder)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["function", "x"]
    package = json.loads((folder / "node_modules" / info["name"] / "package.json").read_text())
    assert package["types"] == package["exports"]["."]["types"] == "./progress-client.d.ts"


def test_readme_quick_start_runs_against_an_engine(packed):
    """The main README's JavaScript quick start, as written, with the installed package and a live engine."""
    _, folder = packed
    block = re.search(r"## JavaScript quick start.*?```js\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    sys.path.insert(0, str(ROOT / "bindings" / "python"))
    from progress_engine import ProgressTracker
    with ProgressTracker(listen="127.0.0.1:0") as tracker:
        tracker.create_task_progress_sync("task-123", "sdxl")
        tracker.update_progress_sync("task-123", 3, 10, "step 3")
        script = folder / "quick_start.mjs"
        script.write_text(
            "const render = (id, pct, eta) => { console.log('render', id, pct); client.close(); };\n"
            "const redraw = () => {};\n"
            + block.replace("http://127.0.0.1:8000", tracker.url))
        r = node(script.name, cwd=folder, timeout=30)
        overall = tracker.get_task_progress_sync("task-123")["overall_progress"]
    assert r.returncode == 0, r.stderr
    word, task, pct = r.stdout.split()
    assert (word, task, float(pct)) == ("render", "task-123", overall)


def test_package_version_is_the_header_version():
    version = subprocess.run([str(ROOT / "scripts" / "version.sh")], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert json.loads((CLIENT / "package.json").read_text())["version"] == version

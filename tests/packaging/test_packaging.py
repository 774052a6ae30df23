"""What a user installs (docs/PACKAGING.md): the wheel, the progress-server binary and the C tarball, each run
where the Swift toolchain is not, and the wheel also where Debian's copies of the libraries it bundles are not.

"Not there" is made real with a private mount namespace (`unshare -m`, root): the toolchain's folder is covered
by an empty tmpfs and each hidden library file by /dev/null, for the process under test only. The test's own
side (HTTP and WebSocket clients, redis-server) stays outside and talks to it over loopback.

The wheel and the tarball are built by scripts/wheel.sh and scripts/dist.sh, which keep their result while
nothing that goes into it changed, so a second run does not rebuild them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import venv
import zipfile
from pathlib import Path
from typing import List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from live_support import ROOT, ProgressServer, RedisServer, http_get, wait_until, ws_connect, ws_until  # noqa: E402

TOOLCHAIN = Path(shutil.which("swift") or "/opt/swift/usr/bin/swift").resolve().parents[2]  # <dir>/usr/bin/swift
RAW_LIBRARY = ROOT / ".build" / "release" / "libProgressEngine.so"


def run(cmd: List[str], **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-4000:]}")
    return proc.stdout


def header_version() -> str:
    return run([str(ROOT / "scripts" / "version.sh")]).strip()


# -- what is hidden -----------------------------------------------------------------------------------------------

def bundled_names(wheel: Path) -> List[str]:
    """The base names of the libraries auditwheel put into the wheel: libwebsockets-bc8401ae.so.17 -> libwebsockets."""
    with zipfile.ZipFile(wheel) as z:
        files = [Path(n).name for n in z.namelist() if n.startswith("progress_engine.libs/")]
    return sorted({re.sub(r"-[0-9a-f]{8}\.so.*$", "", f) for f in files if f})


def system_copies(wheel: Path) -> List[str]:
    """This machine's copies of the libraries the wheel bundles, as the unbundled engine resolves them, plus
    libwebsockets' event-loop plugins (which would bring the system's libwebsockets back)."""
    names = bundled_names(wheel)
    paths = set()
    for line in run(["ldd", str(RAW_LIBRARY)]).splitlines():
        match = re.match(r"\s*(\S+) => (/\S+)", line)
        if match and re.sub(r"\.so.*$", "", match.group(1)) in names and not match.group(2).startswith(str(TOOLCHAIN)):
            paths.add(os.path.realpath(match.group(2)))
    lws_dir = next((os.path.dirname(p) for p in paths if "libwebsockets" in p), None)
    if lws_dir:
        paths.update(str(p.resolve()) for p in Path(lws_dir).glob("libwebsockets-evlib_*.so"))
    return sorted(paths)


def hidden(cmd: List[str], files: List[str]) -> List[str]:
    """`cmd` in a mount namespace without the toolchain and without `files`; it first checks that they are gone."""
    script = (
        'set -e; toolchain=$1; shift; n=$1; shift\n'
        'mount -t tmpfs -o size=1m none "$toolchain"\n'
        'for ((i = 0; i < n; i++)); do mount --bind /dev/null "$1"; [ ! -s "$1" ]; shift; done\n'
        '[ -z "$(ls -A "$toolchain")" ]\n'
        'exec "$@"\n'
    )
    return ["unshare", "-m", "--", "bash", "-c", script, "hide", str(TOOLCHAIN), str(len(files)), *files, *cmd]


@pytest.fixture(scope="module", autouse=True)
def can_hide():
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("these tests hide the toolchain in a private mount namespace: run them as root (make test "
                    "does, as CI does) with util-linux's unshare")
    run(["unshare", "-m", "--", "true"])


# -- artefacts ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wheel() -> Path:
    start = time.monotonic()
    path = ROOT / run([str(ROOT / "scripts" / "wheel.sh")], cwd=ROOT).strip().splitlines()[-1]
    print(f"wheel {path.name}: {path.stat().st_size / 1e6:.1f} MB, ready in {time.monotonic() - start:.1f} s")
    return path


@pytest.fixture(scope="module")
def tarball(wheel) -> Path:
    run(["make", "-s", "server"], cwd=ROOT)
    return ROOT / run([str(ROOT / "scripts" / "dist.sh")], cwd=ROOT).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def unpacked(tarball, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dist")
    with tarfile.open(tarball) as tar:
        tar.extractall(folder)
    (top,) = folder.iterdir()
    return top


@pytest.fixture(scope="module")
def venv_python(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed and nothing else."""
    folder = tmp_path_factory.mktemp("venv")
    venv.create(folder, with_pip=True, symlinks=True)
    python = folder / "bin" / "python"
    # Clean: with PYTHONPATH on the checkout, pip sees the binding's egg-info there and installs nothing.
    run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--disable-pip-version-check",
         str(wheel)], env=clean_env())
    return python


@pytest.fixture(scope="module")
def hide(wheel):
    files = system_copies(wheel)
    # The ones whose absence matters most must be among them, or the test would prove nothing.
    for name in ("libwebsockets", "libhiredis", "libpng16", "libuv"):
        assert any(f"/{name}" in f for f in files), f"{name} not found among {files}"
    return files


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make test installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


def clean_env() -> dict:
    """No override of the library, no path into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PROGRESS_ENGINE_LIB", "PYTHONPATH", "LD_LIBRARY_PATH")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the wheel ----------------------------------------------------------------------------------------------------

def test_wheel_name_tags_and_contents(wheel):
    version = header_version()
    match = re.fullmatch(rf"progress_engine-{re.escape(version)}-py3-none-(manylinux_\d+_\d+_x86_64)\.whl", wheel.name)
    assert match, f"{wheel.name}: expected progress_engine-{version}-py3-none-manylinux_*_x86_64.whl"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert "progress_engine/libProgressEngine.so" in names
    assert not any(n.endswith((".pyc", ".pyd")) or "cpython" in n for n in names), "Python-version-specific files"
    for base in ("libswiftCore", "libwebsockets", "libuv", "libhiredis", "libpng16", "libssl", "libcrypto"):
        assert base in bundled_names(wheel), f"{base} not bundled: {bundled_names(wheel)}"


def test_auditwheel_finds_no_external_library(wheel):
    out = run([sys.executable, "-m", "auditwheel", "show", str(wheel)])
    flat = " ".join(out.split())
    assert re.search(r'is consistent with the following platform tag: "manylinux_\d+_\d+_x86_64"', flat), out
    assert "external shared libraries" not in flat, out


def test_readme_python_quick_start_without_toolchain_or_system_libraries(venv_python, hide, tmp_path):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme.split("## Python quick start", 1)[1], flags=re.S).group(1)
    script = tmp_path / "quick_start.py"
    script.write_text(code)
    out = run(hidden([str(venv_python), str(script)], hide), cwd=tmp_path, env=clean_env())
    state = eval(out.strip().splitlines()[-1], {})  # the quick start prints the task's dict
    assert state["task_id"] == "task-123" and state["status"] == "completed", out


RUNNER = r"""
import json, os, sys
import progress_engine
from progress_engine import ProgressTracker

redis_url = sys.argv[1]
# Everything this process mapped comes from the virtual environment's wheel.
t = ProgressTracker(listen="127.0.0.1:0", redis_url=redis_url, throttle_ms=0)
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if ".so" in line})
t.create_task_progress_sync("wheel-task", "wheel-template", template_category="image_generation")
print(json.dumps({"port": t.port, "file": progress_engine.__file__, "version": progress_engine.__version__,
                  "engine": progress_engine.engine_version(), "maps": maps}), flush=True)
for line in sys.stdin:
    command, _, arg = line.strip().partition(" ")
    if command == "step":
        t.update_progress_sync("wheel-task", int(arg), 10)
    elif command == "complete":
        t.complete_task_sync("wheel-task")
        t.close()  # flushes the write-through
        # A second engine on the same Redis reads the task back.
        with ProgressTracker(redis_url=redis_url) as second:
            print(json.dumps(second.get_task_progress_sync("wheel-task")), flush=True)
        break
    print("ok", flush=True)
"""


def test_wheel_listener_and_redis_round_trip_without_toolchain_or_system_libraries(venv_python, hide, redis, tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    proc = subprocess.Popen(hidden([str(venv_python), str(script), redis.url], hide), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(), cwd=tmp_path)
    try:
        first = proc.stdout.readline()
        assert first, f"runner exited {proc.wait(10)}: {proc.stderr.read()}"
        info = json.loads(first)
        venv_dir = str(venv_python.parents[1])
        assert info["file"].startswith(venv_dir), info["file"]
        assert info["version"] == info["engine"] == header_version()
        engine_libs = [m for m in info["maps"] if "progress_engine" in m or "swift" in m or "websockets" in m
                       or "hiredis" in m or "png" in m or "libuv" in m]
        assert engine_libs and all(m.startswith(venv_dir) for m in engine_libs), engine_libs
        assert not any(m.startswith(str(TOOLCHAIN)) or m in hide for m in info["maps"]), info["maps"]
        port = info["port"]

        status, body = http_get(port, "/api/v1/progress/tasks/wheel-task")
        assert status == 200 and body["status"] == "queued", body
        ws = ws_connect(port)
        try:
            ws.send(json.dumps({"type": "subscribe", "task_ids": ["wheel-task"]}))
            proc.stdin.write("step 4\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == "ok"
            # Step 4 of 10 in the generation stage of image_generation's defaults: 48 % overall.
            got = ws_until(ws, lambda ms: any(m.get("type") == "progress.update"
                                              and m["data"]["overall_progress"] == 48.0 for m in ms))
            assert got[-1]["task_id"] == "wheel-task"
        finally:
            ws.close()
        proc.stdin.write("complete\n")
        proc.stdin.flush()
        read_back = json.loads(proc.stdout.readline())
        assert read_back["task_id"] == "wheel-task" and read_back["status"] == "completed", read_back
        assert proc.wait(20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Written through to Redis: the key exists outside the namespace too.
    assert any("wheel-task" in k for k in redis.lines("KEYS", "*")), redis.lines("KEYS", "*")


# -- pip install of the source folder -----------------------------------------------------------------------------

def test_pip_install_of_the_source_folder_works(tmp_path, wheel):
    """Non-editable `pip install ./bindings/python` from a checkout with the toolchain: the library goes into
    the installed package and the import finds it there."""
    folder = tmp_path / "venv"
    venv.create(folder, with_pip=True, symlinks=True)
    python = folder / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT / "bindings" / "python")],
        env=clean_env())
    out = run([str(python), "-c", "import progress_engine, progress_engine._lib as l; "
               "print(progress_engine.__version__, l._dll._name)"], cwd=tmp_path, env=clean_env())
    version, loaded = out.split()
    assert version == header_version()
    assert loaded.startswith(str(folder)) and loaded.endswith("progress_engine/libProgressEngine.so"), loaded


def test_pip_install_without_library_or_toolchain_says_what_to_run(tmp_path):
    """A copy of the binding outside a checkout, with no built library and no swift on PATH: the install fails
    and says what to do, rather than installing a package that breaks at import."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "bindings" / "python", repo / "bindings" / "python",
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    (repo / "include").mkdir()
    shutil.copy2(ROOT / "include" / "progress.h", repo / "include")
    folder = tmp_path / "venv"
    venv.create(folder, with_pip=True, symlinks=True)
    env = clean_env()
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "swift").exists())
    proc = subprocess.run([str(folder / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                           str(repo / "bindings" / "python")], capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "libProgressEngine.so is not built" in said and "make wheel" in said and "make build" in said, said
    assert not list((folder / "lib").glob("python*/site-packages/progress_engine")), "installed anyway"


# -- progress-server and the tarball ------------------------------------------------------------------------------

def test_tarball_layout_and_checksums(unpacked, wheel):
    version = header_version()
    assert unpacked.name == f"progress-engine-{version}-linux-x86_64"
    for path in ("bin/progress-server", "include/progress.h", "lib/pkgconfig/progress-engine.pc",
                 "lib/progress_engine/libProgressEngine.so", f"python/{wheel.name}", "SHA256SUMS"):
        assert (unpacked / path).is_file(), f"{path} missing from the tarball"
    listed = {line.split(None, 1)[1].strip() for line in (unpacked / "SHA256SUMS").read_text().splitlines()}
    files = {str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert listed == files
    run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=unpacked)


def test_versions_agree(unpacked, venv_python, wheel):
    version = header_version()
    assert run([str(unpacked / "bin" / "progress-server"), "--version"]).strip() == version
    assert f"-{version}-" in wheel.name
    out = run([str(venv_python), "-c", "import progress_engine as p; print(p.__version__, p.engine_version())"],
              env=clean_env(), cwd="/")
    assert out.split() == [version, version]
    pyproject = (ROOT / "bindings" / "python" / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, flags=re.M) and not re.search(
        r"^version\s*=", pyproject, flags=re.M), "pyproject.toml must take its version from the header"
    env = dict(os.environ, PKG_CONFIG_PATH=str(unpacked / "lib" / "pkgconfig"))
    assert run(["pkg-config", "--modversion", "progress-engine"], env=env).strip() == version


def test_server_binary_runs_without_toolchain_and_serves_the_wheels_task(unpacked, venv_python, hide, redis, tmp_path):
    """The server needs no Swift toolchain (its runtime is linked in); the C libraries it still loads are the
    system's (docs/PACKAGING.md), so only the toolchain is hidden from it. The task comes from the wheel's
    engine, run without toolchain or system libraries."""
    server = unpacked / "bin" / "progress-server"
    needed = run(["ldd", str(server)])
    assert str(TOOLCHAIN) not in needed and "libswift" not in needed, needed
    writer = tmp_path / "writer.py"
    writer.write_text(
        "import sys\nfrom progress_engine import ProgressTracker\n"
        "with ProgressTracker(redis_url=sys.argv[1]) as t:\n"
        "    t.create_task_progress_sync('served-task', 'wheel-template', template_category='image_generation')\n"
        "    t.update_progress_sync('served-task', 7, 10)\n"
        "    t.complete_task_sync('served-task')\n")
    run(hidden([str(venv_python), str(writer), redis.url], hide), env=clean_env(), cwd=tmp_path)

    served = ProgressServer("--listen", "127.0.0.1:0", "--redis-url", redis.url, command=hidden([str(server)], []),
                            env=clean_env()).start()
    try:
        status, body = wait_until(lambda: (lambda r: r if r[0] == 200 else None)(
            http_get(served.port, "/api/v1/progress/tasks/served-task")), timeout=10,
            what="the task on progress-server")
        assert body["status"] == "completed" and body["task_id"] == "served-task", body
    finally:
        code = served.stop()
    assert code == 0, served.log()


def test_c_quick_start_against_the_tarball_without_toolchain_or_system_libraries(unpacked, hide, tmp_path):
    """The tarball's C library carries its libraries as the wheel does: the README's C quick start, built with
    the tarball's pkg-config file, runs with neither the toolchain nor Debian's copies."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## C quick start", 1)[1]
    (tmp_path / "quick.c").write_text(re.search(r"```c\n(.*?)```", section, flags=re.S).group(1))
    env = dict(os.environ, PKG_CONFIG_PATH=str(unpacked / "lib" / "pkgconfig"))
    flags = run(["pkg-config", "--cflags", "--libs", "progress-engine"], env=env).split()
    run(["cc", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "quick"), str(tmp_path / "quick.c"), *flags])
    out = run(hidden([str(tmp_path / "quick")], hide), env=clean_env(), cwd=tmp_path)
    assert out.strip(), "the quick start printed nothing"

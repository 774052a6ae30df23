"""The C side as a user meets it: install to a prefix, find it with pkg-config, build every example
in bindings/c-examples with its own Makefile (-Wall -Wextra -Werror), run it and check what it
prints; build and run tests/c/stress.c (the ThreadSanitizer and AddressSanitizer runs of it are
tests/c/tsan.sh and tests/c/asan.sh).

The prefix comes from `make install PREFIX=...` when the top-level Makefile has an install target,
else it is assembled the same way from $PROGRESS_ENGINE_LIB or .build/release/libProgressEngine.so.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from live_support import RedisServer
from test_abi import DEFAULT_LIB, HEADER, ROOT, header_version

EXAMPLES = ROOT / "bindings" / "c-examples"
TIMEOUT = 120


def run(cmd, **kwargs):
    """Runs cmd, returning (exit status, stdout and stderr together)."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT,
                          **kwargs)
    return proc.returncode, proc.stdout


def check_run(cmd, **kwargs):
    status, output = run(cmd, **kwargs)
    assert status == 0, f"{' '.join(map(str, cmd))} exited with {status}:\n{output}"
    return output


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("prefix")
    makefile = ROOT / "Makefile"
    if makefile.is_file() and re.search(r"^install\s*:", makefile.read_text(), flags=re.M):
        check_run(["make", "-C", str(ROOT), "install", f"PREFIX={prefix}"])
    else:
        lib = Path(os.environ.get("PROGRESS_ENGINE_LIB", DEFAULT_LIB))
        if not lib.is_file():
            pytest.fail(f"{lib} not found: build it with `swift build -c release --product ProgressEngine` "
                        "or point PROGRESS_ENGINE_LIB at libProgressEngine.so")
        (prefix / "lib" / "pkgconfig").mkdir(parents=True)
        (prefix / "include").mkdir()
        shutil.copy2(lib, prefix / "lib" / "libProgressEngine.so")
        shutil.copy2(HEADER, prefix / "include" / "progress.h")
        version = ".".join(map(str, header_version()[0]))
        pc = (ROOT / "progress-engine.pc.in").read_text().replace("@PREFIX@", str(prefix)).replace("@VERSION@", version)
        (prefix / "lib" / "pkgconfig" / "progress-engine.pc").write_text(pc)
    return prefix


@pytest.fixture(scope="module")
def env(prefix):
    return {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib" / "pkgconfig")}


def pkg_config(env, *args):
    return check_run(["pkg-config", *args, "progress-engine"], env=env).split()


def build_example(name, tmp_path, env):
    """Builds a copy of the example's folder, as a user who copied it out of the tree would."""
    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder)
    check_run(["make"], cwd=folder, env=env)
    return folder / name


def test_install_layout(prefix):
    for path in ("lib/libProgressEngine.so", "include/progress.h", "lib/pkgconfig/progress-engine.pc"):
        assert (prefix / path).is_file(), f"{path} missing from the installed prefix"


def test_pkg_config_version_matches_header(env):
    assert pkg_config(env, "--modversion") == [".".join(map(str, header_version()[0]))]


def test_readme_c_quick_start_builds_and_runs(tmp_path, env):
    """The README's C quick start, compiled as its shell block says (-Wall -Wextra -Werror, pkg-config) and run."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## C quick start", 1)[1]
    source = re.search(r"```c\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "main.c").write_text(source)
    cflags = pkg_config(env, "--cflags")
    libs = pkg_config(env, "--libs")
    check_run(["cc", "-Wall", "-Wextra", "-Werror", "main.c", *cflags, *libs, "-o", "quickstart"], cwd=tmp_path, env=env)
    task = json.loads(check_run([str(tmp_path / "quickstart")], env=env))
    assert task["task_id"] == "task-1" and task["status"] == "completed" and task["overall_progress"] == 100


def test_every_example_is_indexed():
    index = (EXAMPLES / "README.md").read_text()
    folders = sorted(p.name for p in EXAMPLES.iterdir() if (p / "main.c").is_file())
    assert folders, "no examples found"
    for name in folders:
        assert f"[{name}]({name}/)" in index, f"{name} is not in bindings/c-examples/README.md"
        assert (EXAMPLES / name / "README.md").is_file() and (EXAMPLES / name / "Makefile").is_file()


def task_json(output):
    assert "task JSON:\n" in output, output
    return json.loads(output.split("task JSON:\n", 1)[1])


def test_basic(tmp_path, env):
    output = check_run([build_example("basic", tmp_path, env)], env=env)
    assert "header and library agree" in output
    assert "step 30/30" in output
    task = task_json(output)
    assert task["task_id"] == "basic-task-1"
    assert task["template_category"] == "image_generation"
    assert task["quality"] == "high"
    assert task["status"] == "completed"
    assert task["overall_progress"] == 100
    assert [task["stages"][str(i)]["status"] for i in range(4)] == ["completed"] * 4
    assert [task["stages"][str(i)]["name"] for i in range(4)] == [
        "queue", "model_loading", "generation", "post_processing"]


def test_basic_stops_on_sigint(tmp_path, env):
    program = build_example("basic", tmp_path, env)
    with subprocess.Popen([program, "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env) as proc:
        seen = []
        for line in proc.stdout:  # the first step line: the sampling loop is running
            seen.append(line)
            if line.startswith("step "):
                break
        proc.send_signal(signal.SIGINT)
        output = "".join(seen) + proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == 130, output
    task = task_json(output)
    assert task["status"] == "cancelled"
    assert task["error"] == "interrupted by SIGINT"


def test_threads(tmp_path, env):
    output = check_run([build_example("threads", tmp_path, env), "3", "200"], env=env)
    lines = re.findall(r"^thread-task-(\d+)\s+overall_progress\s+100\.00%\s+status completed$", output, flags=re.M)
    assert sorted(lines) == ["0", "1", "2"], output


def test_threads_exit_non_zero_when_interrupted(tmp_path, env):
    program = build_example("threads", tmp_path, env)
    with subprocess.Popen([program, "2", str(10**12)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env) as proc:
        first = proc.stdout.readline()  # printed once every thread is started
        proc.send_signal(signal.SIGINT)
        output = first + proc.communicate(timeout=TIMEOUT)[0]
    assert proc.returncode == 1, output
    assert len(re.findall(r"status cancelled  <- not in its final state$", output, flags=re.M)) == 2, output


def test_errors(tmp_path, env):
    output = check_run([build_example("errors", tmp_path, env)], env=env)
    for status in ("PROGRESS_E_INVALID_ARGUMENT", "PROGRESS_E_NOT_FOUND", "PROGRESS_E_EXISTS", "PROGRESS_E_STATE",
                   "PROGRESS_E_RANGE", "PROGRESS_E_JSON", "PROGRESS_E_CONFIG"):
        # Every error line carries the library's explanation after the status name.
        assert re.search(rf"-> {status}: \S", output), f"no {status} with a message in:\n{output}"
    assert "progress_status_string(-99) = PROGRESS_E_UNKNOWN" in output


def test_stress(tmp_path, env):
    program = tmp_path / "stress"
    check_run(["cc", "-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread",
               *pkg_config(env, "--cflags"), str(ROOT / "tests" / "c" / "stress.c"), "-o", str(program),
               *pkg_config(env, "--libs"), "-lm"])
    output = check_run([program], env=env)
    assert "stress: all checks passed" in output


def test_cancel_requested(tmp_path, env):
    """progress_task_cancel_requested in a C sampling loop, the request sent to the engine's own REST API."""
    program = tmp_path / "cancel"
    check_run(["cc", "-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror",
               *pkg_config(env, "--cflags"), str(ROOT / "tests" / "c" / "cancel.c"), "-o", str(program),
               *pkg_config(env, "--libs")])
    output = check_run([program], env=env)
    assert "cancel: all checks passed" in output, output


def test_close_stress(tmp_path, env):
    """progress_engine_close while the engine's threads still change tasks (see tests/c/close_stress.c); -rdynamic
    so the program's slowed-down lws_context_destroy is the one the library calls."""
    program = tmp_path / "close_stress"
    check_run(["cc", "-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", "-rdynamic",
               *pkg_config(env, "--cflags"), str(ROOT / "tests" / "c" / "close_stress.c"), "-o", str(program),
               *pkg_config(env, "--libs"), "-ldl"])
    output = check_run([program], env=env)
    assert "close_stress: 3 rounds, no wake of a dying listener context; all checks passed" in output


@pytest.fixture
def redis_port(tmp_path):
    """A redis-server of the test's own on a free loopback port (its AOF never fsynced: nothing here reads it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path, appendfsync="no")
    server.start()
    try:
        yield server.port
    finally:
        server.stop()


def test_fleet_stress(tmp_path, env, redis_port):
    """The listener and Redis write-through driven from every side in one process, at a small scale (about 4 s; the
    sanitizer runs of tests/c/tsan.sh and tests/c/asan.sh use a larger one)."""
    program = tmp_path / "fleet_stress"
    check_run(["cc", "-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread",
               *pkg_config(env, "--cflags"), str(ROOT / "tests" / "c" / "fleet_stress.c"), "-o", str(program),
               *pkg_config(env, "--libs"), "-lhiredis", "-lm"])
    output = check_run([program, str(redis_port)], env=env)
    assert "fleet_stress: all checks passed" in output, output


def test_fork_stress(tmp_path, env, redis_port):
    """fork() while threads are inside progress_update; the children use the engine, the parent goes on (the
    release library; tests/c/tsan.sh runs it under TSan)."""
    program = tmp_path / "fork_stress"
    check_run(["cc", "-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread",
               *pkg_config(env, "--cflags"), str(ROOT / "tests" / "c" / "fork_stress.c"), "-o", str(program),
               *pkg_config(env, "--libs"), "-lm"])
    output = check_run([program, str(redis_port), "6", "2"], env=env)
    assert "fork_stress: 6 forks, 12 child tasks read back" in output and output.rstrip().endswith("ok"), output

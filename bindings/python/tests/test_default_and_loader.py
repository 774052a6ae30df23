"""get_progress_tracker() from the environment, and the library loader. Each case runs in a fresh
interpreter, since both are decided once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import progress_engine

PACKAGE_ROOT = str(Path(progress_engine.__file__).resolve().parent.parent)


def run_python(code, **env):
    """Runs `code` with the package importable and only the given PROGRESS_* variables set."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [PACKAGE_ROOT, environment.get("PYTHONPATH")]))
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_default_tracker_is_one_per_process_from_the_config_variable():
    out = run_python(
        """
        import asyncio, json, threading
        from progress_engine import get_progress_tracker, get_progress_tracker_sync

        found = []
        threads = [threading.Thread(target=lambda: found.append(get_progress_tracker_sync())) for _ in range(8)]
        for thread in threads: thread.start()
        for thread in threads: thread.join()
        tracker = asyncio.run(get_progress_tracker())
        assert all(t is tracker for t in found), "one tracker per process"
        tracker.create_task_progress_sync("t", "sdxl", "image_generation")
        tracker.complete_task_sync("t")
        print(json.dumps({"status": tracker.get_task_progress_sync("t")["status"], "port": tracker.port}))
        """,
        PROGRESS_ENGINE_CONFIG=json.dumps({"throttle_ms": 50, "retention_seconds": 60}),
    )
    assert json.loads(out) == {"status": "completed", "port": -1}


def test_default_tracker_config_errors_name_the_problem():
    code = """
        from progress_engine import ConfigError, get_progress_tracker_sync
        try:
            get_progress_tracker_sync()
        except ConfigError as error:
            print(error)
        """
    listne = run_python(code, PROGRESS_ENGINE_CONFIG='{"listne": "127.0.0.1:0"}')
    assert '"listne"' in listne and '(did you mean "listen"?)' in listne, listne
    assert "(the configuration came from the environment: PROGRESS_ENGINE_CONFIG," in listne, listne
    assert "PROGRESS_STRICT='ture' is not a boolean" in run_python(code, PROGRESS_STRICT="ture")
    assert "PROGRESS_ENGINE_CONFIG" in run_python(code, PROGRESS_ENGINE_CONFIG="{nope")
    assert "JSON object" in run_python(code, PROGRESS_ENGINE_CONFIG="[1]")


def test_default_tracker_refuses_a_misspelled_variable():
    code = """
        from progress_engine import ConfigError, get_progress_tracker_sync
        try:
            print("opened", get_progress_tracker_sync().stats_sync()["tasks"])
        except ConfigError as error:
            print(error)
        """
    # Each would open a memory-only, non-strict tracker without a word.
    for typed, meant in [("PROGRESS_REDIS_ULR", "PROGRESS_REDIS_URL"), ("PROGRESS_REDIS", "PROGRESS_REDIS_URL"),
                         ("Progress_Listen", "PROGRESS_LISTEN"), ("PROGRESS_ENGINE_REDIS_URL", "PROGRESS_REDIS_URL"),
                         ("PROGRESS_STIRCT", "PROGRESS_STRICT"), ("PROGRESS_CONFIG", "PROGRESS_ENGINE_CONFIG"),
                         ("PROGRESS_LIB", "PROGRESS_ENGINE_LIB")]:
        out = run_python(code, **{typed: "1"})
        assert out.startswith(f"{typed} is set, but ProgressEngine reads no such variable: did you mean {meant}? "
                              "(rename it, or unset it if another program reads it)"), out
    # Other programs' variables of the prefix, and the right names, open it.
    out = run_python(code, PROGRESS_SERVER="x", PROGRESS_REDIS_SERVER="x", PROGRESS_DASHBOARD_10K="1",
                     PROGRESS_ENGINE_BUILD_LIB="x", PROGRESS_STRICT="0", PROGRESS_ENGINE_CONFIG="{}")
    assert out.strip() == "opened 0", out


def test_default_tracker_listen_variable_reaches_the_engine():
    # This engine build has no listener yet: PROGRESS_LISTEN must arrive as "listen", which it
    # refuses by name; once the listener lands, the tracker has a bound port instead.
    out = run_python(
        """
        from progress_engine import UnsupportedError, get_progress_tracker_sync
        try:
            print("port", get_progress_tracker_sync().port)
        except UnsupportedError as error:
            print("unsupported", error)
        """,
        PROGRESS_LISTEN="127.0.0.1:0",
    )
    kind, detail = out.split(" ", 1)
    assert (kind == "port" and int(detail) > 0) or (kind == "unsupported" and "listen" in detail), out


def test_loader_finds_the_build_without_any_variable():
    out = run_python("import progress_engine; print(progress_engine._lib._dll._name)")
    assert out.strip().endswith("libProgressEngine.so")


def test_loader_override_with_a_missing_file_names_it():
    missing = "/nonexistent/dir/libProgressEngine.so"
    out = run_python(
        """
        try:
            import progress_engine
        except ImportError as error:
            print(type(error).__name__)
            print(error)
        """,
        PROGRESS_ENGINE_LIB=missing,
    )
    assert out.startswith("LibraryNotFoundError\n")
    assert f"PROGRESS_ENGINE_LIB='{missing}'" in out and f"{missing}: no such file" in out
    assert "make build" in out
    assert ".build/release" not in out  # an override is never silently replaced by another build


def test_loader_override_with_another_library_says_why():
    out = run_python(
        """
        try:
            import progress_engine
        except ImportError as error:
            print(error)
        """,
        PROGRESS_ENGINE_LIB="libc.so.6",
    )
    assert "libc.so.6: loads, but has no progress_version_number" in out

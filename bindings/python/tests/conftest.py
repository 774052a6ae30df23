"""Shared fixtures. The tests use the real libProgressEngine.so (built with `make build`)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import pytest

# The tests run from a checkout without installing the package, also when pytest is started from the
# repository root (`make test-python`), where this folder's pyproject settings do not apply.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, PACKAGE_ROOT)

from progress_engine import ProgressTracker  # noqa: E402

def pytest_configure(config):
    # An exception in a finaliser (a generator closed by GC, a weakref callback) is a bug, not noise.
    config.addinivalue_line("filterwarnings", "error::pytest.PytestUnraisableExceptionWarning")


#: The engine's default throttle_ms; the counter tests' deadlines are derived from it.
THROTTLE_MS = 100


@pytest.fixture
def fresh_python() -> Callable[..., subprocess.CompletedProcess]:
    """run(code, timeout=60): `code` (dedented) in a new interpreter that imports this checkout's package, for what
    this process must not get (a deadlock, a signal, module state set once); its output captured as text."""
    def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        path = os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")]))
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ, PYTHONPATH=path),
                              capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def tracker():
    """A fresh engine per test, closed afterwards."""
    with ProgressTracker(throttle_ms=THROTTLE_MS) as opened:
        yield opened


@pytest.fixture
def strict_tracker():
    """As `tracker`, but a refused update raises (ProgressTracker(strict=True)) instead of warning."""
    with ProgressTracker(throttle_ms=THROTTLE_MS, strict=True) as opened:
        yield opened


@pytest.fixture
def throttle_ms() -> int:
    return THROTTLE_MS


@pytest.fixture
def poll() -> Callable[..., Any]:
    """poll(read, accept, timeout_s): calls read() until accept(value); returns the last value read
    (so a failing assertion shows what the engine held at the deadline)."""

    def poll(read: Callable[[], Any], accept: Callable[[Any], bool], timeout_s: float) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = read()
            if accept(value) or time.monotonic() >= deadline:
                return value
            time.sleep(0.002)

    return poll


@pytest.fixture
def no_engine_env(monkeypatch):
    """The default tracker reads these; a developer's shell must not change what the tests see."""
    for variable in ("PROGRESS_ENGINE_CONFIG", "PROGRESS_LISTEN", "PROGRESS_REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)

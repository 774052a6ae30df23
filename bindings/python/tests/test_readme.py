"""The README's runnable examples, each run as a user would paste it: a fresh interpreter, the package on the path,
no PROGRESS_* variable of the developer's shell."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import progress_engine

PACKAGE_ROOT = Path(progress_engine.__file__).resolve().parent.parent
README = PACKAGE_ROOT / "README.md"


def readme_python(heading: str) -> str:
    """The first ```python block of the README section `## heading`."""
    section = README.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def run_example(source: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), environment.get("PYTHONPATH")]))
    if "PROGRESS_ENGINE_LIB" in os.environ:  # the library under test, not whichever the loader finds first
        environment["PROGRESS_ENGINE_LIB"] = os.environ["PROGRESS_ENGINE_LIB"]
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", source], env=environment, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def test_runner_safe_example():
    run_example(readme_python("Runner-safe by default"))


def test_runner_safe_example_raises_when_strict():
    """The same loop, with PROGRESS_STRICT=1: the example's first refusal raises, so it must fail."""
    with pytest.raises(AssertionError, match="RangeError"):
        run_example(readme_python("Runner-safe by default"), PROGRESS_STRICT="1")


def test_cancel_example():
    out = run_example(readme_python("Cancel")).stdout.splitlines()
    assert out == ["img-9: cancelled - user pressed Cancel", "render-3: cancelled"], out


def test_tqdm_example():
    pytest.importorskip("tqdm")
    out = run_example(readme_python("tqdm integration")).stdout.splitlines()
    assert out == ["1.0 Denoising", "completed", "1.0 Uploading"], out

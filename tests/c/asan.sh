#!/usr/bin/env bash
# Runs tests/c/stress.c and the C examples against an AddressSanitizer build of libProgressEngine
# (with LeakSanitizer); fails on any report. The errors example walks the bad-input paths.
#
# The ASan runtime must live in the executable: each program is linked with the toolchain's
# clang -fsanitize=address. lld is used because GNU gold warns about every ASan helper symbol.
#
# Usage: tests/c/asan.sh
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
toolchain=$(dirname "$(readlink -f "$(command -v swift)")")   # .../usr/bin
scratch="$root/.build-asan"
lib="$scratch/debug"

cd "$root"
swift build -c debug --product ProgressEngine --sanitize=address --scratch-path "$scratch"

build() { # build NAME SOURCE
    "$toolchain/clang" -fsanitize=address -fno-omit-frame-pointer -fuse-ld=lld -g -O1 -std=c11 \
        -Wall -Wextra -Werror -pthread -I "$root/include" "$2" -o "$scratch/$1" \
        -L "$lib" -Wl,-rpath,"$lib" -lProgressEngine -lm
}

failed=0
run() { # run NAME [ARGS...]
    local name=$1 log="$scratch/$1-asan.log" status=0
    shift
    ASAN_OPTIONS="detect_leaks=1 ${ASAN_OPTIONS:-}" "$scratch/$name" "$@" >"$log" 2>&1 || status=$?
    if grep -q "ERROR: \(Address\|Leak\)Sanitizer" "$log" || [ "$status" -ne 0 ]; then
        cat "$log"
        echo "asan.sh: $name FAILED (exit status $status, log: $log)" >&2
        failed=1
    else
        echo "asan.sh: $name ok"
    fi
}

build stress tests/c/stress.c
for example in basic threads errors; do
    build "$example" "bindings/c-examples/$example/main.c"
done

run stress
run basic
run threads 4 500
run errors
if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "asan.sh: no AddressSanitizer or LeakSanitizer reports"

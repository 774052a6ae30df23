#!/usr/bin/env bash
# Runs the C stress programs and the C examples against an AddressSanitizer build of libProgressEngine (with
# LeakSanitizer); fails on any report or failed check:
#   stress, close_stress, fleet_stress   as in tests/c/tsan.sh (fleet_stress against a redis-server this script
#                                        starts on a free loopback port and stops at the end);
#   basic, threads, errors               the C examples; errors walks the bad-input paths.
#
# The ASan runtime must live in the executable: each program is linked with the toolchain's
# clang -fsanitize=address. lld is used because GNU gold warns about every ASan helper symbol.
#
# Usage: tests/c/asan.sh
#        FLEET_ARGS="runners tasks steps sessions pace_us" overrides fleet_stress's scale (default "4 120 256 10 1000")
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
toolchain=$(dirname "$(readlink -f "$(command -v swift)")")   # .../usr/bin
scratch="$root/.build-asan"
lib="$scratch/debug"

cd "$root"
. tests/c/redis.sh
trap stop_redis EXIT

swift build -c debug --product ProgressEngine --sanitize=address --scratch-path "$scratch"

build() { # build NAME SOURCE [LIBS...]
    local name=$1 source=$2
    shift 2
    "$toolchain/clang" -fsanitize=address -fno-omit-frame-pointer -fuse-ld=lld -g -O1 -std=c11 \
        -Wall -Wextra -Werror -pthread -I "$root/include" "$source" -o "$scratch/$name" \
        -L "$lib" -Wl,-rpath,"$lib" -lProgressEngine "$@" -lm
}

failed=0
run() { # run NAME [ARGS...]
    local name=$1 log="$scratch/$1-asan.log" status=0 started=$SECONDS
    shift
    ASAN_OPTIONS="detect_leaks=1 ${ASAN_OPTIONS:-}" "$scratch/$name" "$@" >"$log" 2>&1 || status=$?
    if grep -q "ERROR: \(Address\|Leak\)Sanitizer" "$log" || [ "$status" -ne 0 ]; then
        cat "$log"
        echo "asan.sh: $name FAILED (exit status $status, log: $log)" >&2
        failed=1
    else
        case $name in *stress) grep -v '^{"ts"' "$log" | tail -3 ;; esac
        echo "asan.sh: $name ok ($((SECONDS - started)) s)"
    fi
}

build stress tests/c/stress.c
build close_stress tests/c/close_stress.c -rdynamic -ldl
build fleet_stress tests/c/fleet_stress.c -lhiredis
for example in basic threads errors; do
    build "$example" "bindings/c-examples/$example/main.c"
done

run stress
run close_stress
start_redis
# shellcheck disable=SC2086 # FLEET_ARGS is a list of numbers
run fleet_stress "$REDIS_PORT" ${FLEET_ARGS:-4 120 256 10 1000}
stop_redis
run basic
run threads 4 500
run errors
if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "asan.sh: no AddressSanitizer or LeakSanitizer reports"

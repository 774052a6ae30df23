#!/usr/bin/env bash
# Runs the C stress programs against a ThreadSanitizer build of libProgressEngine; fails on any report or
# failed check:
#   stress        runner threads calling progress_update on one engine (tests/c/stress.c);
#   close_stress  progress_engine_close while the engine's own threads still change tasks, with the listener's
#                 context destruction slowed down (tests/c/close_stress.c);
#   fleet_stress  the listener and Redis write-through together: runners, WebSocket clients joining, leaving
#                 and reading slowly, REST, close with clients connected and work in flight
#                 (tests/c/fleet_stress.c), against a redis-server this script starts on a free loopback port
#                 and stops at the end;
#   fork_stress   fork() while threads are inside progress_update, the children using the engine (listener and
#                 Redis write-through) and the parent going on (tests/c/fork_stress.c), against the same
#                 redis-server, linked with an optimised TSan build of the library: in a debug build, unspecialised
#                 generic code calls into Swift's runtime (metadata lookups under the runtime's own locks, which
#                 have no fork handlers) on every update, and a fork then leaves the child waiting on a lock held
#                 by a thread it does not have (docs/THREADING.md, "Swift's runtime"). die_after_fork=0: TSan does not
#                 support threads started after a multi-threaded fork by default; the children's reports count.
#
# The library is instrumented but the TSan runtime must live in the executable, so each program is linked
# with the toolchain's clang -fsanitize=thread. That static runtime includes libdispatch interceptors, which
# need libdispatch and libBlocksRuntime from the Swift toolchain at link time.
#
# Usage: tests/c/tsan.sh [threads] [calls]   (passed to stress; default 8 x 10000)
#        FLEET_ARGS="runners tasks steps sessions pace_us" overrides fleet_stress's scale (default "4 60 256 10 1000": at
#        120 tasks a runner its checks under TSan took over 3 minutes of a 2-core CI run; asan.sh runs 120)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
toolchain=$(dirname "$(readlink -f "$(command -v swift)")")   # .../usr/bin
swift_libs="$toolchain/../lib/swift/linux"
scratch="$root/.build-tsan"
lib="$scratch/debug"

cd "$root"
. tests/c/redis.sh
trap stop_redis EXIT

swift build -c debug --product ProgressEngine --sanitize=thread --scratch-path "$scratch"
swift build -c release --product ProgressEngine --sanitize=thread --scratch-path "$scratch"

build() { # build NAME SOURCE [LIBS...]; LIB=folder overrides the library's
    local name=$1 source=$2 with=${LIB:-$lib}
    shift 2
    "$toolchain/clang" -fsanitize=thread -g -O1 -std=c11 -Wall -Wextra -Werror -pthread \
        -I "$root/include" "$source" -o "$scratch/$name-tsan" \
        -L "$with" -Wl,-rpath,"$with" -lProgressEngine "$@" -lm \
        -L "$swift_libs" -Wl,-rpath,"$swift_libs" -ldispatch -lBlocksRuntime
}
build stress tests/c/stress.c
build close_stress tests/c/close_stress.c -rdynamic -ldl
build fleet_stress tests/c/fleet_stress.c -lhiredis
LIB="$scratch/release" build fork_stress tests/c/fork_stress.c

failed=0
run() { # run NAME [ARGS...]
    local name=$1 log="$scratch/$1-tsan.log" status=0 started=$SECONDS
    shift
    # halt_on_error=0: collect every report of the run, not just the first.
    TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
        "$scratch/$name-tsan" "$@" >"$log" 2>&1 || status=$?
    local reports
    reports=$(grep -c "WARNING: ThreadSanitizer" "$log" || true)
    if [ "$reports" -ne 0 ] || [ "$status" -ne 0 ]; then
        cat "$log"
        echo "tsan.sh: $name FAILED: $reports ThreadSanitizer report(s), exit status $status (log: $log)" >&2
        failed=1
    else
        grep -v '^{"ts"' "$log" || true   # the engine's JSON incident lines (Redis connected, ...) stay in the log
        echo "tsan.sh: $name ok, no ThreadSanitizer reports ($((SECONDS - started)) s)"
    fi
}

run stress "$@"
run close_stress
start_redis
# shellcheck disable=SC2086 # FLEET_ARGS is a list of numbers
run fleet_stress "$REDIS_PORT" ${FLEET_ARGS:-4 60 256 10 1000}
TSAN_OPTIONS="die_after_fork=0 ${TSAN_OPTIONS:-}" run fork_stress "$REDIS_PORT"
stop_redis

if [ "$failed" -ne 0 ]; then
    exit 1
fi
echo "tsan.sh: no ThreadSanitizer reports; stress, close_stress, fleet_stress and fork_stress passed"

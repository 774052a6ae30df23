#!/usr/bin/env bash
# Runs tests/c/stress.c against a ThreadSanitizer build of libProgressEngine; fails on any report.
#
# The library is instrumented but the TSan runtime must live in the executable, so stress is linked
# with the toolchain's clang -fsanitize=thread. That static runtime includes libdispatch
# interceptors, which need libdispatch and libBlocksRuntime from the Swift toolchain at link time.
#
# Usage: tests/c/tsan.sh [threads] [calls]   (passed to stress; default 8 x 10000)
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
toolchain=$(dirname "$(readlink -f "$(command -v swift)")")   # .../usr/bin
swift_libs="$toolchain/../lib/swift/linux"
scratch="$root/.build-tsan"
lib="$scratch/debug"

cd "$root"
swift build -c debug --product ProgressEngine --sanitize=thread --scratch-path "$scratch"

"$toolchain/clang" -fsanitize=thread -g -O1 -std=c11 -Wall -Wextra -Werror -pthread \
    -I "$root/include" tests/c/stress.c -o "$scratch/stress-tsan" \
    -L "$lib" -Wl,-rpath,"$lib" -lProgressEngine -lm \
    -L "$swift_libs" -Wl,-rpath,"$swift_libs" -ldispatch -lBlocksRuntime

log="$scratch/stress-tsan.log"
status=0
# halt_on_error=0: collect every report of the run, not just the first.
TSAN_OPTIONS="halt_on_error=0 second_deadlock_stack=1 ${TSAN_OPTIONS:-}" \
    "$scratch/stress-tsan" "$@" >"$log" 2>&1 || status=$?
cat "$log"
reports=$(grep -c "WARNING: ThreadSanitizer" "$log" || true)
if [ "$reports" -ne 0 ] || [ "$status" -ne 0 ]; then
    echo "tsan.sh: FAILED: $reports ThreadSanitizer report(s), stress exit status $status (log: $log)" >&2
    exit 1
fi
echo "tsan.sh: no ThreadSanitizer reports; stress passed"

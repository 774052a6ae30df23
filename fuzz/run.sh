#!/usr/bin/env bash
# Runs the libFuzzer targets (fuzz/README.md); fails if any of them finds a crash, a leak, a timeout or a
# broken invariant.
#
# Usage: fuzz/run.sh [--smoke] [target ...]        (default: every target)
#   FUZZ_SECONDS   seconds per target (default 60; --smoke: 4 at most, about 5 s with start-up)
#   --smoke        a short deterministic run for the test command: fixed seed, at most FUZZ_SMOKE_RUNS
#                  (default 50000) inputs or 4 s per target, whichever comes first
#
# Each run starts from the committed seeds in fuzz/corpus/<target> (which include every crash input found so
# far, so those are re-checked first) and writes what it learns to .build-fuzz/corpus/<target> (--smoke: a
# fresh .build-fuzz/smoke/<target>), never into the
# repository. Crash inputs land in .build-fuzz/artifacts/<target>/.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
all=(json config event apply stages completion ws rest redis png deflate)
smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; shift; fi
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

fuzz/build.sh 2>&1 | grep -v "Cannot export local symbol '__asan" || true
bin=.build-fuzz/progress-fuzz
[ -x "$bin" ] || { echo "fuzz/run.sh: no $bin (build failed)" >&2; exit 1; }

failed=()
for t in "${targets[@]}"; do
    [ -d "fuzz/corpus/$t" ] || { echo "fuzz/run.sh: unknown target $t (known: ${all[*]})" >&2; exit 2; }
    work=".build-fuzz/corpus/$t"
    # The smoke run starts from the committed seeds only (with a fixed seed; still not bit-for-bit repeatable:
    # libFuzzer's comparison tracing sees addresses, which ASLR changes).
    if ((smoke)); then work=".build-fuzz/smoke/$t"; rm -rf "$work"; fi
    artifacts=".build-fuzz/artifacts/$t/"
    mkdir -p "$work" "$artifacts"
    if ((smoke)); then
        opts=(-seed=1 -runs="${FUZZ_SMOKE_RUNS:-50000}" -max_total_time="${FUZZ_SECONDS:-4}")
    else
        opts=(-max_total_time="${FUZZ_SECONDS:-60}")
    fi
    log=".build-fuzz/$t.log"
    start=$(date +%s%N)
    status=0
    PE_FUZZ_TARGET=$t "$bin" "${opts[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts" "$work" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(( ${execs:-0} * 1000 / (ms > 0 ? ms : 1) ))
    line=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -1 || true)
    cov=$(echo "$line" | grep -oE 'cov: [0-9]+ ft: [0-9]+' || true)
    printf 'fuzz %-10s %3d.%ds  %9s execs  %7s/s  %s  exit %d\n' "$t" $((ms / 1000)) $((ms % 1000 / 100)) "${execs:-?}" "${rate:-?}" "$cov" "$status"
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        grep -E 'ERROR:|SUMMARY|invariant|Fatal error|Test unit written|Base64' "$log" | head -20 >&2 || true
        echo "fuzz/run.sh: $t failed; full log: $log" >&2
    fi
done
if ((${#failed[@]})); then
    echo "fuzz/run.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: ${#targets[@]} target(s) clean"

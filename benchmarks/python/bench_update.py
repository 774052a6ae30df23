#!/usr/bin/env python3
"""Per-step cost of the Python hot path, side by side with tqdm.update(1).

Cases, each timed timeit-style (the statement in a bare loop, N calls, median of the repeats):
  tqdm.update(1)                  the bar the requirement compares with (output to os.devnull)
  empty ctypes call               progress_version_number(): the floor of any call into the library
  StepCounter.update()            our counter path: one 64-bit store, no call into the library
  update_progress_sync(...)       the tracker method without a message (counter path too)
  update_progress_sync(message=)  for reference: a real call into the engine per step
Then checks that the final step of both of ours reached the engine within throttle_ms.

Exit status: 0, 1 if a final step did not arrive in time, 2 if tqdm is not installed.
Usage: python3 benchmarks/python/bench_update.py [-n CALLS] [-r REPEATS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import timeit

from bench_support import tqdm  # the checkout's binding on sys.path; exits 2 without tqdm

from progress_engine import ProgressTracker  # noqa: E402
from progress_engine._lib import progress_version_number  # noqa: E402

THROTTLE_MS = 100  # the engine's default


def ns_per_call(statement: str, names: dict, calls: int, repeats: int) -> float:
    timer = timeit.Timer(statement, globals=names)
    timer.timeit(min(calls, 10_000))  # warm-up
    return statistics.median(timer.repeat(repeat=repeats, number=calls)) / calls * 1e9


def arrival_ms(tracker: ProgressTracker, task_id: str, deadline_s: float) -> "float | None":
    """Milliseconds until the engine shows the task's main stage at progress 1.0, or None."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        stages = tracker.get_task_progress_sync(task_id)["stages"]
        if stages["1"]["progress"] == 1.0:
            return (time.monotonic() - start) * 1000
        time.sleep(0.001)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--calls", type=int, default=1_000_000)
    parser.add_argument("-r", "--repeats", type=int, default=7)
    args = parser.parse_args()
    calls, repeats = args.calls, args.repeats
    # Every timed call counts one step, warm-up included: the counters end exactly at their total.
    total = calls * repeats + min(calls, 10_000)

    with ProgressTracker(throttle_ms=THROTTLE_MS) as tracker, open(os.devnull, "w") as devnull:
        for task_id in ("stepper", "direct", "message"):
            tracker.create_task_progress_sync(task_id, "bench")  # stages queue / processing / finalizing
        steps = tracker.stepper("stepper", total)
        tracker.update_progress_sync("direct", 1, total)  # attaches the task's counter
        bar = tqdm(total=total, file=devnull)
        names = {
            "bar": bar,
            "version": progress_version_number,
            "steps": steps,
            "update_progress_sync": tracker.update_progress_sync,
            "total": total,
        }
        # (row, statement, task whose final step must then reach the engine, last write before checking)
        cases = [
            ("tqdm.update(1)", "bar.update(1)", None, None),
            ("empty ctypes call", "version()", None, None),
            ("StepCounter.update()", "steps.update()", "stepper", None),  # already at total
            (
                "update_progress_sync(no message)",
                "update_progress_sync(task_id='direct', step=1, total_steps=total)",
                "direct",
                lambda: tracker.update_progress_sync(task_id="direct", step=total, total_steps=total),
            ),
            (
                "update_progress_sync(message=...)",
                "update_progress_sync(task_id='message', step=1, total_steps=total, message='m')",
                None,
                None,
            ),
        ]
        rows, arrivals = [], {}
        for name, statement, task_id, last_write in cases:
            rows.append((name, ns_per_call(statement, names, calls, repeats)))
            if task_id:
                if last_write:
                    last_write()
                arrivals[name] = arrival_ms(tracker, task_id, THROTTLE_MS / 1000)
        bar.close()

    baseline = rows[0][1]
    print(f"Python hot path: {calls:,} calls per repeat, median of {repeats} repeats, {sys.version.split()[0]}")
    print(f"{'case':<36}{'ns/call':>10}{'x tqdm':>9}")
    for name, ns in rows:
        print(f"{name:<36}{ns:>10.1f}{ns / baseline:>9.2f}")
    ok = True
    for name, ms in arrivals.items():
        if ms is None:
            ok = False
            print(f"final step of {name}: NOT in the engine within throttle_ms ({THROTTLE_MS} ms)")
        else:
            print(f"final step of {name}: in the engine after {ms:.1f} ms (throttle_ms {THROTTLE_MS})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

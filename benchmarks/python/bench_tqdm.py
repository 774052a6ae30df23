#!/usr/bin/env python3
"""What report_tqdm (progress_engine.integrations.tqdm) adds to a tqdm bar's update, beside tqdm's own cost.

Cases, each timed timeit-style (the statement in a bare loop, N calls), plain and reporting interleaved in
every repeat so that machine noise hits both alike, median of the repeats:
  tqdm.update(1)                          the baseline: a plain bar, output to os.devnull
  tqdm.update(1) in report_tqdm           the same bar class, created inside report_tqdm
  for _ in tqdm(range), per item [...]    a loop over a bar of 100,000 items, bar creation included,
                                          plain and in report_tqdm (tqdm's loop calls update() only
                                          when it redraws)
Target: the cost report_tqdm adds per update ≤ 1.0 × tqdm's own per-update cost (printed met / MISSED).
Then checks that the reporting bar's last count reached the task.

Exit status: 0; 1 if the last count did not reach the task; 2 if tqdm is not installed.
Usage: python3 benchmarks/python/bench_tqdm.py [-n CALLS] [-r REPEATS]
"""

from __future__ import annotations

import argparse
import contextvars
import os
import statistics
import sys
import timeit
from typing import Dict, List

from bench_support import tqdm  # the checkout's binding on sys.path; exits 2 without tqdm

from progress_engine import ProgressTracker  # noqa: E402
from progress_engine.integrations.tqdm import report_tqdm  # noqa: E402

TARGET = 1.0  # added cost per update, in tqdm updates
LOOP_ITEMS = 100_000  # per bar, so that making and closing the bar weighs little per item
CASES = (
    "tqdm.update(1)",
    "tqdm.update(1) in report_tqdm",
    "for _ in tqdm(range), per item",
    "for _ in tqdm(range), per item in report_tqdm",
)


def per_call_ns(timer: timeit.Timer, number: int, items: int = 1) -> float:
    return timer.timeit(number) / (number * items) * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--calls", type=int, default=1_000_000)
    parser.add_argument("-r", "--repeats", type=int, default=7)
    args = parser.parse_args()
    calls, repeats = args.calls, args.repeats
    total = calls * (repeats + 1)  # the warm-up counts too: the bars end exactly at their total
    loop_runs = max(1, calls // LOOP_ITEMS)
    samples: Dict[str, List[float]] = {name: [] for name in CASES}
    # report_tqdm's state is a ContextVar: code run in an empty Context makes plain bars even inside it.
    outside = contextvars.Context()

    with ProgressTracker() as tracker, open(os.devnull, "w") as devnull:
        tracker.create_task_progress_sync("bench", "bench")  # stages queue / processing / finalizing
        loop = timeit.Timer(f"for _ in tqdm(range({LOOP_ITEMS}), file=devnull): pass",
                            globals={"tqdm": tqdm, "devnull": devnull})
        with report_tqdm("bench", tracker):
            plain = outside.run(tqdm, total=total, file=devnull)
            reporting = tqdm(total=total, file=devnull)
            assert type(plain) is tqdm and type(reporting) is not tqdm
            updates = [
                ("tqdm.update(1)", timeit.Timer("bar.update(1)", globals={"bar": plain})),
                ("tqdm.update(1) in report_tqdm", timeit.Timer("bar.update(1)", globals={"bar": reporting})),
            ]
            for _, timer in updates:
                timer.timeit(calls)  # warm-up
            loops = [
                ("for _ in tqdm(range), per item", lambda: outside.run(per_call_ns, loop, loop_runs, LOOP_ITEMS)),
                ("for _ in tqdm(range), per item in report_tqdm", lambda: per_call_ns(loop, loop_runs, LOOP_ITEMS)),
            ]
            for repeat in range(repeats):
                # Alternate which goes first, so neither always runs right after the other.
                for name, timer in updates if repeat % 2 == 0 else reversed(updates):
                    samples[name].append(per_call_ns(timer, calls))
                for name, run in loops if repeat % 2 == 0 else reversed(loops):
                    samples[name].append(run())
            last = reporting.n
            step = tracker.get_task_progress_sync("bench")["stages"]["1"]["progress"]
            plain.close()
            reporting.close()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = medians["tqdm.update(1)"]
    print(f"tqdm integration: {calls:,} calls per repeat, median of {repeats} repeats, "
          f"Python {sys.version.split()[0]}, tqdm {sys.modules['tqdm'].__version__}")
    print(f"{'case':<48}{'ns/call':>10}{'x tqdm':>9}")
    for name, ns in medians.items():
        print(f"{name:<48}{ns:>10.1f}{ns / baseline:>9.2f}")
    added = medians["tqdm.update(1) in report_tqdm"] - baseline
    ratio = added / baseline
    print(f"added per update: {added:.1f} ns = {ratio:.2f} x tqdm's own update (target <= {TARGET:.1f} x): "
          f"{'met' if ratio <= TARGET else 'MISSED'}")
    per_item = medians["for _ in tqdm(range), per item in report_tqdm"] - medians["for _ in tqdm(range), per item"]
    print(f"added per iterated item: {per_item:.1f} ns (tqdm's loop calls update() only when it redraws)")
    # The loops' bars were nested in the big one, which drove the task again as each closed.
    reached = step == last / total
    print(f"count of the reporting bar in the task: {'yes' if reached else 'NO'} "
          f"(stage progress {step}, bar at {last} of {total})")
    return 0 if reached else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""track() per item, beside tqdm's own loop in the same run.

Cases, each a loop of N items of range(N) with an empty body, interleaved in every repeat so that machine noise
hits all alike, median of the repeats (ns per item):
  for _ in range(N)                      the floor: the loop alone
  for _ in tqdm(range(N))                the baseline: tqdm's iteration, output to os.devnull
  for _ in track(range(N), ...)          track(): the task created, one step per item, completed
Target: track() per item ≤ 1.0 × tqdm's (printed met / MISSED), both including the loop itself.
Then checks that the last step reached the task.

Exit status: 0; 1 if the task did not end completed at step N; 2 if tqdm is not installed.
Usage: python3 benchmarks/python/bench_track.py [-n ITEMS] [-r REPEATS]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, Iterable, List

from bench_support import tqdm  # the checkout's binding on sys.path; exits 2 without tqdm

from progress_engine import ProgressTracker, track  # noqa: E402


def per_item_ns(items: Iterable[int], n: int) -> float:
    start = time.perf_counter()
    for _ in items:
        pass
    return (time.perf_counter() - start) / n * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300_000, help="items per loop")
    parser.add_argument("-r", type=int, default=9, help="repeats (the median is reported)")
    args = parser.parse_args()
    n = args.n
    runs: Dict[str, List[float]] = {"loop": [], "tqdm": [], "track": []}
    with ProgressTracker() as tracker, open(os.devnull, "w") as devnull:
        for repeat in range(args.r):
            runs["loop"].append(per_item_ns(range(n), n))
            runs["tqdm"].append(per_item_ns(tqdm(range(n), file=devnull), n))
            runs["track"].append(per_item_ns(track(range(n), task_id=f"track-{repeat}", tracker=tracker), n))
        median = {name: statistics.median(values) for name, values in runs.items()}
        last = tracker.get_task_progress_sync(f"track-{args.r - 1}")
    ratio = median["track"] / median["tqdm"]
    print(f"track() per item vs tqdm's iteration: median ns per item over {args.r} loops of {n:,} items")
    print(f"  for _ in range(N)               {median['loop']:7.1f} ns   (the loop alone)")
    print(f"  for _ in tqdm(range(N))         {median['tqdm']:7.1f} ns   (baseline)")
    print(f"  for _ in track(range(N), ...)   {median['track']:7.1f} ns   = {ratio:.2f} x tqdm; "
          f"target <= 1.0 x: {'met' if ratio <= 1.0 else 'MISSED'}")
    stage = last["stages"][str(last["current_stage"])]
    if last["status"] != "completed" or last["overall_progress"] != 100:
        print(f"the last track() task did not complete: {last['status']}, stage {stage}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

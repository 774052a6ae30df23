#!/usr/bin/env python3
"""ETA accuracy: the engine's prediction against three plain baselines, on generated traces.

For each trace family (traces.py) the first --history traces are the "past" and the next --eval are
scored. All of them are replayed in one time-ordered stream through one engine (the public API, with
explicit timestamps), as a fleet would report them: a task's completion record exists only once that
task has completed. At 10/25/50/75/90 % of each scored task's real elapsed time, the remaining time
predicted by each method is compared with the real one.

Methods (each sees only what happened up to that moment):
  engine    the engine's "eta" (updated_at + eta_seconds)
  linear    A1111: elapsed / progress - elapsed, with the task's overall_progress, at the moment asked
  ema       tqdm, smoothing 0.3: EMA of progress gained and of time taken per change; (1 - P) / rate
            Both time from the start of execution (started_at), as A1111's job timer and a tqdm bar
            around the pipeline do; a queued task has no estimate from them.
  p75       the seed: 75th percentile of each stage's duration over completed tasks of the same
            template and quality; p75(current) x (1 - its progress) + p75 of each later stage,
            computed at each event and held until the next (the seed stores its "eta" on update)
A method that has no estimate yet counts as predicting 0 s (100 % error), as a user sees "ETA: --".

The engine also gets what a runner knows at creation: the job's size in metadata["workload"] (requested steps,
megapixels, frames, seconds of audio, tiles; traces.Trace.workload), unless --no-workload; and, on entering
model_loading, whether the model was read from disk or found resident ("variant": "cold" / "cached"), unless
--no-variant.

Errors: MAPE = mean of |predicted - real| / real remaining time; P90 = its 90th percentile.
Target: engine MAPE <= TARGET x the best baseline's at every checkpoint of every family; each row prints the
ratio and met / MISSED.

Usage: python3 benchmarks/eta/bench_eta.py [--seed N] [--history N] [--eval N] [--family NAME ...] [--no-workload]
Exit status 0 when the target holds everywhere, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from progress_engine import ProgressTracker  # noqa: E402

import traces  # noqa: E402

CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 0.90)
METHODS = ("engine", "linear", "ema", "p75")
BASELINES = ("linear", "ema", "p75")
EMA_SMOOTHING = 0.3
#: The engine's MAPE over the best baseline's, at most, at every checkpoint of every family (issue #18 item 5).
TARGET = 0.25


def percentile(sorted_values: List[float], q: float) -> float:
    """Linear interpolation between closest ranks, as numpy's default."""
    if not sorted_values:
        return math.nan
    position = (len(sorted_values) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def epoch_of(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Baselines:
    """The three baselines' state for one scored task, fed the task's TaskProgress after each event."""

    def __init__(self, trace: traces.Trace, p75_table: "P75Table") -> None:
        self.trace = trace
        self.p75_table = p75_table
        self.progress = 0.0  # overall, 0..1
        # tqdm's EMA: smoothed progress gained and seconds taken per change, bias-corrected.
        self.ema_dn = 0.0
        self.ema_dt = 0.0
        self.ema_calls = 0
        self.started: Optional[float] = None
        self.last_change = 0.0
        self.last_progress = 0.0
        self.p75_eta: Optional[float] = None

    def observe(self, ts: float, task: dict) -> None:
        remaining = self.p75_table.remaining(self.trace, task)
        self.p75_eta = None if remaining is None else ts + remaining
        self.progress = task["overall_progress"] / 100
        if self.started is None:
            if task["started_at"] is None:
                return
            self.started = epoch_of(task["started_at"])
            self.last_change, self.last_progress = self.started, self.progress
        gained, taken = self.progress - self.last_progress, ts - self.last_change
        if gained > 0 and taken > 0:
            self.ema_dn = EMA_SMOOTHING * gained + (1 - EMA_SMOOTHING) * self.ema_dn
            self.ema_dt = EMA_SMOOTHING * taken + (1 - EMA_SMOOTHING) * self.ema_dt
            self.ema_calls += 1
            self.last_change, self.last_progress = ts, self.progress

    def predict(self, now: float) -> Dict[str, Optional[float]]:
        out: Dict[str, Optional[float]] = {"linear": None, "ema": None, "p75": None}
        if self.started is not None and self.progress > 0:
            elapsed = now - self.started
            out["linear"] = elapsed / self.progress - elapsed
        if self.ema_calls:
            # tqdm's bias correction divides both EMAs by the same factor, so it cancels in the rate.
            out["ema"] = (1 - self.progress) * self.ema_dt / self.ema_dn
        if self.p75_eta is not None:
            out["p75"] = max(0.0, self.p75_eta - now)
        return out


class P75Table:
    """Stage durations of completed tasks per template + quality, as the seed's predictor keeps them."""

    def __init__(self) -> None:
        self.durations: Dict[Tuple[str, str], Dict[int, List[float]]] = {}
        self.cache: Dict[Tuple[str, str], Dict[int, float]] = {}

    def add(self, trace: traces.Trace) -> None:
        key = (trace.template_id, trace.quality)
        stages = self.durations.setdefault(key, {})
        for index, seconds in trace.stage_durations.items():
            stages.setdefault(index, []).append(seconds)
        self.cache.pop(key, None)

    def remaining(self, trace: traces.Trace, task: dict) -> Optional[float]:
        key = (trace.template_id, trace.quality)
        if key not in self.durations:
            return None
        if key not in self.cache:
            self.cache[key] = {i: percentile(sorted(v), 0.75) for i, v in self.durations[key].items()}
        p75 = self.cache[key]
        current = task["current_stage"]
        total = p75.get(current, 0.0) * (1 - task["stages"][str(current)]["progress"])
        for index in range(current + 1, task["total_stages"]):
            total += p75.get(index, 0.0)
        return total


def replay(family: traces.Family, history: int, evaluation: int, seed: int, workload: bool = True,
           variant: bool = True) -> List[dict]:
    """Replays the family through a fresh engine; one result row per scored task and checkpoint."""
    all_traces = traces.generate(family, history + evaluation, seed)
    scored = {t.task_id for t in all_traces[history:]}
    # (time, order at equal times: events before checkpoints, sequence) -> action
    stream: List[Tuple[float, int, int, str, traces.Trace, object]] = []
    seq = 0
    for trace in all_traces:
        stream.append((trace.created, 0, seq, "create", trace, None))
        seq += 1
        for ts, name, data in trace.events:
            stream.append((ts, 0, seq, "event", trace, (name, data)))
            seq += 1
        if trace.task_id in scored:
            for fraction in CHECKPOINTS:
                stream.append((trace.created + fraction * trace.total, 1, seq, "check", trace, fraction))
                seq += 1
    stream.sort(key=lambda item: item[:3])

    rows: List[dict] = []
    p75_table = P75Table()
    baselines: Dict[str, Baselines] = {}
    with ProgressTracker() as tracker:
        if family.registered:
            tracker.register_template_stages_sync(family.template_id, family.registered)
        for ts, _, _, kind, trace, payload in stream:
            tid = trace.task_id
            if kind == "create":
                task = tracker.create_task_progress_sync(
                    tid, trace.template_id, trace.category, quality=trace.quality,
                    resource_config=trace.resource_config,
                    metadata={"workload": trace.workload} if workload else None, timestamp=ts)
                if tid in scored:
                    baselines[tid] = Baselines(trace, p75_table)
                    baselines[tid].observe(ts, task)
            elif kind == "event":
                name, data = payload
                if not variant:
                    data = {k: v for k, v in data.items() if k != "variant"}
                tracker.send_event_sync(tid, name, dict(data, timestamp=ts))
                if name == "execution_complete":
                    p75_table.add(trace)
                    baselines.pop(tid, None)
                elif tid in scored:
                    baselines[tid].observe(ts, tracker.get_task_progress_sync(tid))
            else:
                task = tracker.get_task_progress_sync(tid)
                real = trace.end - ts
                predicted = baselines[tid].predict(ts)
                predicted["engine"] = None if task["eta"] is None else max(0.0, epoch_of(task["eta"]) - ts)
                rows.append({
                    "family": family.name, "checkpoint": payload, "real": real,
                    "confidence": task["eta_confidence"],
                    "status": task["status"], "stage": task["current_stage"],
                    "progress": task["overall_progress"],
                    "error": {m: 1.0 if predicted[m] is None else abs(predicted[m] - real) / real for m in METHODS},
                    "covered": {m: predicted[m] is not None for m in METHODS},
                    "predicted": predicted, "task_id": tid,
                })
    return rows


def mape(rows: List[dict], method: str) -> Tuple[float, float]:
    errors = sorted(r["error"][method] for r in rows)
    return sum(errors) / len(errors), percentile(errors, 0.9)


def spearman(xs: List[float], ys: List[float]) -> float:
    def ranks(values: List[float]) -> List[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else math.nan


def report(rows: List[dict], families: List[str]) -> bool:
    held = True
    print("MAPE / P90 of the remaining-time error (%), per checkpoint of real elapsed time")
    header = f"{'family':8} {'at':>4}  " + "  ".join(f"{m:>13}" for m in METHODS) + f"  {'/ best':>6}  target"
    for family in families:
        print()
        print(header)
        for fraction in CHECKPOINTS:
            subset = [r for r in rows if r["family"] == family and r["checkpoint"] == fraction]
            stats = {m: mape(subset, m) for m in METHODS}
            best = min(stats[b][0] for b in BASELINES)
            ratio = stats["engine"][0] / best if best else math.inf
            ok = ratio <= TARGET
            held &= ok
            cells = "  ".join(f"{100 * stats[m][0]:6.1f}/{100 * stats[m][1]:6.1f}" for m in METHODS)
            print(f"{family:8} {int(fraction * 100):3d}%  {cells}  {ratio:5.2f}x  {'met' if ok else 'MISSED'}")
        covered = [r for r in rows if r["family"] == family]
        share = {m: sum(r["covered"][m] for r in covered) / len(covered) for m in METHODS}
        print(f"{'':8} with an estimate: " + ", ".join(f"{m} {100 * share[m]:.0f}%" for m in METHODS))

    print()
    print("eta_confidence against the engine's error (all families and checkpoints)")
    scored = [r for r in rows if r["confidence"] is not None]
    scored.sort(key=lambda r: r["confidence"])
    bins = 5
    print(f"{'confidence':>17}  {'points':>6}  {'MAPE':>6}  {'median':>6}  {'P90':>6}")
    for b in range(bins):
        part = scored[b * len(scored) // bins:(b + 1) * len(scored) // bins]
        errors = sorted(r["error"]["engine"] for r in part)
        print(f"{part[0]['confidence']:7.2f} .. {part[-1]['confidence']:5.2f}  {len(part):6d}  "
              f"{100 * sum(errors) / len(errors):6.1f}  {100 * percentile(errors, 0.5):6.1f}  "
              f"{100 * percentile(errors, 0.9):6.1f}")
    rho = spearman([r["confidence"] for r in scored], [r["error"]["engine"] for r in scored])
    print(f"Spearman rank correlation of confidence and error: {rho:+.2f} (negative: more confident, smaller error)")
    for status in ("queued", "executing"):
        part = [r for r in scored if r["status"] == status]
        if part:
            print(f"{status:>9}: mean confidence {sum(r['confidence'] for r in part) / len(part):.2f}, "
                  f"MAPE {100 * sum(r['error']['engine'] for r in part) / len(part):.1f} % ({len(part)} points)")
    missing = len(rows) - len(scored)
    if missing:
        print(f"points without a confidence (no estimate): {missing}")
    return held


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--history", type=int, default=300, help="past traces per family")
    parser.add_argument("--eval", type=int, default=1000, help="scored traces per family")
    parser.add_argument("--family", action="append", choices=[f.name for f in traces.FAMILIES])
    parser.add_argument("--json", help="also write every scored point (predictions, confidence, stage) to this file")
    parser.add_argument("--no-workload", action="store_true",
                        help="create tasks without metadata[\"workload\"] (the job's size), as before it was passed")
    parser.add_argument("--no-variant", action="store_true",
                        help="leave out the loading stage's \"variant\" (cold / cached) from the runner's events")
    args = parser.parse_args()
    families = [f for f in traces.FAMILIES if not args.family or f.name in args.family]
    started = time.monotonic()
    rows: List[dict] = []
    for family in families:
        rows += replay(family, args.history, args.eval, args.seed, workload=not args.no_workload,
                       variant=not args.no_variant)
    print(f"ETA benchmark: seed {args.seed}, {args.history} past + {args.eval} scored traces per family, "
          f"{'without' if args.no_workload else 'with'} the workload, {'without' if args.no_variant else 'with'} "
          f"the loading variant, replayed in {time.monotonic() - started:.1f} s")
    print()
    held = report(rows, [f.name for f in families])
    if args.json:
        Path(args.json).write_text(json.dumps(rows))
    print()
    print(f"target (engine MAPE <= {TARGET:.2f}x the best baseline's at every checkpoint of every family): "
          f"{'held' if held else 'NOT held'}; {time.monotonic() - started:.1f} s in all")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())

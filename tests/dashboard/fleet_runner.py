"""A fleet for the dashboard's measurements: one engine with a listener, N live tasks, each stepped at a rate.

Run as a separate process (tests/dashboard/test_dashboard_perf.py starts it), so the runner's Python and the engine
do not share the test process's interpreter lock with Selenium. Prints the listener's URL once every task exists,
then steps the tasks round-robin, paced to `hz` updates per task per second, until stdin closes or the time is up;
at the end prints the update rate it reached.

With `create_per_s`, it prints the URL first, waits for a line on stdin, and creates the tasks at that pace: a page
subscribed before they exist gets them as they come. A page that subscribes to "*" when 10,000 tasks exist is sent
their 10,000 states at once, which is the listener's bound on a client's unsent messages (4008, Listener.swift).

    python3 tests/dashboard/fleet_runner.py N [hz] [seconds] [create_per_s]
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python"))

from progress_engine import ProgressTracker  # noqa: E402

TEMPLATES = [("stable-diffusion-xl", "image_generation"), ("video-gen-v1", "video_generation"),
             ("audio-gen", "audio_generation")]
STEPS = 100_000  # not reached in a measurement (at most 30 steps a second): the tasks stay live


def first_step(i: int) -> int:
    """Tasks spread over the bar, so a screenshot shows a fleet rather than one figure."""
    return 1 + (i * 7919) % 90_000


def main() -> None:
    n = int(sys.argv[1])
    hz = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0
    create_per_s = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    # The default throttle_ms (100 ms) passes each task's updates at up to 10 Hz: what a page sees from a fleet.
    tracker = ProgressTracker(listen="127.0.0.1:0", retention_seconds=3600)
    ids = [f"fleet-{i:05d}" for i in range(n)]
    if create_per_s:
        print(json.dumps({"url": tracker.url, "tasks": 0}), flush=True)
        sys.stdin.readline()
    began = time.monotonic()
    for i, task_id in enumerate(ids):
        template, category = TEMPLATES[i % len(TEMPLATES)]
        tracker.create_task_progress_sync(task_id, template, category)
        tracker.update_progress_sync(task_id, first_step(i), STEPS, "warming up")
        if create_per_s:
            delay = began + (i + 1) / create_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps({"url": tracker.url, "tasks": n}), flush=True)

    step = [first_step(i) for i in range(n)]
    updates = 0
    start = time.monotonic()
    deadline = start + seconds
    period = 1.0 / hz
    tick = start
    while not stop.is_set() and time.monotonic() < deadline:
        for i, task_id in enumerate(ids):
            step[i] += 1 + (i % 3)
            tracker.update_progress_sync(task_id, step[i], STEPS, f"Step {step[i]}")
        updates += n
        tick += period
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()  # behind: go on at the rate the machine allows
    elapsed = time.monotonic() - start
    print(json.dumps({"updates": updates, "seconds": round(elapsed, 2),
                      "per_task_hz": round(updates / max(elapsed, 1e-9) / n, 2)}), flush=True)
    tracker.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

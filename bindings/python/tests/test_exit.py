"""A tracker still open at interpreter exit is closed then (README "Never break the job"): after the calls that
daemon threads had already made into its engine returned, never under them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import progress_engine as pe

BINDINGS = os.path.dirname(os.path.dirname(pe.__file__))

# A daemon thread reads a task the engine does not hold, so the engine asks Redis: here a socket that accepts
# and never answers, so a read that is not skipped (the engine skips Redis for a second after a failure) blocks
# for its 200 ms timeout. The main thread exits while the daemon, calling in a loop, is inside such a read: two
# slow reads give their period.
RUNNER = textwrap.dedent("""
    import socket, sys, threading, time
    sys.path.insert(0, BINDINGS)
    from progress_engine import ProgressTracker, get_progress_tracker_sync

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    tracker = ProgressTracker(redis_url=f"redis://127.0.0.1:{hole.getsockname()[1]}")
    default = get_progress_tracker_sync()  # another open tracker, closed at exit too
    default.create_task_progress_sync("local", "sdxl")
    slow_starts = []
    two_slow = threading.Event()

    def reader():
        while True:
            start = time.monotonic()
            try:
                tracker.get_task_progress_sync("elsewhere")
            except Exception as error:
                if type(error).__name__ != "NotFoundError":
                    print("reader stopped by", type(error).__name__, flush=True)
                    return
            took = time.monotonic() - start
            if took > 0.15:
                print(f"read returned after {took:.2f} s", flush=True)
                slow_starts.append(start)
                if len(slow_starts) == 2:
                    two_slow.set()

    def stepper():
        while True:
            try:
                default.update_progress_sync("local", 1, 2, message="m")
            except Exception as error:
                print("stepper stopped by", type(error).__name__, flush=True)
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=stepper, daemon=True).start()
    assert two_slow.wait(10), "no reads reached the never-answering Redis"
    period = slow_starts[1] - slow_starts[0]
    time.sleep(max(0.0, slow_starts[1] + 2 * period + 0.08 - time.monotonic()))  # inside the fourth slow read
    print("main exits", flush=True)
""")


def test_exit_waits_for_calls_in_flight_then_closes():
    env = {**os.environ, "PYTHONPATH": BINDINGS}
    env.pop("PROGRESS_REDIS_URL", None)
    env.pop("PROGRESS_ENGINE_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", f"BINDINGS = {BINDINGS!r}\n" + RUNNER], capture_output=True,
                          text=True, env=env, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    exits = lines.index("main exits")
    after = lines[exits + 1:]
    # The read in flight at exit returned (the engine was not closed under it), then both threads found
    # their trackers closed.
    returned = [i for i, x in enumerate(after) if x.startswith("read returned after")]
    assert returned and returned[0] < after.index("reader stopped by StateError"), lines
    assert sorted(x for x in after if "stopped" in x) == ["reader stopped by StateError",
                                                           "stepper stopped by StateError"], lines
    assert "left open" not in done.stderr, done.stderr[-2000:]

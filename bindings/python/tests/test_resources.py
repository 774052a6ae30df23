"""Resource monitoring (SPEC §12): the engine's sampler fills each executing task's resource_usage every
resource_interval_ms (process CPU %, resident memory from /proc; GPU utilisation and memory through NVML
when libnvidia-ml.so.1 loads, null otherwise), a runner's own figures (the "resources" event) take
precedence, and peaks are kept in resource_peaks."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any, Callable, Dict, List

import pytest

from progress_engine import JSONError, ProgressTracker, RangeError, Stage, StateError

INTERVAL_MS = 100
DEADLINE_S = 10.0
FLAT = "resources-flat"
FIELDS = ("cpu_percent", "memory_mb", "gpu_percent", "gpu_memory_mb")


def _nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


NVML = _nvml_present()


@pytest.fixture
def rtracker():
    with ProgressTracker(resource_interval_ms=INTERVAL_MS) as tracker:
        tracker.register_template_stages_sync(FLAT, [Stage("work", "Working", 1.0)])
        yield tracker


def start(tracker: ProgressTracker, task: str) -> None:
    tracker.create_task_progress_sync(task, FLAT)
    tracker.send_event_sync(task, "execution_progress", {"step": 1, "total_steps": 10})
    assert tracker.get_task_progress_sync(task)["status"] == "executing"


def usage(tracker: ProgressTracker, task: str) -> Dict[str, Any]:
    return tracker.get_task_progress_sync(task)["resource_usage"]


def peaks(tracker: ProgressTracker, task: str) -> Dict[str, Any]:
    return tracker.get_task_progress_sync(task)["resource_peaks"]


def wait_for(read: Callable[[], Any], accept: Callable[[Any], bool], timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if accept(value) or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


def watch(tracker: ProgressTracker, task: str, seconds: float, field: str) -> List[float]:
    """The field's values seen over `seconds` (sleeping between reads, so this thread burns nothing)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = usage(tracker, task)[field]
        if value is not None:
            seen.append(value)
        time.sleep(INTERVAL_MS / 1000 / 2)
    return seen


class Burner:
    """Burns one core in a Python thread (the GIL is released by the watcher's sleeps)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        x = 0
        while not self._stop.is_set():
            for i in range(20000):
                x = (x * 31 + i) & 0xFFFF

    def __enter__(self) -> "Burner":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def test_sampler_fills_executing_tasks(rtracker):
    start(rtracker, "t")
    got = wait_for(lambda: usage(rtracker, "t"), lambda u: u["cpu_percent"] is not None and u["memory_mb"] is not None)
    assert got["cpu_percent"] >= 0 and got["memory_mb"] > 10, got  # a Python process holds more than 10 MB
    if NVML:
        assert got["gpu_percent"] is not None and got["gpu_memory_mb"] is not None, got
    else:
        # No NVML here: unknown, never an error and never 0.
        assert got["gpu_percent"] is None and got["gpu_memory_mb"] is None, got
        assert peaks(rtracker, "t")["gpu_percent"] is None


def test_only_executing_tasks_are_sampled(rtracker):
    rtracker.create_task_progress_sync("queued", "sdxl", "image_generation")  # in its "queue" stage
    start(rtracker, "running")
    start(rtracker, "done")
    wait_for(lambda: usage(rtracker, "done"), lambda u: u["memory_mb"] is not None)
    rtracker.complete_task_sync("done")
    frozen = rtracker.get_task_progress_sync("done")
    wait_for(lambda: usage(rtracker, "running"), lambda u: u["cpu_percent"] is not None)
    time.sleep(5 * INTERVAL_MS / 1000)
    assert rtracker.get_task_progress_sync("queued")["status"] == "queued"
    assert usage(rtracker, "queued") == dict.fromkeys(FIELDS)
    after = rtracker.get_task_progress_sync("done")
    assert (after["resource_usage"], after["resource_peaks"], after["seq"]) == (
        frozen["resource_usage"],
        frozen["resource_peaks"],
        frozen["seq"],
    )


def _measured(tracker: ProgressTracker, task: str, seconds: float) -> tuple:
    """(engine's cpu_percent readings, this process's CPU % over the same time from os.times())."""
    cpu0, wall0 = sum(os.times()[:2]), time.monotonic()
    seen = watch(tracker, task, seconds, "cpu_percent")
    return seen, 100 * (sum(os.times()[:2]) - cpu0) / (time.monotonic() - wall0)


def test_cpu_figure_moves_when_a_thread_burns_cpu(rtracker):
    """The engine's figure follows the process's real CPU use (os.times() over the same window: on a
    loaded machine the burning thread may get well under one core, so absolute thresholds would lie)."""
    start(rtracker, "t")
    wait_for(lambda: usage(rtracker, "t"), lambda u: u["cpu_percent"] is not None)
    idle, idle_ref = _measured(rtracker, "t", 0.8)
    with Burner():
        time.sleep(2 * INTERVAL_MS / 1000)  # a full interval of burning
        busy, busy_ref = _measured(rtracker, "t", 1.5)
    after, after_ref = _measured(rtracker, "t", 0.8)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    figures = f"idle {idle} (os {idle_ref:.0f}), busy {busy} (os {busy_ref:.0f}), after {after} (os {after_ref:.0f})"
    assert busy_ref >= idle_ref + 15, "the burning thread got no CPU: " + figures
    # Quantised to clock ticks (10 ms per 100 ms interval = 10 points), averaged over the window.
    assert abs(mean(busy) - busy_ref) <= 10 + 0.25 * busy_ref, figures
    assert mean(busy) >= mean(idle) + 0.5 * (busy_ref - idle_ref), figures
    assert mean(after[-4:]) <= mean(busy) - 0.5 * (busy_ref - after_ref), figures  # and it comes back down
    assert peaks(rtracker, "t")["cpu_percent"] >= max(busy)


def test_memory_figure_moves_when_memory_is_allocated(rtracker):
    np = pytest.importorskip("numpy")
    start(rtracker, "t")
    before = wait_for(lambda: usage(rtracker, "t")["memory_mb"], lambda m: m is not None)
    time.sleep(2 * INTERVAL_MS / 1000)
    before = usage(rtracker, "t")["memory_mb"]
    block = np.ones(200 * 1024 * 1024, np.uint8)  # 200 MiB, every page written
    grown = wait_for(lambda: usage(rtracker, "t")["memory_mb"], lambda m: m >= before + 180)
    assert grown >= before + 180, (before, grown)
    assert block[-1] == 1
    del block  # numpy's big blocks are mmap'ed: freeing returns them to the system
    shrunk = wait_for(lambda: usage(rtracker, "t")["memory_mb"], lambda m: m <= grown - 150)
    assert shrunk <= grown - 150, (grown, shrunk)
    # The peak is kept.
    assert peaks(rtracker, "t")["memory_mb"] >= grown


def test_runner_figures_take_precedence(rtracker):
    np = pytest.importorskip("numpy")
    start(rtracker, "t")
    wait_for(lambda: usage(rtracker, "t"), lambda u: u["cpu_percent"] is not None)
    rtracker.send_event_sync("t", "resources", {"cpu_percent": 12.5, "gpu_percent": 77, "gpu_memory_mb": 2048})
    assert usage(rtracker, "t")["cpu_percent"] == 12.5
    assert (usage(rtracker, "t")["gpu_percent"], usage(rtracker, "t")["gpu_memory_mb"]) == (77, 2048)
    # The sampler keeps filling what the runner did not report (memory) and leaves the rest alone,
    # even while the process burns CPU.
    base = usage(rtracker, "t")["memory_mb"]
    with Burner():
        block = np.ones(120 * 1024 * 1024, np.uint8)
        grown = wait_for(lambda: usage(rtracker, "t")["memory_mb"], lambda m: m >= base + 100)
        cpu_seen = watch(rtracker, "t", 0.6, "cpu_percent")
    assert grown >= base + 100, (base, grown)
    assert set(cpu_seen) == {12.5}, cpu_seen
    u = usage(rtracker, "t")
    assert (u["cpu_percent"], u["gpu_percent"], u["gpu_memory_mb"]) == (12.5, 77, 2048), u
    # Once the runner reports memory too, that is what shows.
    rtracker.send_event_sync("t", "resources", {"memory_mb": 4321})
    del block
    time.sleep(5 * INTERVAL_MS / 1000)
    assert usage(rtracker, "t")["memory_mb"] == 4321
    # Peaks: over the sampler's and the runner's figures alike.
    rtracker.send_event_sync("t", "resources", {"gpu_percent": 10, "gpu_memory_mb": 100, "cpu_percent": 1})
    u, p = usage(rtracker, "t"), peaks(rtracker, "t")
    assert (u["gpu_percent"], u["gpu_memory_mb"], u["cpu_percent"]) == (10, 100, 1), u
    assert (p["gpu_percent"], p["gpu_memory_mb"], p["memory_mb"]) == (77, 2048, 4321), p
    assert p["cpu_percent"] >= 12.5


def test_runner_figures_without_a_sampler_reading(rtracker):
    """A runner may report before the first sample and for fields the sampler never knows (GPU here)."""
    start(rtracker, "t")
    rtracker.send_event_sync("t", "resources", {"gpu_memory_mb": 512.5})
    got = usage(rtracker, "t")
    assert got["gpu_memory_mb"] == 512.5, got
    if not NVML:
        assert got["gpu_percent"] is None, got
    assert peaks(rtracker, "t")["gpu_memory_mb"] == 512.5


@pytest.mark.parametrize(
    "data, error",
    [
        ({"cpu_percent": -1}, RangeError),
        ({"memory_mb": -0.5}, RangeError),
        ({"gpu_percent": "high"}, JSONError),
        ({"cpu": 5}, JSONError),
        ('{"cpu_percent": ', JSONError),
    ],
)
def test_bad_runner_figures_change_nothing(rtracker, data, error):
    rtracker.strict = True
    start(rtracker, "t")
    rtracker.send_event_sync("t", "resources", {"cpu_percent": 3, "memory_mb": 30})
    before = rtracker.get_task_progress_sync("t")
    with pytest.raises(error):
        rtracker.send_event_sync("t", "resources", data)
    after = rtracker.get_task_progress_sync("t")
    assert after["resource_usage"]["cpu_percent"] == 3 and after["resource_usage"]["memory_mb"] == 30
    assert after["resource_peaks"] == before["resource_peaks"]


def test_finished_tasks_take_no_figures(rtracker):
    rtracker.strict = True
    start(rtracker, "t")
    rtracker.complete_task_sync("t")
    with pytest.raises(StateError):
        rtracker.send_event_sync("t", "resources", {"cpu_percent": 50})


def test_samples_do_not_flood_the_history(rtracker):
    """Each sample is a change (watchers see it), but a run of samples keeps one history entry."""
    start(rtracker, "t")
    with Burner():
        time.sleep(12 * INTERVAL_MS / 1000)
    events = rtracker.get_history_sync("t")["events"]
    kinds = [e["type"] for e in events]
    assert kinds.count("resources") == 1, kinds
    assert rtracker.get_task_progress_sync("t")["seq"] > len(events)  # samples did count as changes


def test_interval_is_validated():
    from progress_engine import ConfigError

    for bad in (0, 5, -1, "100"):
        with pytest.raises(ConfigError):
            ProgressTracker(resource_interval_ms=bad)


def test_samples_do_not_break_a_replay_with_explicit_timestamps(rtracker):
    """A runner replaying a recorded run passes past timestamps; the sampler running meanwhile must not
    make those look like they go backwards (nor move updated_at to the wall clock)."""
    t0 = time.time() - 1000
    rtracker.create_task_progress_sync("r", FLAT, timestamp=t0)
    rtracker.send_event_sync("r", "execution_progress", {"step": 1, "total_steps": 10, "timestamp": t0 + 1})
    wait_for(lambda: usage(rtracker, "r"), lambda u: u["memory_mb"] is not None)
    rtracker.send_event_sync("r", "execution_progress", {"step": 2, "total_steps": 10, "timestamp": t0 + 2})
    rtracker.send_event_sync("r", "execution_complete", {"timestamp": t0 + 3})
    assert rtracker.get_task_progress_sync("r")["status"] == "completed"

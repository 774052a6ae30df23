"""Runner-safe by default: an update the engine refuses never raises into the runner's code. The call returns,
the engine counts and logs the refusal, and one ProgressWarning per task and kind tells the user.
ProgressTracker(strict=True) or PROGRESS_STRICT=1 raises instead (test_errors.py checks each exception there)."""

from __future__ import annotations

import asyncio
import math
import time
import warnings

import pytest

import progress_engine as pe
from progress_engine import ProgressContext, ProgressTracker, ProgressWarning, StageStatus, track


def refusals(record):
    return [(w.message.task_id, type(w.message.error)) for w in record if issubclass(w.category, ProgressWarning)]


@pytest.fixture
def task(tracker):
    tracker.create_task_progress_sync("t", "sdxl", "image_generation")
    tracker.update_stage_sync("t", 1, StageStatus.IN_PROGRESS, 0.25, message="loading")
    return "t"


def invalid_updates(tracker):
    return tracker.stats_sync()["invalid_updates"]


def off_by_one_generation(tracker):
    """The issue's runner: a sampler that reports one step past its total, inside ProgressContext."""

    async def generate():
        async with ProgressContext(tracker, "render", "sdxl", "image_generation") as ctx:
            callback = ctx.get_callback()
            for step in range(1, 31):
                await callback("execution_progress", {"step": step, "total_steps": 29})
            return "image"

    return asyncio.run(generate())


def test_the_off_by_one_loop_runs_to_its_end_and_the_task_completes(tracker):
    with pytest.warns(ProgressWarning) as shown:
        assert off_by_one_generation(tracker) == "image"
    assert refusals(shown) == [("render", pe.RangeError)]
    assert "step 30 of total_steps 29" in str(shown[0].message)
    assert shown[0].filename == __file__  # points at the runner's line, not at the binding
    task = tracker.get_task_progress_sync("render")
    assert task["status"] == "completed" and task["error"] is None
    assert invalid_updates(tracker) == 1  # refused and counted by the engine
    warnings_logged = [e["message"] for e in tracker.get_logs_sync("render", level="warning")["logs"]]
    assert len(warnings_logged) == 1 and "PROGRESS_E_RANGE" in warnings_logged[0]


def test_the_off_by_one_loop_raises_when_strict(strict_tracker):
    with pytest.raises(pe.RangeError, match="step 30 of total_steps 29"):
        off_by_one_generation(strict_tracker)
    task = strict_tracker.get_task_progress_sync("render")
    assert task["status"] == "failed" and "step 30" in task["error"]


def test_one_warning_per_task_and_kind(tracker):
    for task_id in ("a", "b"):
        tracker.create_task_progress_sync(task_id, "sdxl")
        tracker.update_progress_sync(task_id, 1, 3, message="one")
    before = {task_id: tracker.get_task_progress_sync(task_id) for task_id in ("a", "b")}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")  # Python's own once-per-line filter must not be what hides repeats
        for _ in range(3):
            for task_id in ("a", "b"):
                tracker.update_progress_sync(task_id, 5, 3)  # RangeError
                tracker.update_stage_sync(task_id, 9, StageStatus.IN_PROGRESS, 0.5)  # RangeError too
                tracker.send_event_sync(task_id, "log", "{not json")  # JSONError
    assert sorted(refusals(record), key=str) == sorted(
        [("a", pe.RangeError), ("a", pe.JSONError), ("b", pe.RangeError), ("b", pe.JSONError)], key=str
    )
    assert invalid_updates(tracker) == 3 * 2 * 3
    assert {task_id: tracker.get_task_progress_sync(task_id) for task_id in ("a", "b")} == before


def arun(awaitable):
    """Awaits it from a coroutine of this file, as a runner does (the warning points at that line)."""

    async def runner():
        await awaitable

    asyncio.run(runner())


def _image():
    return (bytes(2 * 2 * 3), 2, 2, 3)


# (call, kind, counted by the engine): each a runner-facing call with data the engine or the binding refuses
# (the binding refuses a bad image shape before it reaches the engine, so that one is not counted).
REFUSED = {
    "step past total (counter path)": (lambda t: t.update_progress_sync("t", 5, 3), pe.RangeError, True),
    "step past total, message": (lambda t: t.update_progress_sync("t", 5, 3, message="m"), pe.RangeError, True),
    "negative step": (lambda t: t.update_progress_sync("t", -1, 3), pe.RangeError, True),
    "unknown task (counter attach)": (lambda t: t.update_progress_sync("nope", 1, 3), pe.NotFoundError, True),
    "unknown task, message": (lambda t: t.update_progress_sync("nope", 1, 3, message="m"), pe.NotFoundError, True),
    "NaN stage progress": (
        lambda t: t.update_stage_sync("t", 1, StageStatus.IN_PROGRESS, math.nan), pe.RangeError, True),
    "stage index": (lambda t: t.update_stage_sync("t", 99, StageStatus.IN_PROGRESS, 0.5), pe.RangeError, True),
    "log of an unknown task": (lambda t: t.log_sync("nope", "info", "x"), pe.NotFoundError, True),
    "NaN in event data": (
        lambda t: t.send_event_sync("t", "resources", {"cpu_percent": math.nan}), pe.JSONError, True),
    "callback NaN step": (
        lambda t: ProgressContext(t, "t", "sdxl").get_callback()("execution_progress",
                                                                 {"step": math.nan, "total_steps": 3}),
        pe.JSONError, True),
    "callback step past total": (
        lambda t: ProgressContext(t, "t", "sdxl").get_callback()("execution_progress", {"step": 4, "total_steps": 3}),
        pe.RangeError, True),
    "bad image": (lambda t: t.update_preview_sync("t", (bytes(3), 2, 2, 3)), pe.InvalidArgumentError, False),
    "preview of an unknown task": (lambda t: t.update_preview_sync("nope", _image()), pe.NotFoundError, True),
    "preview_due of an unknown task": (lambda t: t.preview_due("nope"), pe.NotFoundError, False),
    "stepper with total 0": (lambda t: t.stepper("t", 0).update(), pe.RangeError, True),
    "stepper of an unknown task": (lambda t: t.stepper("nope", 10).update(), pe.NotFoundError, True),
    "StepCounter.set past total": (lambda t: t.stepper("t", 10).set(11), pe.RangeError, True),  # after stepper()
    "async update_progress": (
        lambda t: arun(t.update_progress("t", 5, 3, message="m")), pe.RangeError, True),
    "async update_stage": (lambda t: arun(t.update_stage("t", 99)), pe.RangeError, True),
    "async log": (lambda t: arun(t.log("nope", "info", "x")), pe.NotFoundError, True),
    "async send_event": (lambda t: arun(t.send_event("t", "log", "{bad")), pe.JSONError, True),
    "async update_preview": (lambda t: arun(t.update_preview("nope", _image())), pe.NotFoundError, True),
    # Refused by the binding before the engine (not counted there).
    "event data JSON cannot hold": (lambda t: t.send_event_sync("t", "resources", {"x": object()}), pe.JSONError, False),
    "callback None step": (
        lambda t: ProgressContext(t, "t", "sdxl").get_callback()("execution_progress", {"step": None, "total_steps": 3}),
        pe.JSONError, True),
    "callback str step": (
        lambda t: ProgressContext(t, "t", "sdxl").get_callback()("execution_progress", {"step": "5", "total_steps": 9}),
        pe.JSONError, True),
    "total beyond 64 bits (counter attach)": (lambda t: t.update_progress_sync("t", 1, 2**64 + 3), pe.RangeError, False),
    "total beyond 64 bits, message": (
        lambda t: t.update_progress_sync("t", 1, 2**64 + 3, message="m"), pe.RangeError, False),
    "NUL in a step's message": (
        lambda t: t.update_progress_sync("t", 1, 3, message="frame\0name"), pe.InvalidArgumentError, False),
    "callback total beyond 64 bits, message": (
        lambda t: ProgressContext(t, "t", "sdxl").get_callback()("execution_progress",
                                                                 {"step": 1, "total_steps": 2**64, "message": "m"}),
        pe.JSONError, True),
    "stepper total beyond 64 bits": (lambda t: t.stepper("t", 2**64 + 7), pe.RangeError, False),
    "StepCounter.set beyond 64 bits": (lambda t: t.stepper("t", 10).set(2**64 + 5, 10), pe.RangeError, False),
    "stage index beyond 32 bits": (
        lambda t: t.update_stage_sync("t", 2**32 + 2, StageStatus.IN_PROGRESS, 0.5, "wrapped"), pe.RangeError, False),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_runner_call_returns_and_warns(tracker, task, case):
    call, kind, counted = REFUSED[case]
    if case.startswith("StepCounter"):
        tracker.stepper(task, 10)  # its attach at step 0 is a change; the refused set() that follows is not
    before, invalid = tracker.get_task_progress_sync(task), invalid_updates(tracker)
    with pytest.warns(ProgressWarning) as shown:
        call(tracker)
    assert [type(w.message.error) for w in shown] == [kind]
    assert shown[0].filename == __file__
    assert tracker.get_task_progress_sync(task) == before
    assert invalid_updates(tracker) == invalid + counted


@pytest.mark.parametrize("case", list(REFUSED))
def test_each_runner_call_raises_when_strict(strict_tracker, case):
    call, kind, _ = REFUSED[case]
    strict_tracker.create_task_progress_sync("t", "sdxl", "image_generation")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProgressWarning)
        with pytest.raises(kind):
            call(strict_tracker)


def test_updates_after_completion_do_not_raise(tracker, task):
    tracker.complete_task_sync(task)
    done = tracker.get_task_progress_sync(task)
    with pytest.warns(ProgressWarning) as shown:
        tracker.update_progress_sync(task, 2, 3, message="late")
        tracker.update_stage_sync(task, 2, StageStatus.IN_PROGRESS, 0.5)
        tracker.send_event_sync(task, "execution_progress", {"step": 2, "total_steps": 3, "message": "late"})
        tracker.update_preview_sync(task, _image())
        tracker.log_sync(task, "info", "late")
    assert refusals(shown) == [(task, pe.StateError)]  # five refusals of one kind: one warning
    assert tracker.get_task_progress_sync(task) == done


def test_a_refused_stepper_counts_into_nothing(tracker, task):
    before = tracker.get_task_progress_sync(task)
    with pytest.warns(ProgressWarning):
        steps = tracker.stepper("nope", 10)
    for _ in range(4):
        steps.update()
    assert steps.step == 4
    steps.detach()
    assert tracker.get_task_progress_sync(task) == before and tracker.stats_sync()["attached_counters"] == 0


def test_track_goes_on_when_its_task_is_finished_elsewhere(tracker):
    seen = []
    with pytest.warns(ProgressWarning) as shown:
        for item in track(range(5), task_id="loop", tracker=tracker):
            seen.append(item)
            if item == 1:
                tracker.cancel_task_sync("loop", "cancelled by the user")
    assert seen == [0, 1, 2, 3, 4]
    assert refusals(shown) == [("loop", pe.StateError)]  # track's own complete() at the end
    assert tracker.get_task_progress_sync("loop")["status"] == "cancelled"


def test_programming_errors_and_other_calls_still_raise(tracker, task):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProgressWarning)  # none of these may be turned into a warning
        with pytest.raises(TypeError):
            tracker.update_progress_sync(123, 1, 2, message="m")
        for step in (1.5, math.nan):
            with pytest.raises(TypeError):
                tracker.update_progress_sync(task, step, 2)
            with pytest.raises(TypeError):
                tracker.update_progress_sync(task, step, 2, message="m")
        with pytest.raises(TypeError):
            tracker.update_preview_sync(task, "not an image")
        for progress in (None, "0.5"):  # ctypes.ArgumentError before, which is no TypeError
            with pytest.raises(TypeError, match="update_stage_sync"):
                tracker.update_stage_sync(task, 1, progress=progress)
        with pytest.raises(pe.InvalidArgumentError, match="loud"):
            tracker.log_sync(task, "loud", "x")
        with pytest.raises(pe.NotFoundError):
            tracker.get_task_progress_sync("nope")  # reads raise
        with pytest.raises(pe.NotFoundError):
            tracker.complete_task_sync("nope")
        with pytest.raises(pe.ExistsError):
            tracker.create_task_progress_sync(task, "sdxl")


def test_a_closed_tracker_raises():
    tracker = ProgressTracker()
    tracker.create_task_progress_sync("t", "sdxl")
    steps = tracker.stepper("t", 10)
    tracker.close()
    for call in (
        lambda: tracker.update_progress_sync("t", 1, 2),
        lambda: tracker.update_progress_sync("t", 5, 2),
        lambda: tracker.update_progress_sync("u", 1, 2),
        lambda: tracker.update_stage_sync("t", 1),
        lambda: tracker.log_sync("t", "info", "x"),
        lambda: tracker.send_event_sync("t", "log", "{}"),
        lambda: tracker.update_preview_sync("t", _image()),
        lambda: tracker.stepper("t", 10),
        lambda: steps.set(11),
        lambda: list(track([1], task_id="t2", tracker=tracker)),
    ):
        with pytest.raises(pe.StateError, match="closed"):
            call()


@pytest.mark.parametrize("value, strict", [("1", True), ("true", True), ("0", False), ("", False), (None, False)])
def test_progress_strict_variable(monkeypatch, value, strict):
    if value is None:
        monkeypatch.delenv("PROGRESS_STRICT", raising=False)
    else:
        monkeypatch.setenv("PROGRESS_STRICT", value)
    with ProgressTracker() as tracker:
        assert tracker.strict is strict
        tracker.create_task_progress_sync("t", "sdxl")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ProgressWarning)
            if strict:
                with pytest.raises(pe.RangeError):
                    tracker.update_progress_sync("t", 5, 3)
            else:
                tracker.update_progress_sync("t", 5, 3)
    with ProgressTracker(strict=not strict) as explicit:  # the argument wins over the variable
        assert explicit.strict is (not strict)


@pytest.mark.parametrize("value", ["ture", "2", "strict"])
def test_a_progress_strict_value_that_is_no_boolean_is_a_config_error(monkeypatch, value):
    # Any text but the "off" words turned strict mode on: a typo of "true" as well as one of "false".
    monkeypatch.setenv("PROGRESS_STRICT", value)
    with pytest.raises(pe.ConfigError, match=f"PROGRESS_STRICT='{value}' is not a boolean"):
        ProgressTracker()


def test_strict_takes_a_bool_and_config_values_must_be_json():
    # strict="no" was strict (bool("no")); a NaN was reported as malformed JSON at an offset of a text the caller
    # never wrote, an object as a TypeError that did not name the key.
    with pytest.raises(TypeError, match="strict must be True, False or None"):
        ProgressTracker(strict="no")
    with pytest.raises(pe.ConfigError, match="retention_seconds: a float is not a configuration value"):
        ProgressTracker(retention_seconds=float("nan"))
    with pytest.raises(pe.ConfigError, match="auth_token: a bytes is not a configuration value") as raised:
        ProgressTracker(auth_token=b"s3cret")
    assert "s3cret" not in str(raised.value)  # a secret stays out of the message


def test_numpy_scalars_and_sets_in_event_data_are_numbers_and_lists(tracker, task):
    np = pytest.importorskip("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProgressWarning)
        tracker.send_event_sync(task, "resources", {"cpu_percent": np.float32(12.5), "memory_mb": np.int64(300)})
        cb = ProgressContext(tracker, task, "sdxl").get_callback()
        cb("execution_progress", {"step": np.int64(3), "total_steps": np.int64(10), "message": "m"})
    t = tracker.get_task_progress_sync(task)
    assert t["resource_usage"]["cpu_percent"] == 12.5 and t["resource_usage"]["memory_mb"] == 300
    assert t["stages"][str(t["current_stage"])]["progress"] == 0.3


@pytest.mark.parametrize("text", ["bad\udcff.png", "nul\x00inside"])
def test_a_failure_text_utf8_cannot_carry_still_fails_the_task(tracker, text):
    with pytest.raises(ValueError):
        with ProgressContext(tracker, "f", "sdxl"):
            raise ValueError(text)
    t = tracker.get_task_progress_sync("f")
    assert t["status"] == "failed" and t["error"].startswith(text[:3]), t["error"]
    tracker.create_task_progress_sync("c", "sdxl")
    tracker.cancel_task_sync("c", text)
    assert tracker.get_task_progress_sync("c")["status"] == "cancelled"


def test_steps_beyond_64_bits_on_an_attached_counter_are_refused(tracker, task):
    tracker.update_progress_sync(task, 1, 3)  # attaches the counter
    counter = tracker.stepper(task, 10)
    with pytest.warns(ProgressWarning) as shown:
        tracker.update_progress_sync(task, 2**63, 2**64)
        counter.update(2**63)
        counter.set(2**63, 2**64)
    assert {type(w.message.error) for w in shown} == {pe.RangeError}
    counter.set(4)
    deadline = time.monotonic() + 5
    while (lambda t: t["stages"][str(t["current_stage"])]["progress"])(tracker.get_task_progress_sync(task)) != 0.4:
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("flags, raises", [(["-W", "error"], True),
                                           (["-W", "error", "-W", "default::progress_engine.ProgressWarning"], False)])
def test_warnings_filters_decide_as_the_readme_says(flags, raises):
    """README "Never break the job": the warning obeys Python's filters; `-W error` makes it raise, a later
    `default::progress_engine.ProgressWarning` keeps it a warning and the loop runs on."""
    import os
    import subprocess
    import sys

    code = ("from progress_engine import ProgressTracker\n"
            "with ProgressTracker() as t:\n"
            "    t.create_task_progress_sync('j', 'sdxl')\n"
            "    t.update_progress_sync('j', 5, 3)\n"
            "    print('ran on')\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(pe.__file__))}
    env.pop("PROGRESS_STRICT", None)
    done = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "ProgressWarning" in done.stderr and "PROGRESS_E_RANGE" in done.stderr, done.stderr
    assert ("ran on" in done.stdout) is (not raises) and (done.returncode != 0) is raises, (done.stdout, done.stderr)


def test_totals_past_64_bits_after_an_update_are_refused(tracker, task):
    """The task's counter already attached (an update came first): the new total could not be stored in it."""
    tracker.update_progress_sync(task, 1, 10)
    with pytest.warns(ProgressWarning) as shown:
        counter = tracker.stepper(task, 2**64)
        counter.update()
        ProgressContext(tracker, task, "sdxl").get_callback()("execution_progress",
                                                              {"step": 1, "total_steps": 2**64, "message": "m"})
    assert [type(w.message.error) for w in shown] == [pe.RangeError, pe.JSONError]


def test_track_of_a_length_len_cannot_answer_runs_as_one_of_unknown_length(tracker):
    items = track(range(2**70), task_id="huge", tracker=tracker, template_id="sdxl")
    assert [i for _, i in zip(range(3), items)] == [0, 1, 2]


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("str of this exception fails")


def test_an_exception_whose_str_fails_still_reaches_the_runner_and_fails_the_task(tracker):
    with pytest.raises(Unprintable):
        with ProgressContext(tracker, "c1", "sdxl"):
            raise Unprintable()
    assert tracker.get_task_progress_sync("c1")["error"] == "Unprintable"
    with pytest.raises(Unprintable):
        with track(range(3), task_id="c2", tracker=tracker, template_id="sdxl") as items:
            for _ in items:
                raise Unprintable()
    t = tracker.get_task_progress_sync("c2")
    assert (t["status"], t["error"]) == ("failed", "Unprintable")


def test_a_cancel_reason_that_is_not_text_cancels_the_task(tracker):
    with pytest.raises(pe.TaskCancelled):
        with ProgressContext(tracker, "c3", "sdxl"):
            raise pe.TaskCancelled("c3", b"bytes reason")
    t = tracker.get_task_progress_sync("c3")
    assert (t["status"], t["error"]) == ("cancelled", "b'bytes reason'")


def test_event_data_in_any_mapping_is_taken(tracker, task):
    from collections import UserDict
    from types import MappingProxyType
    with warnings.catch_warnings():
        warnings.simplefilter("error", ProgressWarning)
        cb = ProgressContext(tracker, task, "sdxl").get_callback()
        cb("execution_progress", UserDict(step=3, total_steps=10, message="frame 3"))
        cb("log", MappingProxyType({"level": "info", "message": "from a mapping proxy"}))
    t = tracker.get_task_progress_sync(task)
    stage = t["stages"][str(t["current_stage"])]
    assert (stage["progress"], stage["message"]) == (0.3, "frame 3")
    assert "from a mapping proxy" in [e["message"] for e in tracker.get_logs_sync(task)["logs"]]


def test_event_data_nested_too_deep_for_json_is_refused_not_raised(tracker, task):
    deep = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.warns(ProgressWarning, match="is not JSON"):
        tracker.send_event_sync(task, "resources", {"deep": deep})


@pytest.mark.parametrize("held, handler_call", [
    ("StageManager._lock", "t.close()"),  # another tracker opening (adopting the templates), or a registration
    ("progress_engine.default._lock", "progress_engine.get_progress_tracker_sync()"),  # the default's first open
    ("progress_engine.tracker._EXIT_LOCK", "ProgressTracker().close()"),  # a tracker joining the exit list
])
def test_a_signal_handler_that_opens_or_closes_a_tracker_does_not_hang_the_thread_it_interrupted(held, handler_call,
                                                                                               fresh_python):
    """The binding's module locks were plain locks: a handler (SIGTERM calling close(), as close() allows) that ran
    while its thread held one waited for that thread, for good."""
    import subprocess
    code = f"""
        import signal, threading
        import progress_engine, progress_engine.default, progress_engine.tracker
        from progress_engine import ProgressTracker, StageManager
        t = ProgressTracker()
        done = []
        def handler(signum, frame):
            {handler_call}
            done.append(True)
        signal.signal(signal.SIGUSR1, handler)
        with {held}:  # where the signal finds the thread
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # its handler runs before this returns
            for _ in range(1000):
                pass
        print("ok" if done else "handler did not run")
        """
    try:
        result = fresh_python(code, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the handler's {handler_call} waited for {held}, held by the thread it interrupted")
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), (result.stdout, result.stderr[-2000:])


def test_a_signal_handler_that_reports_does_not_deadlock_the_call_it_interrupted(fresh_python):
    """A handler runs on the thread it interrupts, maybe inside the tracker's own lock (here: attaching the runner's
    counter). Its report took that lock again and hung the process for good."""
    result = fresh_python("""
        import signal, threading
        from progress_engine import ProgressTracker
        t = ProgressTracker()
        def handler(signum, frame):
            t.create_task_progress_sync("inner", "x")
            t.update_progress_sync("inner", 1, 2)  # attaches its counter under the lock
            t.cancel_task_sync("inner", "by signal")  # lets it go under the lock
        signal.signal(signal.SIGUSR1, handler)
        with t._lock:  # where the signal finds the runner's thread
            signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # its handler runs before this returns
            for _ in range(1000):
                pass
        print(t.get_task_progress_sync("inner")["status"])
        """, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "cancelled"), (result.stdout, result.stderr[-2000:])


def test_a_close_does_not_wait_for_a_refusals_warning_hook():
    """A refused update's warning runs the runner's hooks (warnings.showwarning, logging): the call counted as in
    flight meanwhile, so a close() on another thread waited for the hook, up to 2 s, and then left the engine
    open."""
    import threading
    tracker = pe.ProgressTracker()
    took = []

    def close():
        start = time.monotonic()
        tracker.close()
        took.append(time.monotonic() - start)

    def hook(*args, **kwargs):
        closer = threading.Thread(target=close)
        closer.start()
        closer.join(5)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook  # restored by catch_warnings
        tracker.update_progress_sync("no-such-task", 1, 10, "a message: the general path")
    assert took and took[0] < 1.0, took
    assert tracker.closed


def test_a_refused_update_logged_to_a_stderr_nobody_reads_does_not_end_the_runner(fresh_python):
    """The engine logs a refused update on the runner's thread. With SIGPIPE at its default (as a C program has it)
    and stderr a pipe whose reader has gone (a log shipper that exited), that write raised SIGPIPE and ended the
    runner. Now the line is dropped and counted, and the runner goes on."""
    result = fresh_python("""
        import os, signal, warnings
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        warnings.simplefilter("ignore")  # the binding's own warning would write to the same stderr
        from progress_engine import ProgressTracker
        t = ProgressTracker()
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)  # stderr: a pipe whose reader has gone
        os.close(write_end)
        os.close(read_end)
        t.update_progress_sync("no-such-task", 1, 10, "refused: the engine logs it on this thread")
        t.create_task_progress_sync("a", "x")
        t.update_progress_sync("a", 1, 10)
        print("alive", t.get_task_progress_sync("a")["stages"]["1"]["progress"], flush=True)
        t.close()
        """, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "alive 0.1")

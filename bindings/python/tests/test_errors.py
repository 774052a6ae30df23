"""Bad input raises the mapped exception with the engine's message, and changes nothing. The runner-facing
calls raise only on a strict tracker (test_runner_safe.py has the default), so every tracker here is strict."""

from __future__ import annotations

import contextlib
import math
import time

import pytest

import progress_engine as pe
from progress_engine import _lib
from progress_engine.errors import STATUS_NAMES


@pytest.fixture
def tracker(strict_tracker):
    return strict_tracker


@pytest.fixture
def task(tracker):
    tracker.create_task_progress_sync("t", "sdxl", "image_generation")
    tracker.update_stage_sync("t", 1, pe.StageStatus.IN_PROGRESS, 0.25, message="loading")
    return "t"


@contextlib.contextmanager
def raises(exc_type, *fragments):
    """pytest.raises that also checks the status code and that the message says what went wrong."""
    with pytest.raises(exc_type) as info:
        yield info
    error = info.value
    assert (error.status, error.status_name) == (exc_type.code, STATUS_NAMES[exc_type.code])
    for fragment in fragments:
        assert fragment in str(error)


def test_status_names_match_the_library():
    for code, name in STATUS_NAMES.items():
        assert _lib.progress_status_string(code).decode() == name
    assert _lib.progress_status_string(-99).decode() == "PROGRESS_E_UNKNOWN"


def test_each_code_maps_to_its_class_and_builtin():
    expected = {
        -1: (pe.InvalidArgumentError, ValueError),
        -2: (pe.NotFoundError, LookupError),
        -3: (pe.ExistsError, pe.ProgressError),
        -4: (pe.StateError, pe.ProgressError),
        -5: (pe.RangeError, ValueError),
        -6: (pe.JSONError, ValueError),
        -7: (pe.ConfigError, ValueError),
        -8: (pe.UnsupportedError, NotImplementedError),
        -9: (pe.EngineIOError, OSError),
        -10: (pe.LimitError, pe.ProgressError),
        -11: (pe.InternalError, pe.ProgressError),
    }
    for code, (cls, builtin) in expected.items():
        error = pe.from_status(code, "why")
        assert type(error) is cls and isinstance(error, builtin) and isinstance(error, pe.ProgressError)
        assert (error.status, error.status_name, str(error)) == (code, STATUS_NAMES[code], "why")
    unknown = pe.from_status(-42, "newer engine")
    assert type(unknown) is pe.ProgressError and unknown.status == -42
    assert unknown.status_name == "PROGRESS_E_UNKNOWN"


@pytest.mark.parametrize(
    "task_id, fragment",
    [("", "empty"), ("x" * 300, "300 characters"), ("bad\x01id", "control character"),
     ("job\u202eexe.png", "invisible format character U+202E"), ("zero\u200bwidth", "U+200B"),
     ("\ufeffbom", "U+FEFF"), ("line\u2028break", "line or paragraph separator"),
     ("private\ue000", "private-use character"), ("tag\U000e0001", "U+E0001"), ("unassigned\u0378", "unassigned")],
)
def test_bad_task_id(tracker, task_id, fragment):
    with raises(pe.InvalidArgumentError, fragment):
        tracker.create_task_progress_sync(task_id, "sdxl")
    assert tracker.stats_sync()["tasks"] == 0


def test_printable_ids_with_joiners_and_any_script_are_accepted(tracker):
    for task_id in ("👩\u200d💻 render", "日本語のジョブ", "नमस्ते", "mi\u200cxed", "عربي"):
        tracker.create_task_progress_sync(task_id, "sdxl")
        assert tracker.get_task_progress_sync(task_id)["task_id"] == task_id


def test_task_id_limits_in_the_binding(tracker):
    tracker.create_task_progress_sync("x" * 256, "sdxl")  # the longest valid id
    with raises(pe.InvalidArgumentError, "NUL"):
        tracker.create_task_progress_sync("a\0b", "sdxl")  # C would see just "a"
    with pytest.raises(TypeError, match="expected a str"):
        tracker.create_task_progress_sync(123, "sdxl")
    assert tracker.stats_sync()["tasks"] == 1


def test_unknown_task(tracker):
    with raises(pe.NotFoundError, '"nope"'):
        tracker.get_task_progress_sync("nope")
    with raises(pe.NotFoundError):
        tracker.update_stage_sync("nope", 0)
    with raises(pe.NotFoundError):
        tracker.update_progress_sync("nope", 1, 10)  # counter path: the attach fails
    with raises(pe.NotFoundError):
        tracker.complete_task_sync("nope")
    assert tracker.stats_sync()["attached_counters"] == 0


def test_duplicate_create_and_resume(tracker, task):
    before = tracker.get_task_progress_sync(task)
    with raises(pe.ExistsError, "resume"):
        tracker.create_task_progress_sync(task, "sdxl", "image_generation")
    resumed = tracker.create_task_progress_sync(task, "other-template", resume=True)
    # Kept as it was (the engine may note the resume in its history, so seq can move on).
    volatile = {"seq", "updated_at"}
    assert {k: v for k, v in resumed.items() if k not in volatile} == {
        k: v for k, v in before.items() if k not in volatile
    }


@pytest.mark.parametrize("progress", [math.nan, -0.1, 1.5, math.inf])
def test_bad_stage_progress(tracker, task, progress):
    before = tracker.get_task_progress_sync(task)
    with raises(pe.RangeError, "progress"):
        tracker.update_stage_sync(task, 1, pe.StageStatus.IN_PROGRESS, progress)
    assert tracker.get_task_progress_sync(task) == before


@pytest.mark.parametrize("stage", [4, -1, 99])
def test_stage_out_of_range(tracker, task, stage):
    before = tracker.get_task_progress_sync(task)
    with raises(pe.RangeError, f"stage {stage}"):
        tracker.update_stage_sync(task, stage, pe.StageStatus.IN_PROGRESS, 0.5)
    assert tracker.get_task_progress_sync(task) == before


def test_bad_stage_status(tracker, task):
    before = tracker.get_task_progress_sync(task)
    with raises(pe.InvalidArgumentError, "pending"):
        tracker.update_stage_sync(task, 1, pe.StageStatus.PENDING)
    with raises(pe.InvalidArgumentError, "9"):
        tracker.update_stage_sync(task, 1, 9)
    assert tracker.get_task_progress_sync(task) == before


@pytest.mark.parametrize("step, total", [(5, 3), (-1, 3), (0, 0)])
def test_bad_steps(tracker, task, step, total):
    before = tracker.get_task_progress_sync(task)
    invalid = tracker.stats_sync()["invalid_updates"]
    with raises(pe.RangeError, f"step {step}"):
        tracker.update_progress_sync(task, step, total)  # an invalid pair goes to the engine at once
    with raises(pe.RangeError):
        tracker.update_progress_sync(task, step, total, message="m")
    assert tracker.get_task_progress_sync(task) == before
    assert tracker.stats_sync()["invalid_updates"] == invalid + 2
    with raises(pe.RangeError):
        tracker.stepper(task, total if total <= 0 else -total)


def test_updates_after_completion(tracker, task, poll):
    tracker.complete_task_sync(task)
    done = tracker.get_task_progress_sync(task)
    with raises(pe.StateError, "completed"):
        tracker.update_stage_sync(task, 3, pe.StageStatus.IN_PROGRESS, 0.5)
    with raises(pe.StateError, "completed"):
        tracker.update_progress_sync(task, 1, 3)
    with raises(pe.StateError):
        tracker.update_progress_sync(task, 1, 3, message="late")
    for finish in (tracker.complete_task_sync, tracker.fail_task_sync, tracker.cancel_task_sync):
        with raises(pe.StateError):
            finish(task)
    assert tracker.get_task_progress_sync(task) == done


def test_unknown_and_bad_config():
    with raises(pe.ConfigError, '"listne"', '(did you mean "listen"?)'):
        pe.ProgressTracker(listne="127.0.0.1:0")
    with raises(pe.ConfigError, "throttle_ms"):
        pe.ProgressTracker(throttle_ms="fast")
    # A retention no Redis expiry can hold stopped the process (a failed Int conversion in the writer).
    with raises(pe.ConfigError, "retention_seconds must be within 0.0...3153600000"):
        pe.ProgressTracker(retention_seconds=1e300, redis_url="redis://127.0.0.1:1")
    # Below it the writer's 50 ms heartbeat floor outran the timeout: live workers were declared lost.
    with raises(pe.ConfigError, "heartbeat_timeout_seconds"):
        pe.ProgressTracker(heartbeat_timeout_seconds=0.01)


def test_a_listen_port_another_socket_holds_is_an_error_not_a_listener_without_a_socket():
    """libwebsockets made its context without the listening vhost: the engine opened, reported the other socket's
    port as its own, and the process crashed at close or exit about one time in three."""
    import socket
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        for _ in range(3):
            with raises(pe.EngineIOError, f"cannot listen on 127.0.0.1:{port}: Address already in use"):
                pe.ProgressTracker(listen=f"127.0.0.1:{port}")


def test_a_listen_host_name_is_resolved_and_an_unknown_one_refused():
    """libwebsockets takes the listen host for an interface: given a host name it made a context that listened
    nowhere, and the engine opened on a port nobody served."""
    import socket
    import urllib.request
    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        pytest.skip(f"this host's name {name!r} does not resolve here")
    with pe.ProgressTracker(listen=f"{name}:0") as tracker:
        with urllib.request.urlopen(f"http://{address}:{tracker.port}/healthz", timeout=5) as response:
            assert response.status == 200
    with raises(pe.EngineIOError, "cannot listen on no-such-host.invalid:0", "no IPv4 address, interface or name"):
        pe.ProgressTracker(listen="no-such-host.invalid:0")


@pytest.mark.parametrize(
    "stages, fragment",
    [
        ([], "empty"),
        ([pe.Stage("a", weight=-1.0), pe.Stage("b", weight=2.0)], "weight -1"),
        ([pe.Stage("a", weight=0.0)], "sum"),
        ([pe.Stage("a"), pe.Stage("a")], "twice"),
    ],
)
def test_bad_stage_lists(tracker, stages, fragment):
    with raises(pe.InvalidArgumentError, fragment):
        tracker.register_template_stages_sync("bad-template", stages)
    with raises(pe.InvalidArgumentError, fragment):
        pe.StageManager.register_template_stages("bad-template", stages)
    # Nothing registered: the template falls back to the generic stages.
    task = tracker.create_task_progress_sync("t", "bad-template")
    assert [s["name"] for s in task["stages"].values()] == ["queue", "processing", "finalizing"]


def test_malformed_event_json(tracker, task):
    before = tracker.get_task_progress_sync(task)
    with raises(pe.JSONError, "malformed JSON"):
        tracker.send_event_sync(task, "log", "{not json")
    with raises(pe.JSONError, "loud"):
        tracker.send_event_sync(task, "log", {"level": "loud", "message": "x"})
    with raises(pe.JSONError, "step"):
        tracker.send_event_sync(task, "execution_progress", {"step": 1})
    assert tracker.get_task_progress_sync(task) == before
    # SPEC §5: counted and logged — one warning in the task's log for the three (at most one a second).
    logs = tracker.get_logs_sync(task)["logs"]
    assert [(e["level"], e["message"][:34]) for e in logs] == [("warning", "rejected update (PROGRESS_E_JSON: ")]
    assert "malformed JSON" in logs[0]["message"]


def test_rejected_updates_are_logged_at_most_once_a_second_per_task(tracker, task):
    for _ in range(5):
        with raises(pe.RangeError, "out of range"):
            tracker.update_progress_sync(task, 11, 10, message="eleven of ten")
    warnings = [e["message"] for e in tracker.get_logs_sync(task, level="warning")["logs"]]
    assert len(warnings) == 1 and warnings[0].startswith("rejected update (PROGRESS_E_RANGE: step 11 of total_steps 10")
    time.sleep(1.05)
    with raises(pe.StateError):
        tracker.update_stage_sync(task, 0, pe.StageStatus.COMPLETED)  # stage 0 finished long ago
    warnings = [e["message"] for e in tracker.get_logs_sync(task, level="warning")["logs"]]
    assert len(warnings) == 2 and warnings[1].startswith("rejected update (PROGRESS_E_STATE")
    assert warnings[1].endswith("; 4 more rejected since the last such entry"), warnings[1]
    assert tracker.stats_sync()["invalid_updates"] == 6


def test_log_levels(tracker, task):
    tracker.log_sync(task, "info", "hello")
    tracker.log_sync(task, pe.LogLevel.ERROR, "bad")
    with raises(pe.InvalidArgumentError, "loud"):
        tracker.log_sync(task, "loud", "x")  # refused in the binding, with the engine's code
    with raises(pe.InvalidArgumentError, "7"):
        tracker.log_sync(task, 7, "x")
    assert [e["message"] for e in tracker.get_logs_sync(task)["logs"]] == ["hello", "bad"]
    assert [e["message"] for e in tracker.get_logs_sync(task, level="warning")["logs"]] == ["bad"]


def test_closed_tracker():
    tracker = pe.ProgressTracker()
    tracker.create_task_progress_sync("t", "sdxl")
    tracker.close()
    tracker.close()  # idempotent
    assert tracker.closed and tracker.port == -1
    with raises(pe.StateError, "closed"):
        tracker.get_task_progress_sync("t")
    with raises(pe.StateError, "closed"):
        tracker.update_progress_sync("t", 1, 2)


def test_unknown_event_with_any_data_is_logged_and_ignored(tracker, task):
    """SPEC §5: an event the task has no stage of is logged at debug level and ignored, whatever its data holds;
    only an event that names a stage checks its keys."""
    before = tracker.get_task_progress_sync(task)
    tracker.send_event_sync(task, "model_loaded", {"model": "sdxl-base", "vram_gb": 12, "timestamp": time.time()})
    assert tracker.get_task_progress_sync(task) == before
    logs = tracker.get_logs_sync(task)["logs"]
    assert [(e["level"], e["message"]) for e in logs] == [("debug", 'unknown event "model_loaded" ignored')]
    assert tracker.stats_sync()["invalid_updates"] == 0
    stage_name = before["stages"]["1"]["name"]
    with raises(pe.JSONError, '"vram_gb"'):
        tracker.send_event_sync(task, stage_name, {"progress": 0.5, "vram_gb": 12})
    with raises(pe.JSONError, "malformed JSON"):
        tracker.send_event_sync(task, "model_loaded", "{not json")
    assert tracker.get_task_progress_sync(task) == before
    assert tracker.stats_sync()["invalid_updates"] == 2


def test_log_event_timestamps_are_checked_like_any_other(tracker, task):
    """A `log` event's explicit timestamp may not go backwards or be invalid (PROGRESS_E_RANGE): the entry is not
    logged; the refusal is, as any refused update's (one warning a second)."""
    now = time.time()
    tracker.send_event_sync(task, "log", {"message": "later", "timestamp": now + 10})
    with raises(pe.RangeError, "backwards"):
        tracker.send_event_sync(task, "log", {"message": "earlier", "timestamp": now + 5})
    with raises(pe.RangeError, "not a valid epoch time"):
        tracker.send_event_sync(task, "log", {"message": "negative", "timestamp": -1})
    tracker.send_event_sync(task, "log", {"message": "same", "timestamp": now + 10})
    messages = [e["message"] for e in tracker.get_logs_sync(task)["logs"]]
    assert [m for m in messages if not m.startswith("rejected update")] == ["later", "same"]
    rejected = [m for m in messages if m.startswith("rejected update")]
    assert len(rejected) == 1 and "PROGRESS_E_RANGE" in rejected[0] and "backwards" in rejected[0], rejected


def test_failing_a_stage_without_a_message_names_the_stage(tracker, task):
    """The task's error is the message passed, else "stage NAME failed" — never the stage's last progress text."""
    for task_id, passed in ((task, None), ("t2", "Generating frame 5/10")):
        if task_id == "t2":
            tracker.create_task_progress_sync("t2", "sdxl", "image_generation")
        tracker.update_progress_sync(task_id, 5, 10, message="Generating frame 5/10")
        state = tracker.get_task_progress_sync(task_id)
        current = state["current_stage"]
        assert state["stages"][str(current)]["message"] == "Generating frame 5/10"
        tracker.update_stage_sync(task_id, current, pe.StageStatus.FAILED, message=passed)
        name = state["stages"][str(current)]["name"]
        assert tracker.get_task_progress_sync(task_id)["error"] == (passed or f"stage {name} failed")


def test_a_rejected_update_of_an_unknown_task_never_blocks_on_stderr():
    """The engine logs an update of an unknown task on stderr (at most once a second). A runner whose stderr is a
    pipe nobody reads, and full, must not block in progress_update for it: the line is dropped and counted."""
    import subprocess
    import sys
    from pathlib import Path
    code = f"""
import os, sys, time
sys.path.insert(0, {str(Path(pe.__file__).resolve().parents[1])!r})
import progress_engine as pe
os.set_blocking(2, False)
try:
    while True:
        os.write(2, b"x" * 4096)  # fill the undrained stderr pipe
except BlockingIOError:
    pass
os.set_blocking(2, True)
t = pe.ProgressTracker(strict=True)
worst = 0.0
for i in range(3):
    start = time.perf_counter()
    try:
        t.update_progress_sync("no-such-task", 1, 2, message="m")
    except pe.NotFoundError:
        pass
    worst = max(worst, time.perf_counter() - start)
    time.sleep(1.05)  # past the once-a-second limit: every call tries to log
t.close()
print(worst, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        import select
        ready, _, _ = select.select([proc.stdout], [], [], 20)  # stderr is never read
        assert ready, "the runner blocked with a full stderr pipe"
        out = proc.stdout.readline()
        assert out, f"the runner died: exit {proc.wait(5)}"
        assert float(out) < 0.05, f"a rejected update took {float(out) * 1000:.1f} ms"
    finally:
        proc.kill()
        proc.wait(10)


def test_log_lines_dropped_while_stderr_was_full_are_reported_once_it_drains():
    """Lines dropped because stderr was full are counted, and the first line that gets through after is preceded
    by a `log_lines_dropped` line of the same form (JSON) saying how many."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(pe.__file__).resolve().parents[1])!r})
import progress_engine as pe
os.set_blocking(2, False)
try:
    while True:
        os.write(2, b"x" * 4096)  # fill the stderr pipe, which the test reads only later
except BlockingIOError:
    pass
os.set_blocking(2, True)
# Each engine logs an update of an unknown task once a second: two engines, two lines.
for _ in range(2):
    t = pe.ProgressTracker()
    t.update_progress_sync("no-such-task", 1, 2)
    t.close()
print("dropped", flush=True)
sys.stdin.readline()  # the test drained the pipe
t = pe.ProgressTracker()
t.update_progress_sync("still-no-such-task", 1, 2)
t.close()
"""
    proc = subprocess.Popen([sys.executable, "-W", "ignore", "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"dropped\n"
        os.set_blocking(proc.stderr.fileno(), False)
        filler = b""
        while True:
            try:
                chunk = os.read(proc.stderr.fileno(), 65536)
            except BlockingIOError:
                break
            filler += chunk
        assert filler and set(filler) == {ord("x")}, filler[-300:]
        os.set_blocking(proc.stderr.fileno(), True)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.wait(20) == 0
        lines = [json.loads(line) for line in proc.stderr.read().decode().splitlines()]
    finally:
        proc.kill()
        proc.wait(10)
    assert [(e["event"], e["level"]) for e in lines] == [("log_lines_dropped", "warning"),
                                                          ("update_rejected", "warning")], lines
    assert lines[0]["count"] == "2" and "2 log line(s) dropped" in lines[0]["message"], lines[0]
    assert "still-no-such-task" in lines[1]["message"], lines[1]


def test_a_signal_handler_that_reports_during_the_counter_attach_writes_that_counter(fresh_python):
    """A handler that reports on the task whose counter is being attached (the lock is re-entrant) found no counter
    yet and attached a second one; the engine kept one of the two and the other's steps were lost."""
    result = fresh_python("""
        import signal, threading, warnings
        warnings.simplefilter("error")
        from progress_engine import ProgressTracker
        t = ProgressTracker()
        t.create_task_progress_sync("t", "x")
        def handler(signum, frame):
            t.update_progress_sync("t", 7, 10)
        signal.signal(signal.SIGUSR1, handler)
        call = t._call
        signalled = []
        def attach_after_a_signal(function, *args):
            if function.__name__ == "progress_task_attach_counter" and not signalled:
                signalled.append(True)
                signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)  # its handler runs here, before the attach
            return call(function, *args)
        t._call = attach_after_a_signal
        t.update_progress_sync("t", 3, 10)
        stage = lambda: t.get_task_progress_sync("t")["stages"]["1"]
        seen = [stage()["progress"]]
        t.update_progress_sync("t", 9, 10)
        seen.append(stage()["progress"])
        print(seen, t.stats_sync()["attached_counters"])
        """, timeout=30)
    assert (result.returncode, result.stdout.strip()) == (0, "[0.7, 0.9] 1"), result.stdout + result.stderr

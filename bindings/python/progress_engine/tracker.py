"""ProgressTracker (one engine), its step counters, and its ETA predictor."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import functools
import itertools
import json
import operator
import os
import sys
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from datetime import datetime
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Union

from . import _lib
from .errors import (ConfigError, InvalidArgumentError, JSONError, ProgressError, ProgressWarning, RangeError,
                     StateError)
from .model import LogLevel, Stage, StageStatus, stages_json
from .preview import to_pixels
from .stages import StageManager

# Runner events after which the task is finished and the engine no longer reads its counter.
_FINISHING_EVENTS = frozenset({"execution_complete", "execution_error"})


def _async_twin(sync: Callable[..., Any], may_read_redis: bool = False) -> Callable[..., Any]:
    """The awaitable form of a `*_sync` method. Updates never block (one shard lock held for
    nanoseconds, never network or disk), so running them inline on the event loop is both correct
    and the cheapest way. `may_read_redis`: a read (or a resume) that asks Redis synchronously for a
    task the engine does not hold (up to 200 ms per round trip), so with `redis_url` it runs in a
    worker thread instead, and the event loop goes on meanwhile."""

    if may_read_redis:

        @functools.wraps(sync)
        async def twin(self: "ProgressTracker", *args: Any, **kwargs: Any) -> Any:
            if self._redis:
                return await asyncio.to_thread(sync, self, *args, **kwargs)
            return sync(self, *args, **kwargs)

    else:

        @functools.wraps(sync)
        async def twin(*args: Any, **kwargs: Any) -> Any:
            return sync(*args, **kwargs)

    twin.__name__ = sync.__name__[: -len("_sync")]
    twin.__qualname__ = sync.__qualname__[: -len("_sync")]
    return twin


#: Refusals already shown, as (task_id, kind); bounded so a long-lived runner does not grow it without
#: end (a task this old that is refused again is shown again).
_WARNED_MAX = 4096
# The engine's steps are 64-bit; ctypes would wrap a larger int silently.
_STEP_MAX = 2**63 - 1


def _in_64_bits(step: int, total_steps: int) -> bool:
    """Whether the engine's 64-bit step and total can hold them."""
    return -_STEP_MAX <= step <= _STEP_MAX and -_STEP_MAX <= total_steps <= _STEP_MAX


# The C int of a stage index, a stage status and a log level.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
# Open trackers, so that a forked child can let go of its parent's counters (_after_fork_in_child).
_TRACKERS: "weakref.WeakSet[ProgressTracker]" = weakref.WeakSet()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _strict_from_env() -> bool:
    value = os.environ.get("PROGRESS_STRICT", "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"PROGRESS_STRICT={os.environ['PROGRESS_STRICT']!r} is not a boolean: "
                      "use 1 or 0 (true/false, yes/no, on/off), or leave it unset")


def _caller_stacklevel() -> int:
    """The warnings.warn stacklevel, seen from _refused, of the first frame outside this package: the
    runner's line that made the call, however many of our frames (async twin, integration) lie between."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    return level


# The names Python's logging also takes for two of the engine's levels.
_LEVEL_ALIASES = {"WARN": LogLevel.WARNING, "CRITICAL": LogLevel.ERROR, "FATAL": LogLevel.ERROR}


def _log_level(level: Union[LogLevel, int, str]) -> int:
    if isinstance(level, str):
        try:
            return LogLevel[level.upper()]
        except KeyError:
            if level.upper() in _LEVEL_ALIASES:
                return _LEVEL_ALIASES[level.upper()]
            raise InvalidArgumentError(
                f"unknown log level {level!r}; use one of debug, info, warning (warn), error (critical, fatal)"
            ) from None
    if not _INT_MIN <= level <= _INT_MAX:  # ctypes would wrap it into another level
        raise InvalidArgumentError(f"unknown log level {level!r}; use one of debug, info, warning, error")
    return level


def _close_engine(engine: ctypes.c_void_p, counters: Dict[str, memoryview]) -> None:
    # A weakref.finalize callback, so it must not reference the tracker.
    _lib.progress_engine_close(engine)  # reads every attached counter a last time
    counters.clear()  # only now may the counter arrays be freed


# How long close() and exit wait for the calls other threads are making into an engine to return (a read that
# asks Redis takes up to 200 ms a round trip).
_CLOSE_WAIT_SECONDS = 2.0
_EXITING = False
# Makes _close_at_exit's list of trackers and a new tracker's joining it one or the other. Reentrant, as every
# lock of the binding a signal handler's call can reach.
_EXIT_LOCK = threading.RLock()


def _close_at_exit() -> None:
    """Closes the trackers still open when the interpreter exits (after the non-daemon threads ended). Daemon
    threads may still be calling them: each tracker first stops taking calls (a new one raises StateError, as on
    any closed tracker), then each engine closes once no call is in flight into it (ProgressTracker._close_when_idle;
    one deadline for all)."""
    global _EXITING
    with _EXIT_LOCK:
        _EXITING = True
        trackers = [t for t in list(_TRACKERS) if t._finalizer.alive]
    for tracker in trackers:
        tracker._engine = None
    deadline = time.monotonic() + _CLOSE_WAIT_SECONDS
    for tracker in trackers:
        StageManager._forget(tracker)
        tracker._close_when_idle(deadline, "at exit")


atexit.register(_close_at_exit)


class ProgressTracker:
    """One ProgressEngine (progress_engine_open). Keyword arguments are the engine's configuration
    keys (listen, redis_url, namespace, retention_seconds, throttle_ms, ...); an unknown key raises
    ConfigError, so typos are caught.

    Every `*_sync` method has an awaitable twin without the suffix (as in the seed); with redis_url, the
    reads that may ask Redis (get_task_progress, get_batch_progress, get_logs, get_history, and
    create_task_progress, for resume) run in a worker thread, the rest inline. All methods may be
    called from any thread. Close with close(), `with` or `async with`: calls other threads have started return
    first, later ones raise StateError. A tracker that is garbage collected is closed then, and one still open at
    exit once the calls that daemon threads are making have returned (_close_at_exit).

    Runner-safe: the calls a runner makes while it works (update_progress, update_stage, update_preview,
    log, send_event, stepper and its StepCounter, the ProgressContext callback, track) never raise for
    an update the engine refuses (a step out of range, an unknown, finished or expired task, a NaN, a
    bad image): the engine counts it (stats_sync()["invalid_updates"]) and logs it in the task's log, and the
    call returns after one ProgressWarning per task and kind of error. So for what the binding refuses
    before the engine (not counted there): event data JSON cannot hold (numpy scalars are numbers, sets and
    tuples lists), steps beyond 64 bits. A failure or cancel text is passed on whole, what UTF-8 cannot
    carry replaced. `strict=True` (default: the
    PROGRESS_STRICT environment variable, "1") raises them instead, for tests and development. A wrong
    argument type (TypeError), an unknown log level name and a closed tracker always raise, as do the
    other calls (create, complete / fail / cancel, reads).
    """

    def __init__(self, strict: Optional[bool] = None, **config: Any) -> None:
        if strict is not None and not isinstance(strict, bool):
            raise TypeError(f"strict must be True, False or None (PROGRESS_STRICT decides), got {strict!r}")
        strict = _strict_from_env() if strict is None else strict
        for key, value in config.items():
            try:
                json.dumps(value, allow_nan=False)
            except (TypeError, ValueError) as error:  # else a JSON error at an offset of a text the caller never saw
                # The type, not the value: it may be a secret (auth_token, redis_url).
                raise ConfigError(f"{key}: a {type(value).__name__} is not a configuration value (JSON): {error}") \
                    from None
        engine = ctypes.c_void_p()
        _lib.progress_engine_open(_lib.encode(json.dumps(config)), ctypes.byref(engine))
        self._engine: Optional[ctypes.c_void_p] = engine
        self.strict = strict
        self._warned: "OrderedDict[tuple, None]" = OrderedDict()
        self._warned_lock = threading.RLock()
        self._listen = config.get("listen")
        self._redis = bool(config.get("redis_url"))
        # task_id -> int64 view of the task's attached (step, total_steps) array. The view keeps the
        # array alive; an entry goes only once the engine has stopped reading that array.
        self._counters: Dict[str, memoryview] = {}
        # Reentrant: a signal handler that reports runs on the thread it interrupted, maybe inside these locks.
        self._lock = threading.RLock()  # guards attaching and dropping counters, and close
        # Counters of the parent's tasks in a forked child: kept alive, never written (_after_fork_in_child).
        self._forked_counters: list = []
        # Calls into this engine entered and left (_call), counted from before the handle is read until the
        # foreign call returns; next() on a count is atomic, so the difference is the calls in flight.
        self._entered = itertools.count()
        self._left = itertools.count()
        self._finalizer = weakref.finalize(self, _close_engine, engine, self._counters)
        self._finalizer.atexit = False  # _close_at_exit closes it, once no call is in flight
        with _EXIT_LOCK:
            joined = not _EXITING
            if joined:
                _TRACKERS.add(self)
        if not joined:
            self._engine = None
            self._finalizer()
            raise StateError("the interpreter is exiting and its trackers are closed; open trackers before exit")
        try:
            StageManager._adopt(self)
        except BaseException:
            self.close()
            raise

    # ---- lifetime -------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the engine; attached counters are read a last time first. Idempotent. Another thread's call
        that has already started returns first (a call that starts later raises StateError); one that has not
        returned within 2 s leaves the engine open, with a line on stderr, until the tracker is collected or the
        interpreter exits: freeing an engine under a call could crash the process."""
        StageManager._forget(self)
        self._engine = None
        if self._interrupted_here():
            # Called from a signal handler (or the like) that interrupted a call into this engine on this same
            # thread: that call may resume with the handle, so the engine closes once it has returned, when the
            # tracker is collected or at exit (which a handler that ends the process with sys.exit() reaches).
            return
        self._close_when_idle(time.monotonic() + _CLOSE_WAIT_SECONDS, "on close()")

    def _interrupted_here(self) -> bool:
        """Whether this thread is inside a call into this engine, or holds its lock (below the caller of close() on
        its stack)."""
        frame = sys._getframe(1).f_back
        while frame is not None:
            if frame.f_code in _CALL_CODES and frame.f_locals.get("self") is self:
                return True
            frame = frame.f_back
        return False

    def _calls_in_flight(self) -> int:
        """At least the calls into this engine in flight now. Left is read first: a call that enters and leaves
        between the two reads is then counted in, never out. Reading with next() adds one to each, which cancels."""
        left = next(self._left)
        return next(self._entered) - left

    def _close_when_idle(self, deadline: float, when: str) -> None:
        """Closes the engine, its handle already taken away, once no call is in flight into it (or lets it be
        if the deadline passes first)."""
        while self._calls_in_flight() > 0:
            if not self._finalizer.alive:
                return
            if time.monotonic() >= deadline:
                until = "the process ends" if when == "at exit" else "the tracker is collected or the interpreter exits"
                sys.stderr.write(f"progress_engine: {when}, a call into a tracker's engine had not returned after "
                                 f"{_CLOSE_WAIT_SECONDS:g} s; the engine stays open until {until} (its last changes "
                                 "may not reach Redis): stop the threads that report before closing the tracker\n")
                return
            time.sleep(0.002)
        with self._lock:
            # weakref.finalize's own exit hook may already have marked every finalizer dead: detach() still answers.
            detached = self._finalizer.detach()
            if detached is not None:
                _, close, args, kwargs = detached
                close(*args, **kwargs)

    @property
    def closed(self) -> bool:
        return self._engine is None

    @property
    def port(self) -> int:
        """The listener's bound TCP port, or -1 without a listener (or once closed)."""
        try:
            return self._call(_lib.progress_engine_port)
        except StateError:
            return -1

    @property
    def url(self) -> Optional[str]:
        """http://HOST:PORT of the listener (the dashboard and REST API), or None without one. A
        wildcard bind address is shown as 127.0.0.1."""
        port = self.port
        if port < 0 or not self._listen:
            return None
        host = str(self._listen).rpartition(":")[0]
        if host in ("", "0.0.0.0", "*"):
            host = "127.0.0.1"
        return f"http://{host}:{port}"

    def __enter__(self) -> "ProgressTracker":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    async def __aenter__(self) -> "ProgressTracker":
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def _handle(self) -> ctypes.c_void_p:
        """The engine handle, for the check that the tracker is open (a call passes it through _call)."""
        engine = self._engine
        if engine is None:
            raise StateError("this ProgressTracker is closed")
        return engine

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """function(engine, *args), counted as a call in flight from before the handle is read until it returns,
        so neither close() nor exit closes the engine under it (_close_when_idle). _update_progress_slow has it
        inline."""
        try:
            # First in the `try`: no signal is checked between it and the `try`, so a KeyboardInterrupt cannot
            # land after the count and skip the `finally`.
            next(self._entered)
            engine = self._engine
            if engine is None:
                raise StateError("this ProgressTracker is closed")
            return function(engine, *args)
        finally:
            next(self._left)

    def _read(self, function: Callable[..., Any], *args: Any) -> Any:
        """_call of a function that hands out JSON (its last parameter `char **out_json`), parsed."""
        return self._call(lambda engine: _lib.call_json(function, engine, *args))

    def _refused(self, task_id: str, error: ProgressError) -> None:
        """A runner-facing call's refused update: raised when strict, else shown once per task and kind.
        A closed tracker is the caller's mistake, never a refusal: it raises."""
        if self.strict or self._engine is None:
            raise error
        key = (task_id, type(error))
        with self._warned_lock:
            if key in self._warned:
                return
            self._warned[key] = None
            if len(self._warned) > _WARNED_MAX:
                self._warned.popitem(last=False)
        warnings.warn(ProgressWarning(task_id, error), stacklevel=_caller_stacklevel())

    def _out_of_range(self, task_id: str, step: int, total_steps: int) -> None:
        """A step or total beyond the engine's 64 bits: refused here (ctypes would wrap it), not counted."""
        self._refused(task_id, RangeError(f"step {step} of total_steps {total_steps} does not fit in 64 bits"))

    def _refuse_steps(self, task_id: str, step: int, total_steps: int) -> None:
        """A pair the binding will not store in a counter: the engine refuses it (so it is counted and
        logged there, with the engine's message), then it is raised or shown as any refusal."""
        if not _in_64_bits(step, total_steps):
            self._out_of_range(task_id, step, total_steps)
            return
        try:
            self._call(_lib.progress_update, _lib.encode(task_id), step, total_steps, None)
        except ProgressError as error:
            self._refused(task_id, error)

    # ---- tasks ----------------------------------------------------------------------------------

    def create_task_progress_sync(
        self,
        task_id: str,
        template_id: str,
        template_category: Optional[str] = None,
        quality: Optional[str] = None,
        batch_id: Optional[str] = None,
        resource_config: Optional[Mapping[str, Any]] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        resume: bool = False,
        timestamp: Optional[float] = None,
        reuse: bool = False,
    ) -> Dict[str, Any]:
        """Creates a task and returns its TaskProgress. Its stages are those registered for
        template_id, else the defaults of template_category, else queue / processing / finalizing.
        An existing task_id raises ExistsError unless resume=True, which keeps that task: its state stays,
        and one that had not finished records a "resumed" event (its seq advances); or unless reuse=True and
        that task has finished: a new task replaces it (the id run again). Not both (InvalidArgumentError).
        timestamp (epoch seconds) replaces the clock, for replaying recorded runs."""
        options = {
            key: value
            for key, value in (
                ("quality", quality),
                ("batch_id", batch_id),
                ("resource_config", resource_config),
                ("metadata", metadata),
                ("timestamp", timestamp),
            )
            if value is not None
        }
        if resume:
            options["resume"] = True
        if reuse:
            options["reuse"] = True
        self._call(
            _lib.progress_task_create,
            _lib.encode(task_id),
            _lib.encode(template_id),
            _lib.encode(template_category),
            _lib.encode(json.dumps(options, default=_json_value)) if options else None,
        )
        return self.get_task_progress_sync(task_id)

    def update_stage_sync(
        self,
        task_id: str,
        stage: int,
        status: StageStatus = StageStatus.IN_PROGRESS,
        progress: float = 0.0,
        message: Optional[str] = None,
    ) -> None:
        """Sets stage `stage` (0-based): IN_PROGRESS enters it (completing earlier open stages) with
        `progress` (0..1); COMPLETED completes it; SKIPPED skips it; FAILED fails it and the task.
        message None keeps the stage's message."""
        if not (_INT_MIN <= stage <= _INT_MAX and _INT_MIN <= status <= _INT_MAX):
            # ctypes would wrap them into another stage or status
            self._refused(task_id, RangeError(f"stage {stage} or status {int(status)} does not fit in 32 bits"))
            return
        try:
            self._call(_lib.progress_stage_update, _lib.encode(task_id), stage, status, progress, _lib.encode(message))
        except ProgressError as error:
            self._refused(task_id, error)
            return
        except ctypes.ArgumentError as error:  # a progress that is no number: a wrong argument type, as documented
            raise TypeError(f"update_stage_sync: {error}") from None
        if status == StageStatus.FAILED:
            self._finished(task_id)

    def update_progress_sync(
        self, task_id: str, step: int, total_steps: int, message: Optional[str] = None
    ) -> None:
        """Sets the current stage's progress to step / total_steps (moving a task that is still
        before its main stage there first).

        Without a message this is the hot path: two stores into the task's step counter, which the
        engine applies within throttle_ms, and before anything that must follow it (a stage change,
        a log entry, a read of the task, complete / fail / cancel / close). A pair the engine then
        cannot apply (the task or its stage already finished) is not raised even when strict: it is
        counted in stats_sync()["invalid_updates"] and logged in the task's log. With a message, or for a
        pair that is out of range, the engine is called at once (a refusal as described in the class)."""
        if message is None and 0 <= step <= total_steps > 0:
            try:  # cheaper than .get() while the counter exists, which is every call but the first
                counter = self._counters[task_id]
                counter[1] = total_steps
                counter[0] = step
            except KeyError:
                self._first_counter_update(task_id, step, total_steps)
            except ValueError:  # beyond 64 bits
                self._out_of_range(task_id, step, total_steps)
            return
        self._update_progress_slow(task_id, step, total_steps, message)

    def _first_counter_update(self, task_id: str, step: int, total_steps: int) -> None:
        self._handle()  # a closed tracker raises here, outside the `try`
        if total_steps > _STEP_MAX:
            self._out_of_range(task_id, step, total_steps)
            return
        try:
            self._counter(task_id, step, total_steps)
        except ProgressError as error:  # the attach: an unknown or finished task
            self._refused(task_id, error)

    def _update_progress_slow(self, task_id: str, step: int, total_steps: int, message: Optional[str]) -> None:
        if self._engine is None:
            raise StateError("this ProgressTracker is closed")
        # A TypeError for a float, as on the counter path, rather than ctypes' ArgumentError.
        step, total_steps = operator.index(step), operator.index(total_steps)
        if not _in_64_bits(step, total_steps):
            self._out_of_range(task_id, step, total_steps)
            return
        if 0 <= step <= total_steps > 0:
            # The counter first, so it holds this same pair: whatever the engine does with an attached
            # counter on a direct update, an older value in it can never be applied after this one.
            counter = self._counters.get(task_id)
            if counter is not None:
                counter[1] = total_steps
                counter[0] = step
        try:
            tid, text = _lib.encode(task_id), _lib.encode(message)
        except ProgressError as error:  # a NUL in the text: refused, as every runner call refuses its data
            self._refused(task_id, error)
            return
        refused = None
        try:
            next(self._entered)  # self._call(_lib.progress_update, ...), inline: this is a runner's per-step call
            engine = self._engine
            if engine is None:
                raise StateError("this ProgressTracker is closed")
            _lib.progress_update(engine, tid, step, total_steps, text)
        except ProgressError as error:
            refused = error
        finally:
            next(self._left)
        # Out of the call: the warning runs the runner's hooks, which a close() must not wait for.
        if refused is not None:
            self._refused(task_id, refused)

    def stepper(self, task_id: str, total_steps: int) -> "StepCounter":
        """A StepCounter for the task's sampling loop, starting at step 0 of total_steps: the
        cheapest way to report steps (see StepCounter). When refused (total_steps < 1, an unknown or
        finished task) and not strict, the counter works but reports nowhere."""
        self._handle()  # a closed tracker raises here
        total_steps = operator.index(total_steps)
        if 0 < total_steps <= _STEP_MAX:
            try:
                return StepCounter(self, task_id, self._counter(task_id, 0, total_steps))
            except ProgressError as error:
                self._refused(task_id, error)
        else:
            self._refuse_steps(task_id, 0, total_steps)
        return StepCounter(self, task_id, _unattached_counter(0, max(-_STEP_MAX, min(total_steps, _STEP_MAX))))

    def complete_task_sync(self, task_id: str) -> None:
        """Completes the task: open stages complete, overall_progress 100, status "completed", and a
        completion record is stored for ETA. A finished task raises StateError."""
        self._call(_lib.progress_task_complete, _lib.encode(task_id))
        self._finished(task_id)

    def fail_task_sync(self, task_id: str, error: Optional[str] = None) -> None:
        """Fails the task (its current stage fails, status "failed", `error` kept)."""
        self._call(_lib.progress_task_fail, _lib.encode(task_id), _lib.encode_text(error))
        self._finished(task_id)

    def cancel_task_sync(self, task_id: str, reason: Optional[str] = None) -> None:
        """Cancels the task (status "cancelled", `reason` kept in "error")."""
        self._call(_lib.progress_task_cancel, _lib.encode(task_id), _lib.encode_text(reason))
        self._finished(task_id)

    def get_task_progress_sync(self, task_id: str) -> Dict[str, Any]:
        """The task's TaskProgress as a dict (task_id, status, overall_progress, stages, ...)."""
        return self._read(_lib.progress_task_get, _lib.encode(task_id))

    def get_batch_progress_sync(self, batch_id: str, task_ids: Optional[Iterable[str]] = None) -> Dict[str, Any]:
        """BatchProgress of `task_ids`, or of the tasks created with this batch_id when None."""
        csv = None if task_ids is None else ",".join(task_ids)
        return self._read(_lib.progress_batch_get, _lib.encode(batch_id), _lib.encode(csv))

    def log_sync(self, task_id: str, level: Union[LogLevel, int, str], message: str) -> None:
        """Appends to the task's log; level is a LogLevel or its name ("info")."""
        self._handle()  # a closed tracker raises first
        level = _log_level(level)
        try:
            self._call(_lib.progress_log, _lib.encode(task_id), level, _lib.encode(message))
        except ProgressError as error:
            self._refused(task_id, error)

    def get_logs_sync(
        self,
        task_id: str,
        since: Union[float, datetime, None] = None,
        level: Union[LogLevel, int, str, None] = None,
    ) -> Dict[str, Any]:
        """{"task_id", "logs": [{timestamp, level, message, stage}], "dropped"}, oldest first: entries at `since`
        (epoch seconds or an aware datetime) or later, of `level` or above."""
        if since is None:
            since = 0.0
        elif isinstance(since, datetime):
            since = since.timestamp()
        min_level = LogLevel.DEBUG if level is None else _log_level(level)
        return self._read(
            _lib.progress_task_logs_get, _lib.encode(task_id), since, min_level
        )

    def get_history_sync(self, task_id: str, after_seq: int = 0) -> Dict[str, Any]:
        """{"task_id", "first_seq", "last_seq", "events": [...]}: the task's events with seq > after_seq
        (first_seq: the oldest event still held; last_seq: the task's current seq)."""
        return self._read(_lib.progress_task_history_get, _lib.encode(task_id), after_seq)

    def send_event_sync(self, task_id: str, event: str, data: Union[Mapping[str, Any], str, None] = None) -> None:
        """Applies a runner event (the seed's callback(event, data)): "execution_progress",
        a stage's name, "log", "resources", "execution_complete", "execution_error". `data` is a
        dict, a JSON text, or None."""
        if event == "execution_progress" and isinstance(data, Mapping):
            step, total_steps = data.get("step"), data.get("total_steps")
            if isinstance(step, int) and isinstance(total_steps, int) and 0 <= step <= total_steps > 0 \
                    and total_steps <= _STEP_MAX:
                self._write_counter(task_id, step, total_steps)  # as in _update_progress_slow
        self._handle()  # a closed tracker raises first
        try:
            # Not ensure_ascii: a lone surrogate (a file name read with surrogateescape) stays a character, which
            # encode_text turns into "?" for a finishing event, rather than an escape the engine refuses.
            data_json = data if data is None or isinstance(data, str) else \
                json.dumps(data, default=_json_value, ensure_ascii=False)
        except (TypeError, ValueError, RecursionError) as error:  # an object JSON cannot hold; a cycle; too deep
            self._refused(task_id, JSONError(f"the data of event {event!r} is not JSON: {error}"))
            return
        try:
            encode = _lib.encode_text if event in _FINISHING_EVENTS else _lib.encode  # a failure reaches the task
            self._call(_lib.progress_event, _lib.encode(task_id), _lib.encode(event), encode(data_json))
        except ProgressError as error:
            self._refused(task_id, error)
            return
        if event in _FINISHING_EVENTS:
            self._finished(task_id)

    def update_preview_sync(self, task_id: str, image: Any) -> None:
        """Offers the task's current image as a preview: a uint8 array (H×W, H×W×3, H×W×4), a PIL image,
        or a (buffer, width, height, channels) tuple. The engine keeps it only when a milestone (or every
        N steps) is due, encodes it off this thread and sets the task's preview_url; otherwise the call
        changes nothing. A bad image (InvalidArgumentError) or a finished task (StateError) is a refusal
        as described in the class; an object of another type raises TypeError."""
        self._handle()  # a closed tracker raises first
        try:
            pixels, width, height, channels = to_pixels(image)
            self._call(_lib.progress_preview_pixels, _lib.encode(task_id), pixels, width, height, width * channels,
                       channels)
        except ProgressError as error:
            self._refused(task_id, error)

    def preview_due(self, task_id: str) -> bool:
        """Whether update_preview would take a preview now (a milestone, or the next N-th step, was
        crossed): ask it every step and make the image (decode latents, render) only when it is True.
        Cheap: nothing is copied, only the task's lock is taken, Redis is never asked. False for a
        finished task. Runner-safe like update_preview: for a task this engine does not hold, False and
        one ProgressWarning (NotFoundError when strict)."""
        self._handle()  # a closed tracker raises first
        due = ctypes.c_int(0)
        try:
            self._call(_lib.progress_preview_due, _lib.encode(task_id), ctypes.byref(due))
        except ProgressError as error:
            self._refused(task_id, error)
            return False
        return bool(due.value)

    def cancel_requested(self, task_id: str) -> bool:
        """Whether someone asked the task's runner to stop (REST POST /api/v1/progress/tasks/{id}/cancel, the
        WebSocket "cancel" message, on this tracker's listener or, with redis_url, on any listener of the fleet):
        True from the request until the task finishes. The runner acknowledges by stopping its work and calling
        cancel_task (track() does both, and raises TaskCancelled); nothing stops it otherwise. Cheap enough to ask
        every step: only the task's lock is taken, Redis is never asked. Runner-safe like preview_due: for a task
        this engine does not hold, False and one ProgressWarning (NotFoundError when strict)."""
        self._handle()  # a closed tracker raises first
        requested = ctypes.c_int(0)
        try:
            self._call(_lib.progress_task_cancel_requested, _lib.encode(task_id), ctypes.byref(requested))
        except ProgressError as error:
            self._refused(task_id, error)
            return False
        return bool(requested.value)

    # ---- templates, engine ----------------------------------------------------------------------

    def register_template_stages_sync(
        self, template_id: str, stages: Iterable[Union[Stage, Mapping[str, Any]]]
    ) -> None:
        """Registers stages for template_id in this engine only (StageManager: every engine)."""
        self._register_stages_json(template_id, stages_json(stages))

    def _register_stages_json(self, template_id: str, data: str) -> None:
        self._call(_lib.progress_register_template_stages, _lib.encode(template_id), _lib.encode(data))

    def stats_sync(self) -> Dict[str, Any]:
        """Engine counters: tasks, updates, invalid_updates, events, logs, purged_tasks,
        attached_counters, previews_written / _failed / _dropped, and redis_* with a redis_url."""
        return self._read(_lib.progress_engine_stats_get)

    @property
    def eta_predictor(self) -> "ETAPredictor":
        """The seed's eta_predictor (completion records for ETA)."""
        return ETAPredictor(self)

    # ---- counters -------------------------------------------------------------------------------

    def _counter(self, task_id: str, step: int, total_steps: int) -> memoryview:
        """The task's counter set to (step, total_steps), attaching one if it has none."""
        with self._lock:
            counter = self._counters.get(task_id)
            if counter is None:
                # Filled before attaching, so the engine's first read already sees a valid pair.
                array = (ctypes.c_longlong * 2)(step, total_steps)
                # ctypes exports the array as "<q", which a memoryview cannot index; cast through bytes
                # to native "q". Storing through it is the fastest way to write ctypes memory.
                counter = self._counters[task_id] = memoryview(array).cast("B").cast("q")
                # Known before it is attached: a signal handler that reports on this task during the attach
                # (the lock is re-entrant) writes this counter rather than attaching a second one.
                try:
                    self._call(_lib.progress_task_attach_counter, _lib.encode(task_id), array)
                except ProgressError:
                    # Refused (an unknown or finished task): not attached. On any other exception (a signal
                    # handler's, right after the call) the counter stays known, as the engine may read it.
                    if self._counters.get(task_id) is counter:
                        del self._counters[task_id]
                    raise
            else:
                counter[1] = total_steps
                counter[0] = step
            return counter

    def _write_counter(self, task_id: str, step: int, total_steps: int) -> None:
        counter = self._counters.get(task_id)
        if counter is not None:
            counter[1] = total_steps
            counter[0] = step

    def _detach(self, task_id: str, counter: memoryview) -> None:
        with self._lock:
            # Only if it is still attached: a finished task or a closed engine has already let go.
            if self._counters.get(task_id) is counter:
                self._call(_lib.progress_task_detach_counter, _lib.encode(task_id))
                del self._counters[task_id]

    def _finished(self, task_id: str) -> None:
        # Called after complete / fail / cancel returned: the engine has read the task's counter a
        # last time. Under the lock, so a concurrent _counter() cannot store a view after this.
        with self._lock:
            self._counters.pop(task_id, None)

    # ---- the seed's awaitable API ---------------------------------------------------------------

    create_task_progress = _async_twin(create_task_progress_sync, may_read_redis=True)
    update_stage = _async_twin(update_stage_sync)
    update_progress = _async_twin(update_progress_sync)
    complete_task = _async_twin(complete_task_sync)
    fail_task = _async_twin(fail_task_sync)
    cancel_task = _async_twin(cancel_task_sync)
    get_task_progress = _async_twin(get_task_progress_sync, may_read_redis=True)
    get_batch_progress = _async_twin(get_batch_progress_sync, may_read_redis=True)
    log = _async_twin(log_sync)
    get_logs = _async_twin(get_logs_sync, may_read_redis=True)
    get_history = _async_twin(get_history_sync, may_read_redis=True)
    send_event = _async_twin(send_event_sync)
    update_preview = _async_twin(update_preview_sync)
    register_template_stages = _async_twin(register_template_stages_sync)
    stats = _async_twin(stats_sync)


class StepCounter:
    """Per-step progress without a call per step: update() is one 64-bit store into memory the
    engine's maintenance thread reads every min(throttle_ms, 50) ms, so it costs less than
    tqdm's update(1). The last value always reaches the engine: on detach(), on complete / fail /
    cancel, and on close.

    As with tqdm, counting past total_steps is not an error here; the engine skips (and counts in
    stats_sync()["invalid_updates"]) pairs it cannot apply. set() with a pair out of range is a refusal as
    described in ProgressTracker.
    """

    __slots__ = ("_tracker", "task_id", "_counter")

    def __init__(self, tracker: ProgressTracker, task_id: str, counter: memoryview) -> None:
        self._tracker = tracker
        self.task_id = task_id
        self._counter = counter

    def update(self, n: int = 1) -> None:
        """Advances by n steps (tqdm's update). Reads the stored step rather than keeping its own,
        so it continues from any value update_progress_sync() wrote meanwhile."""
        try:
            self._counter[0] += n
        except ValueError:  # beyond 64 bits
            self._tracker._out_of_range(self.task_id, self._counter[0] + n, self._counter[1])

    def set(self, step: int, total_steps: Optional[int] = None) -> None:
        """Sets the step (and total_steps, when given)."""
        counter = self._counter
        total_steps = counter[1] if total_steps is None else total_steps
        if not 0 <= step <= total_steps > 0:
            tracker = self._tracker
            tracker._refuse_steps(self.task_id, step, total_steps)
            return
        if total_steps > _STEP_MAX:
            self._tracker._out_of_range(self.task_id, step, total_steps)
            return
        counter[1] = total_steps
        counter[0] = step

    @property
    def step(self) -> int:
        return self._counter[0]

    @property
    def total_steps(self) -> int:
        return self._counter[1]

    def detach(self) -> None:
        """Applies the last value and stops the engine reading this counter (a no-op once the
        task is finished or the tracker closed)."""
        self._tracker._detach(self.task_id, self._counter)

    def __enter__(self) -> "StepCounter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.detach()


def _unattached_counter(step: int, total_steps: int) -> memoryview:
    """A counter no engine reads: what a refused stepper() counts into, so the loop runs on."""
    return memoryview((ctypes.c_longlong * 2)(step, total_steps)).cast("B").cast("q")


class ETAPredictor:
    """The seed's eta_predictor: completion records in the tracker's engine (the engine also stores
    one for every task completed)."""

    def __init__(self, tracker: ProgressTracker) -> None:
        self._tracker = tracker

    def record_completion_sync(
        self,
        *,
        template_id: str,
        stage_durations: Mapping[Union[int, str], float],
        total_duration: float,
        task_id: Optional[str] = None,
        quality: Optional[str] = None,
        resource_config: Optional[Mapping[str, Any]] = None,
        timestamp: Optional[float] = None,
        template_category: Optional[str] = None,
        stage_profiles: Optional[Mapping[Union[int, str], Mapping[str, Any]]] = None,
    ) -> None:
        """Stores a completion record; stage_durations maps stage index to seconds. Beyond the seed's
        arguments: template_category lets tasks of other templates of that category learn from it;
        stage_profiles maps stage index to {"steps"?, "head", "step_seconds", "tail"?} (see
        progress_eta_record_completion in progress.h)."""
        record: Dict[str, Any] = {
            "template_id": template_id,
            "stage_durations": {str(stage): seconds for stage, seconds in stage_durations.items()},
            "total_duration": total_duration,
        }
        for key, value in (
            ("task_id", task_id),
            ("quality", quality),
            ("resource_config", resource_config),
            ("timestamp", timestamp),
            ("template_category", template_category),
            ("stage_profiles", None if stage_profiles is None
             else {str(stage): dict(profile) for stage, profile in stage_profiles.items()}),
        ):
            if value is not None:
                record[key] = value
        self._tracker._call(_lib.progress_eta_record_completion, _lib.encode(json.dumps(record)))

    record_completion = _async_twin(record_completion_sync)

    def records(self, template_id: str, quality: Optional[str] = None) -> Dict[str, Any]:
        """{"template_id", "quality", "records": [...]}: stored records, oldest first (quality None:
        every quality)."""
        return self._tracker._read(
            _lib.progress_eta_records_get, _lib.encode(template_id), _lib.encode(quality)
        )


def _json_value(value: Any) -> Any:
    """json.dumps' fallback for event data: numpy scalars and 0-d arrays as the number they hold, sets and
    tuples as lists; anything else is not JSON (TypeError)."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Mapping):  # a UserDict, a MappingProxyType: json only takes dicts
        return dict(value)
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) in ((), None):
        result = item()
        if isinstance(result, (int, float, bool, str)):
            return result
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: The frames of a call into an engine, counted in flight, and those that hold the tracker's lock, which close() takes
#: (ProgressTracker._interrupted_here).
_CALL_CODES = tuple(method.__code__ for method in (
    ProgressTracker._call, ProgressTracker._update_progress_slow, ProgressTracker._counter, ProgressTracker._detach,
    ProgressTracker._finished, ProgressTracker._close_when_idle))


def _after_fork_in_child() -> None:
    """In a forked child only this thread runs and the engine starts empty: the parent's counters belong to tasks
    the child's engine does not hold, so a write to them would be lost without a word (and a task the child
    creates under the same id would never see its steps). The arrays stay alive, unused. The calls the parent's
    other threads were making are not the child's: it counts its own from zero."""
    global _EXIT_LOCK
    _EXIT_LOCK = threading.RLock()
    StageManager._lock = threading.RLock()  # another thread may have been opening a tracker at the fork
    for tracker in list(_TRACKERS):
        tracker._entered, tracker._left = itertools.count(), itertools.count()
        tracker._forked_counters.append(dict(tracker._counters))
        tracker._counters.clear()
        tracker._lock = threading.RLock()  # another thread may have held it at the fork
        tracker._warned_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""Exceptions: one class per progress_status code of include/progress.h, plus the loader's error.

The engine's codes are pinned and only ever appended, so the mapping below only grows. Each class also
derives from the built-in exception a Python caller would naturally catch (a bad number is a
ValueError, an unknown task a LookupError, ...).
"""

from __future__ import annotations

from typing import Dict, Optional, Type


class LibraryNotFoundError(ImportError):
    """libProgressEngine.so could not be loaded; the message lists every place tried and why."""


# progress_status values and names, as in include/progress.h (tests check them against
# progress_status_string so the two cannot drift apart).
STATUS_NAMES: Dict[int, str] = {
    0: "PROGRESS_OK",
    -1: "PROGRESS_E_INVALID_ARGUMENT",
    -2: "PROGRESS_E_NOT_FOUND",
    -3: "PROGRESS_E_EXISTS",
    -4: "PROGRESS_E_STATE",
    -5: "PROGRESS_E_RANGE",
    -6: "PROGRESS_E_JSON",
    -7: "PROGRESS_E_CONFIG",
    -8: "PROGRESS_E_UNSUPPORTED",
    -9: "PROGRESS_E_IO",
    -10: "PROGRESS_E_LIMIT",
    -11: "PROGRESS_E_INTERNAL",
}


class ProgressError(Exception):
    """A failed engine call. `status` is the progress_status code, `status_name` its C name, and the
    message is the engine's progress_last_error() text (what happened and what to do)."""

    #: The status a subclass stands for; None on the base class, which is used for unknown codes.
    code: Optional[int] = None

    def __init__(self, message: str = "", status: Optional[int] = None):
        super().__init__(message)
        self.status = self.code if status is None else status
        self.status_name = STATUS_NAMES.get(self.status, "PROGRESS_E_UNKNOWN")


class InvalidArgumentError(ProgressError, ValueError):
    """NULL or invalid string, bad task id, bad enum value (PROGRESS_E_INVALID_ARGUMENT)."""

    code = -1


class NotFoundError(ProgressError, LookupError):
    """No such task, or it expired after retention_seconds (PROGRESS_E_NOT_FOUND)."""

    code = -2


class ExistsError(ProgressError):
    """The task id already exists; pass resume=True to reopen it (PROGRESS_E_EXISTS)."""

    code = -3


class StateError(ProgressError):
    """Not allowed in the task's or stage's current state, e.g. an update after completion
    (PROGRESS_E_STATE). Also raised by the binding for a call on a closed ProgressTracker."""

    code = -4


class RangeError(ProgressError, ValueError):
    """A number out of range: NaN, progress outside 0..1, stage index, steps, a timestamp going
    backwards (PROGRESS_E_RANGE)."""

    code = -5


class JSONError(ProgressError, ValueError):
    """Malformed JSON, or a JSON value of the wrong type or shape (PROGRESS_E_JSON)."""

    code = -6


class ConfigError(ProgressError, ValueError):
    """Unknown configuration key or bad configuration value (PROGRESS_E_CONFIG)."""

    code = -7


class UnsupportedError(ProgressError, NotImplementedError):
    """A valid request this build of the engine cannot serve yet (PROGRESS_E_UNSUPPORTED)."""

    code = -8


class EngineIOError(ProgressError, OSError):
    """A system call failed in the engine: file, socket, thread (PROGRESS_E_IO)."""

    code = -9


class LimitError(ProgressError):
    """A bound was reached; the message says which (PROGRESS_E_LIMIT)."""

    code = -10


class InternalError(ProgressError):
    """A bug in the engine; please report it with the message (PROGRESS_E_INTERNAL)."""

    code = -11


_BY_CODE: Dict[int, Type[ProgressError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        ExistsError,
        StateError,
        RangeError,
        JSONError,
        ConfigError,
        UnsupportedError,
        EngineIOError,
        LimitError,
        InternalError,
    )
}


class TaskCancelled(Exception):
    """Someone asked the task's runner to stop (REST POST /api/v1/progress/tasks/{id}/cancel, the WebSocket "cancel"
    message, on any listener of the fleet). track() raises it into the loop at the next item, after cancelling the
    task (status "cancelled", the request's reason in "error"). A runner that watches ctx.cancel_requested may raise
    it in a ProgressContext, which then cancels the task rather than failing it. `task_id` and `reason` (None when the
    requester gave none) say which. Not a ProgressError: nothing went wrong."""

    def __init__(self, task_id: str, reason: Optional[str] = None):
        super().__init__(f"task {task_id!r} was cancelled on request" + (f": {reason}" if reason else ""))
        self.task_id = task_id
        self.reason = reason


class ProgressWarning(UserWarning):
    """An update of a runner-facing call that the engine refused, reported instead of raised (the default;
    `ProgressTracker(strict=True)` or PROGRESS_STRICT=1 raises it). Shown once per task and kind of error;
    `task_id` and `error` (the ProgressError that was not raised) say which."""

    def __init__(self, task_id: str, error: ProgressError):
        kind = type(error).__name__
        super().__init__(
            f"progress of task {task_id!r} not updated ({error.status_name}): {error}. The job goes on; further "
            f"{kind}s of this task are not shown (ProgressTracker(strict=True) or PROGRESS_STRICT=1 raises them)"
        )
        self.task_id = task_id
        self.error = error


def describe(exc: BaseException) -> str:
    """The text a failed task keeps for the exception that ended it: str(exc), else its type's name (also when its
    __str__ itself fails: the runner's exception must reach the runner, not one raised while describing it)."""
    try:
        text = str(exc)
    except Exception:
        text = ""
    return text or type(exc).__name__


def failed_exit(exc: BaseException) -> Optional[str]:
    """The failure a sys.exit() reports: sys.exit("text") its text, sys.exit(n) "exit status n" for n != 0. None for
    any other exception, for a clean exit (sys.exit(), sys.exit(0)), which stops the work without an error, and for
    SystemExit's subclasses: a framework stopping the process (Celery's WorkerShutdown, WorkerTerminate) has the
    work stopped from outside, not failed."""
    if type(exc) is not SystemExit or exc.code is None or exc.code == 0:
        return None
    if isinstance(exc.code, int):
        return f"exit status {int(exc.code)}"  # sys.exit(True) is status 1
    return reason_text(exc.code) or type(exc).__name__


def failure_text(exc: BaseException) -> Optional[str]:
    """The error a task ended by `exc` fails with: describe(exc) for an Exception, a failing sys.exit()'s
    (failed_exit); None for what stops the work without an error (KeyboardInterrupt, a clean exit, a framework's
    shutdown, a cancelled coroutine), which cancels it."""
    return describe(exc) if isinstance(exc, Exception) else failed_exit(exc)


def reason_text(reason: object) -> Optional[str]:
    """A cancel reason as text (a TaskCancelled may be raised with any object as its reason)."""
    if reason is None or isinstance(reason, str):
        return reason
    try:
        return str(reason)
    except Exception:
        return type(reason).__name__


def from_status(code: int, message: str) -> ProgressError:
    """The exception for a negative progress_status `code` (a plain ProgressError for codes this
    binding does not know yet, so a newer engine's new codes still raise)."""
    return _BY_CODE.get(code, ProgressError)(message, code)

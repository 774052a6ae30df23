"""Celery tasks that report into ProgressEngine.

    from celery import Celery
    from progress_engine.integrations.celery import ProgressTask

    app = Celery("jobs", broker="redis://127.0.0.1:6379/0")
    app.conf.progress_engine = {"redis_url": "redis://127.0.0.1:6379/0"}   # ProgressTracker(**this)

    @app.task(base=ProgressTask, bind=True)
    def render(self, frames):
        for i in range(1, frames + 1):
            ...
            self.progress(i, frames, message=f"frame {i}")
        self.stage("finalizing")

Each run of a ProgressTask is one engine task: created at `task_prerun` with the Celery task id as its id
and `progress_template` (default: the task's name) as its template, moved into its first working stage
(past a "queue" stage, since the worker now runs it), completed at `task_success`, failed at
`task_failure` with the exception's text, and cancelled at `task_revoked` (a revoked task that never ran
is created to show it). A retried task resumes its own task (`task_retry` logs why it waits); a first attempt
under the id of a finished task (a task id run again) replaces it. A run that
ends in `Ignore` (`self.replace(...)` raises it too) is completed, with a log entry saying so; one that ends
in `Reject` is failed ("rejected: ..."), or, when requeued, logged and left to the run that follows.

Every worker process opens its own tracker, with `app.conf.progress_engine` as its configuration (else
the environment, as `get_progress_tracker()`): give it `redis_url` and no `listen`, and a
`progress-server --redis-url` on the same Redis shows every worker's tasks (the fleet topology of the
README). A process whose tracker cannot be opened (a bad setting; a fixed `listen` port, which only one pool
child can bind) runs its tasks without reporting: the body's progress(), stage() and log() do nothing after one
ProgressWarning, unless the setting's `strict` (else PROGRESS_STRICT) asks for the error to be raised.

This module imports without Celery; `ProgressTask` then raises an ImportError saying what to install.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from typing import Any, Dict, Mapping, Optional, Tuple

from ..default import _ENV_SOURCES, _config_from_env, open_from_env
from ..errors import (ConfigError, ExistsError, NotFoundError, ProgressError, ProgressWarning, StateError, describe,
                      reason_text)
from ..model import StageStatus
from ..tracker import ProgressTracker, _strict_from_env

try:
    from celery import Task as _CeleryTask
    from celery import signals as _signals
    from celery.exceptions import Reject as _Reject
except ImportError:  # the module stays importable; ProgressTask says what is missing
    _CeleryTask = None
    _signals = None
    _Reject = None

_INSTALL = "progress_engine.integrations.celery needs Celery: pip install celery (and redis for a Redis broker)"

# One tracker per process, keyed by pid, opened on first use with the app's configuration and closed
# (flushed to Redis) at worker_process_shutdown. Celery's prefork pool forks its children from the
# worker's main process, which may itself hold a tracker (it cancels revoked tasks). That engine works in
# a child too (it is fork-safe: docs/THREADING.md), but it is the main process's object, with its
# finalizer; a child leaves it alone (referenced, finalizer detached) and reports through its own.
_trackers: Dict[int, ProgressTracker] = {}
_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have been opening its tracker at the fork: it does not exist here.
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _tracker(app: Any) -> ProgressTracker:
    pid = os.getpid()
    tracker = _trackers.get(pid)
    if tracker is None:
        with _lock:
            tracker = _trackers.get(pid)
            if tracker is None:
                for inherited in _trackers.values():
                    inherited._finalizer.detach()  # not at this process's exit either
                tracker = _trackers[pid] = open_from_env(*_configuration(app))
    return tracker


def _configuration(app: Any) -> Tuple[Any, str]:
    """What this process's tracker is opened with: the app's progress_engine setting, else the environment's (as
    get_progress_tracker()); and where it came from, for errors."""
    config = app.conf.get("progress_engine")
    if config is not None:
        return config, "the Celery app's progress_engine setting"
    return _config_from_env(), _ENV_SOURCES


# Per pid: why its tracker could not be opened. A task body's progress(), stage() and log() then do nothing.
_unopened: Dict[int, ProgressError] = {}


def _body_tracker(task: Any) -> Optional[ProgressTracker]:
    """The tracker of a task body's calls, or None when this process's cannot be opened (a bad configuration, a
    `listen` port another pool child holds): the task runs on without reporting, warned once per process, unless
    the configuration is strict (its `strict`, else PROGRESS_STRICT), which raises the error."""
    pid = os.getpid()
    tracker = _trackers.get(pid)  # opened since, by a signal handler's retry (the port freed, say)
    if tracker is not None or pid in _unopened:
        return tracker
    try:
        return _tracker(task.app)
    except (ProgressError, TypeError) as error:  # TypeError: a setting of the wrong type (strict="yes")
        if _strict_setting(task.app):
            raise
        _unopened[pid] = error
        failure = error if isinstance(error, ProgressError) else ConfigError(str(error))
        warnings.warn(ProgressWarning(task.request.id, failure), stacklevel=3)
        return None


def _strict_setting(app: Any) -> bool:
    """Whether the configuration the tracker was to be opened with asks for strict: its `strict`, else
    PROGRESS_STRICT (a configuration that cannot even be read is not strict: its error is what is reported)."""
    try:
        config, _ = _configuration(app)
        strict = config.get("strict") if isinstance(config, Mapping) else None
        return _strict_from_env() if strict is None else strict is True
    except (ProgressError, TypeError, ValueError):
        return False


def _close_own_tracker(**_: Any) -> None:
    # worker_process_shutdown: a pool child leaves through os._exit, so its tracker must flush to Redis now.
    tracker = _trackers.pop(os.getpid(), None)
    if tracker is not None:
        tracker.close()


if _CeleryTask is None:

    def __getattr__(name: str) -> Any:
        if name == "ProgressTask":
            raise ImportError(_INSTALL)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

else:

    class ProgressTask(_CeleryTask):
        """A Celery base task (`@app.task(base=ProgressTask, bind=True)`) whose runs are ProgressEngine tasks.

        Class attributes, also settable as `app.task(...)` options: `progress_template` (the template id;
        None: the task's name) and `progress_template_category`."""

        progress_template: Optional[str] = None
        progress_template_category: Optional[str] = None

        @property
        def tracker(self) -> ProgressTracker:
            """This process's tracker (opened on first use, from `app.conf.progress_engine`)."""
            return _tracker(self.app)

        def progress(self, step: int, total: int, message: Optional[str] = None) -> None:
            """Sets the current stage's progress to step / total (tqdm-like: call it every step; without a
            message it costs a memory store). Like stage() and log(), does nothing when the task body is
            called directly, as a function (no Celery request, so no engine task), or when this process's
            tracker cannot be opened (a ProgressWarning once per process; raised when the configuration is
            strict)."""
            task_id = self.request.id
            tracker = _body_tracker(self) if task_id is not None else None
            if tracker is not None:
                tracker.update_progress_sync(task_id, step, total, message)

        def stage(self, name: str, message: Optional[str] = None) -> None:
            """Enters the template's stage `name` (earlier open stages complete)."""
            task_id = self.request.id
            tracker = _body_tracker(self) if task_id is not None else None
            if tracker is not None:
                tracker.send_event_sync(task_id, name, None if message is None else {"message": message})

        def log(self, level: str, message: str) -> None:
            """Appends to the task's log ("debug", "info", "warning", "error")."""
            task_id = self.request.id
            tracker = _body_tracker(self) if task_id is not None else None
            if tracker is not None:
                tracker.log_sync(task_id, level, message)

    def _on_prerun(sender: Any = None, task_id: Optional[str] = None, **_: Any) -> None:
        if not isinstance(sender, ProgressTask) or task_id is None:
            return
        tracker = _tracker(sender.app)
        create = functools.partial(tracker.create_task_progress_sync, task_id, sender.progress_template or sender.name,
                                   template_category=sender.progress_template_category)
        # A retry (same id, maybe in another process) resumes its task, from Redis if need be. A first attempt
        # does not ask Redis (a round trip, up to 200 ms while Redis is down), unless this engine already holds
        # that id unfinished (a message delivered again); a finished one is an earlier run of the id: replaced.
        try:
            state = create(resume=True) if sender.request.retries else create(reuse=True)
        except ExistsError:
            state = create(resume=True)
        if state["status"] == "queued":
            # The worker runs it now: the engine enters a first stage named "queue" at creation; leave it.
            first = 1 if state["stages"]["0"]["name"] == "queue" and state["total_stages"] > 1 else 0
            tracker.update_stage_sync(task_id, first, StageStatus.IN_PROGRESS)

    def _on_success(sender: Any = None, **_: Any) -> None:
        if isinstance(sender, ProgressTask):
            try:
                _tracker(sender.app).complete_task_sync(sender.request.id)
            except StateError:
                pass  # the task body already finished it

    def _on_failure(sender: Any = None, task_id: Optional[str] = None, exception: Any = None, **_: Any) -> None:
        if not isinstance(sender, ProgressTask) or task_id is None:
            return
        tracker = _tracker(sender.app)
        # A Reject without requeue also gets task_failure, from the worker's main process, racing the pool child's
        # task_postrun (_on_postrun): both write the same text, whichever lands first.
        if isinstance(exception, _Reject):
            text = _rejected_text(exception)
        else:
            text = describe(exception) if exception else None
        try:
            try:
                tracker.fail_task_sync(task_id, text)
            except NotFoundError:
                # Sent by the worker's main process (a hard time limit, a pool child that died, a Reject), which
                # does not hold the task: take it over from Redis, as for a revoke, then fail it.
                tracker.create_task_progress_sync(
                    task_id, sender.progress_template or sender.name,
                    template_category=sender.progress_template_category, resume=True,
                )
                tracker.fail_task_sync(task_id, text)
        except StateError:
            pass

    def _on_postrun(sender: Any = None, task_id: Optional[str] = None, retval: Any = None, state: Any = None,
                    **_: Any) -> None:
        # A run that ended in Ignore (raised by the body, or by Task.replace) or Reject gets no task_success, and
        # task_failure only for a Reject without requeue, and then from the worker's main process (not in eager
        # mode): without this its task stayed executing for good. task_postrun comes from the process that ran
        # it, with the exception as retval.
        if not isinstance(sender, ProgressTask) or task_id is None or state not in ("IGNORED", "REJECTED"):
            return
        tracker = _tracker(sender.app)
        try:
            if state == "REJECTED" and getattr(retval, "requeue", False):
                # Delivered again: the next run goes on with the task (task_prerun resumes it).
                tracker.log_sync(task_id, "warning", f"rejected and requeued ({_reject_reason(retval)}): it runs again")
            elif state == "REJECTED":
                tracker.fail_task_sync(task_id, _rejected_text(retval))
            else:
                # Not an error: the body handed its result on (replace()) or chose to leave none.
                text = describe(retval) if isinstance(retval, BaseException) else str(state).lower()
                tracker.log_sync(task_id, "info", f"the run ended with Celery's Ignore ({text})")
                tracker.complete_task_sync(task_id)
        except (StateError, NotFoundError):
            pass  # the body already finished it

    def _reject_reason(exc: Any) -> str:
        # Reject's own text is its args tuple: ('bad payload', False).
        reason = reason_text(getattr(exc, "reason", None))
        return reason if reason else "no reason given"

    def _rejected_text(exc: Any) -> str:
        return f"rejected: {_reject_reason(exc)}"

    def _on_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
        # The task stays executing until its next attempt, which resumes it (task_prerun): say why it waits.
        if isinstance(sender, ProgressTask) and request is not None and request.id is not None:
            try:
                _tracker(sender.app).log_sync(request.id, "warning", f"retrying: {reason}")
            except NotFoundError:
                pass  # sent by the worker's main process (a child lost), which does not hold the task

    def _on_revoked(sender: Any = None, request: Any = None, terminated: bool = False, signum: Any = None,
                    expired: bool = False, **_: Any) -> None:
        # Sent in the worker's main process, which does not hold the task: resume takes it over from
        # Redis (or creates it, for a task revoked before it ran) so the cancel is written like any change.
        # After revoke(terminate=True) a write the killed child still had in flight can land later and win.
        if not isinstance(sender, ProgressTask) or request is None:
            return
        tracker = _tracker(sender.app)
        reason = "expired" if expired else f"terminated (signal {signum})" if terminated else "revoked"
        try:
            tracker.create_task_progress_sync(
                request.id, sender.progress_template or sender.name,
                template_category=sender.progress_template_category, resume=True,
            )
            tracker.cancel_task_sync(request.id, reason)
        except StateError:
            pass  # it finished before the revoke arrived

    # dispatch_uid: importing this module again (a reload) does not connect a second copy.
    _signals.task_prerun.connect(_on_prerun, dispatch_uid="progress_engine.prerun")
    _signals.task_success.connect(_on_success, dispatch_uid="progress_engine.success")
    _signals.task_failure.connect(_on_failure, dispatch_uid="progress_engine.failure")
    _signals.task_postrun.connect(_on_postrun, dispatch_uid="progress_engine.postrun")
    _signals.task_retry.connect(_on_retry, dispatch_uid="progress_engine.retry")
    _signals.task_revoked.connect(_on_revoked, dispatch_uid="progress_engine.revoked")
    _signals.worker_process_shutdown.connect(_close_own_tracker, dispatch_uid="progress_engine.shutdown")

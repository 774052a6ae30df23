"""track(): tqdm-style progress for a loop, one step per item."""

from __future__ import annotations

import atexit
import weakref
from itertools import islice
from time import perf_counter
from typing import Any, Dict, Iterable, Iterator, Optional, TypeVar

from .default import get_progress_tracker_sync
from .errors import ProgressError, TaskCancelled, describe, failed_exit, failure_text, reason_text
from .model import StageStatus
from .tracker import ProgressTracker, StepCounter

T = TypeVar("T")

# The runs whose task is open: a loop left with `break` over a Track bound to a name keeps its generator (and task)
# until the Track is collected, which may be never before exit.
_open_runs: "weakref.WeakSet[_Run]" = weakref.WeakSet()


def _stop_open_runs() -> None:
    """At exit, before the trackers close (atexit runs this first: it was registered after the tracker module's
    handler): each run still open is stopped as a loop left early is ("stopped at step N of T")."""
    for run in list(_open_runs):
        run.stop()


atexit.register(_stop_open_runs)


def track(
    iterable: Iterable[T],
    task_id: str,
    total: Optional[int] = None,
    tracker: Optional[ProgressTracker] = None,
    template_id: str = "track",
    template_category: Optional[str] = None,
    **create_kwargs: Any,
) -> "Track[T]":
    """Yields the items of `iterable`, reporting one step per item to task `task_id` (created at
    the first item; tracker None: the default tracker). See Track for how the task ends.

    total None: len(iterable), when it has one. An iterable of unknown length (a generator) is
    tracked too: the task enters its main stage and each item updates that stage's message
    ("N items"), with no percentage and no ETA until it completes (pass total= for them).

    A finished task under `task_id` (the loop of the previous epoch) is replaced by the new one
    (create_task_progress's reuse=True, unless resume=True or reuse=False is given); one still running
    raises ExistsError."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except (TypeError, OverflowError):  # no length, or one beyond what len() can answer
            total = None
    create: Dict[str, Any] = dict(template_id=template_id, template_category=template_category)
    if not create_kwargs.get("resume"):
        create["reuse"] = True
    create.update(create_kwargs)
    return Track(iterable, task_id, total, get_progress_tracker_sync() if tracker is None else tracker, create)


class Track(Iterator[T]):
    """What track() returns. Iterating it creates the task; at the end of the items the task
    completes, and an exception raised by the iterable fails it and propagates.

    A plain `for` loop cannot see an exception raised in its own body: Python only tells the
    iterator that the loop stopped, exactly as for `break`. So a loop left early cancels the task
    ("stopped at step N of M"). Used as a context manager, the task fails with the exception text
    instead when the `with` block ends with an exception (or with sys.exit("text") / sys.exit(n != 0):
    that text or "exit status n"; a KeyboardInterrupt or a clean exit stops it as above):

        with track(items, task_id="job") as items:
            for item in items:
                process(item)

    When someone asks for the task to be cancelled (REST POST /api/v1/progress/tasks/{id}/cancel, the
    WebSocket "cancel" message), the loop gets TaskCancelled at the next item: the task is cancelled
    first, with the request's reason. The request is looked for between items, not on each one: after
    every item while items take 10 ms or more, else about every 10 ms of the loop (at most every 1,000
    items), so a loop of fast items pays nothing per item for it.
    """

    def __init__(
        self, iterable: Iterable[T], task_id: str, total: Optional[int], tracker: ProgressTracker,
        create: Dict[str, Any],
    ) -> None:
        self.task_id = task_id
        self.total = total
        self._run = _Run(tracker, task_id, total)
        # The generator holds _run, never self: without a cycle, a loop that drops this object
        # closes the generator (and so ends the task) at once rather than at the next GC.
        self._items = _items(self._run, iterable, create)

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("this track() has no length: its iterable had none and no total= was given")
        return self.total

    def __iter__(self) -> Iterator[T]:
        # The generator itself: a `for` loop then resumes it directly, with no call of __next__ per item.
        return self._items

    def __next__(self) -> T:
        return next(self._items)

    def close(self) -> None:
        """Stops early: cancels the task if it is still running."""
        self._items.close()

    def __enter__(self) -> "Track[T]":
        self._run.in_with = True
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self._run.in_with = False
        if isinstance(exc, TaskCancelled):
            self._run.cancel(exc.reason)
        elif (failure := failure_text(exc)) is not None:
            self._run.fail(failure)
        else:
            self._run.stop()


class _Run:
    """The task of one Track, shared by the Track and its generator."""

    #: Loop time between two looks for a cancel request, and the most items between two.
    CANCEL_LOOK_SECONDS = 0.01
    CANCEL_LOOK_MAX_ITEMS = 1000

    def __init__(self, tracker: ProgressTracker, task_id: str, total: Optional[int]) -> None:
        self.tracker = tracker
        self.task_id = task_id
        self.total = total
        self.steps: Optional[StepCounter] = None
        self.counted = 0  # items so far, when the total is unknown
        self.open = False  # the task exists and has not been finished here yet
        self.in_with = False
        self.items_per_look = 1
        self.looked_at = perf_counter()

    def items_until_look(self) -> int:
        """Looks for a cancel request; when there is one, raises TaskCancelled (the generator cancels). Else how
        many items to yield before the next look: as many as the last ones' pace fits in CANCEL_LOOK_SECONDS (at
        least 1, at most twice as many as last time and CANCEL_LOOK_MAX_ITEMS)."""
        if self.tracker.cancel_requested(self.task_id):
            raise TaskCancelled(self.task_id, self.tracker.get_task_progress_sync(self.task_id).get("cancel_reason"))
        now = perf_counter()
        elapsed, self.looked_at = now - self.looked_at, now
        last = self.items_per_look
        fitting = int(last * self.CANCEL_LOOK_SECONDS / elapsed) if elapsed > 0 else self.CANCEL_LOOK_MAX_ITEMS
        self.items_per_look = max(1, min(fitting, 2 * last, self.CANCEL_LOOK_MAX_ITEMS))
        return self.items_per_look

    # Each finishes the task only if it is still open here: a Track left in a `with` is finished by
    # __exit__, and its generator, closed later, must not try again.
    def complete(self) -> None:
        if self.open:
            self.open = False
            self._finish(self.tracker.complete_task_sync)

    def fail(self, error: str) -> None:
        if self.open:
            self.open = False
            self._finish(self.tracker.fail_task_sync, error)

    def cancel(self, reason: Optional[str]) -> None:
        if self.open:
            self.open = False
            self._finish(self.tracker.cancel_task_sync, reason_text(reason) or "cancelled on request")

    def stop(self) -> None:
        if self.open:
            self.open = False
            if self.total is None:
                reason = f"stopped after {self.counted} items"
            else:
                reason = f"stopped at step {self.steps.step if self.steps is not None else 0} of {self.total}"
            self._finish(self.tracker.cancel_task_sync, reason)

    def _finish(self, finish: Any, *args: Any) -> None:
        _open_runs.discard(self)
        # The loop's own code is done: a task finished or expired meanwhile must not raise into it.
        try:
            finish(self.task_id, *args)
        except ProgressError as error:
            self.tracker._refused(self.task_id, error)


_END = object()


def _items(run: _Run, iterable: Iterable[T], create: Dict[str, Any]) -> Iterator[T]:
    tracker, task_id = run.tracker, run.task_id
    tracker.create_task_progress_sync(task_id, **create)
    run.open = True
    _open_runs.add(run)
    # The items come in runs of run.items_until_look(), each an inner loop with nothing added per item; between two
    # runs the next item is taken only after the look for a cancel request, so TaskCancelled comes instead of it
    # (and no item is taken from the iterable once a request was seen).
    try:
        items = iter(iterable)
        if run.total:
            run.steps = steps = tracker.stepper(task_id, run.total)
            # The counter's memory itself (StepCounter.update without its call): it goes on from any step written
            # meanwhile (update_progress_sync, StepCounter.set), as update() does.
            counter = steps._counter
            for item in islice(items, 1):
                yield item
                counter[0] += 1
            while True:
                n = run.items_until_look()
                item = next(items, _END)
                if item is _END:
                    break
                yield item
                counter[0] += 1
                for item in islice(items, n - 1):
                    yield item
                    counter[0] += 1
        elif run.total is None:
            # Unknown length: step 0 of 1 enters the main stage; each item then sets its message.
            tracker.update_progress_sync(task_id, 0, 1, message="0 items")
            stage = tracker.get_task_progress_sync(task_id)["current_stage"]
            n = 1
            for item in items:
                yield item
                run.counted += 1
                tracker.update_stage_sync(task_id, stage, StageStatus.IN_PROGRESS, 0.0, f"{run.counted} items")
                n -= 1
                if not n:
                    n = run.items_until_look()
        else:
            yield from items  # nothing to count: completes at once, or fails
    except TaskCancelled as exc:
        run.cancel(exc.reason)
        raise
    except GeneratorExit:
        if not run.in_with:  # in a `with`, __exit__ decides: it can see why the loop stopped
            run.stop()
        raise
    except BaseException as exc:
        run.fail(failed_exit(exc) or describe(exc))  # any exception the iterable raises fails the task
        raise
    run.complete()

"""ProgressContext: the seed's `async with ProgressContext(tracker, ...) as ctx` around one task."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Optional, Union

from .errors import ProgressError, StateError, TaskCancelled, failure_text, reason_text
from .tracker import ProgressTracker

_STEP_ONLY = frozenset({"step", "total_steps"})


class _Done:
    """An awaitable that is already complete: the callback's result, so runner code may `await` it
    (as in the seed) or call it plainly from synchronous code, with nothing left un-awaited."""

    __slots__ = ()

    def __await__(self) -> Iterator[None]:
        return iter(())


_DONE = _Done()


class ProgressContext:
    """Creates the task on entry; on exit completes it, or fails it with the exception's text and
    lets the exception propagate (a KeyboardInterrupt, a cancelled coroutine, a clean sys.exit() or a TaskCancelled
    cancels it instead, and sys.exit("text") or sys.exit(n != 0) fails it with that text or "exit status n";
    `ctx.cancel_requested` says when someone asked the runner to stop).
    A task the runner already finished (execution_complete / execution_error) is left as it is; one
    that is gone (expired, or never created) is a refusal, as with the callback. The callback raises
    nothing for an update the engine refuses unless the tracker is strict (see ProgressTracker), so a
    reporting mistake never fails the task. Works with `async with` and with plain `with`; extra
    keyword arguments go to create_task_progress (resource_config, metadata, resume, reuse, timestamp)."""

    def __init__(
        self,
        tracker: ProgressTracker,
        task_id: str,
        template_id: str,
        template_category: Optional[str] = None,
        quality: Optional[str] = None,
        batch_id: Optional[str] = None,
        **create_kwargs: Any,
    ) -> None:
        self.tracker = tracker
        self.task_id = task_id
        self._create = dict(
            template_id=template_id,
            template_category=template_category,
            quality=quality,
            batch_id=batch_id,
            **create_kwargs,
        )

    def __enter__(self) -> "ProgressContext":
        self.tracker.create_task_progress_sync(self.task_id, **self._create)
        return self

    def __exit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            if exc is None:
                self.tracker.complete_task_sync(self.task_id)
            elif isinstance(exc, TaskCancelled):
                self.tracker.cancel_task_sync(self.task_id, reason_text(exc.reason) or "cancelled on request")
            elif (failure := failure_text(exc)) is not None:
                self.tracker.fail_task_sync(self.task_id, failure)
            else:
                self.tracker.cancel_task_sync(self.task_id, type(exc).__name__)
        except StateError:
            pass  # already finished, e.g. by an execution_complete event
        except ProgressError as error:
            self.tracker._refused(self.task_id, error)

    async def __aenter__(self) -> "ProgressContext":
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Optional[BaseException], tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)

    @property
    def cancel_requested(self) -> bool:
        """Whether someone asked this task's runner to stop (ProgressTracker.cancel_requested). Stop the work and
        leave the block by raising TaskCancelled(ctx.task_id): the task is then cancelled."""
        return self.tracker.cancel_requested(self.task_id)

    def preview_due(self) -> bool:
        """Whether the task's next update_preview would be taken (ProgressTracker.preview_due)."""
        return self.tracker.preview_due(self.task_id)

    def get_callback(self) -> Callable[..., _Done]:
        """The runner's `callback(event, data=None)`: applies the event at once and returns an
        already-completed awaitable. execution_progress with only step and total_steps takes the
        step-counter path (no engine call) when both are ints; every other event goes to the engine as it
        is, and so does a step of another type (a NaN, 3.5, None, "5"), which is the engine's to refuse as any
        bad event data."""
        task_id = self.task_id
        update_progress = self.tracker.update_progress_sync
        send_event = self.tracker.send_event_sync

        def callback(event: str, data: Union[Mapping[str, Any], str, None] = None) -> _Done:
            if event == "execution_progress" and isinstance(data, Mapping) and data.keys() == _STEP_ONLY:
                step, total_steps = data["step"], data["total_steps"]
                if type(step) is int and type(total_steps) is int:
                    update_progress(task_id, step, total_steps)
                    return _DONE
            send_event(task_id, event, data)
            return _DONE

        return callback

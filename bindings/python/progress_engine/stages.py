"""StageManager: process-wide template stages, applied to every ProgressTracker of the process."""

from __future__ import annotations

import ctypes
import threading
import weakref
from typing import Any, Dict, Iterable, Mapping, Union

from . import _lib
from .model import Stage, stages_json


class StageManager:
    """Registers template stages for every tracker of the process, open now or opened later (as the
    seed's `StageManager.register_template_stages`). Each engine keeps its own copy; tasks created
    afterwards with that template_id use them, existing tasks keep theirs."""

    # Reentrant: a signal handler that closes or opens a tracker may interrupt this thread while it holds it.
    _lock = threading.RLock()
    _templates: Dict[str, str] = {}  # template_id -> stages JSON, in registration order
    _trackers: "weakref.WeakSet[Any]" = weakref.WeakSet()

    @classmethod
    def register_template_stages(cls, template_id: str, stages: Iterable[Union[Stage, Mapping[str, Any]]]) -> None:
        """Registers `stages` for `template_id` in every open tracker and every tracker opened later.

        Raises the engine's error for an invalid list (InvalidArgumentError: empty, a name twice, a bad
        weight; JSONError: not a list of {name, weight}; LimitError: more than 256 stages), and then
        nothing is registered anywhere."""
        data = stages_json(stages)
        with cls._lock:
            # All engines apply the same rules: if the first accepts the list, the others do too. A signal handler
            # may interrupt the loop (the lock is reentrant) and close a tracker, or open one, which adopts the
            # templates registered so far: the loop goes on until every open tracker has the list.
            done: set = set()
            while True:
                todo = [t for t in list(cls._trackers) if t not in done and not t.closed]
                if not todo:
                    break
                for tracker in todo:
                    if not tracker.closed:
                        tracker._register_stages_json(template_id, data)
                    done.add(tracker)
            if not done:
                _validate(template_id, data)
            cls._templates[template_id] = data

    @classmethod
    def _adopt(cls, tracker: Any) -> None:
        """Called by a newly opened tracker: gives it every registered template."""
        with cls._lock:
            for template_id, data in list(cls._templates.items()):  # (a handler may register meanwhile)
                tracker._register_stages_json(template_id, data)
            cls._trackers.add(tracker)

    @classmethod
    def _forget(cls, tracker: Any) -> None:
        """Called by a closing tracker, before its engine goes, so no registration reaches it after."""
        with cls._lock:
            cls._trackers.discard(tracker)


def _validate(template_id: str, data: str) -> None:
    # With no tracker open, a short-lived engine checks the list, so a bad one fails here rather than
    # at the next tracker's open, and the rules live only in the engine.
    engine = ctypes.c_void_p()
    _lib.progress_engine_open(None, ctypes.byref(engine))
    try:
        _lib.progress_register_template_stages(engine, _lib.encode(template_id), _lib.encode(data))
    finally:
        _lib.progress_engine_close(engine)

"""tqdm integration: the tqdm bars a block of code creates report into a ProgressEngine task.

    from progress_engine.integrations.tqdm import report_tqdm

    with report_tqdm("job-1", tracker):   # tracker None: the default tracker
        pipe(prompt)                       # the library's own bars move task job-1

While the block runs, every bar created in it (in that thread, or that asyncio task) — `tqdm.tqdm`,
`tqdm.auto.tqdm`, `tqdm.std.tqdm` and every other subclass of `tqdm.std.tqdm`, whoever creates it —
reports into the task: the innermost open bar's n / total is the current stage's progress (a bar going
past its total counts as its total), its `desc` the stage's message, and a bar without a total
counts items ("desc: N items") and leaves the progress as it was. Bars draw as before, disabled ones
report too, and bars of other threads or created after the block are untouched. `report_tqdm` is also
a decorator. `tqdm` and `trange` here are drop-in bars that report into `task_id=` by themselves.

How: the first report_tqdm wraps `tqdm.std.tqdm.__new__` once; a bar created while a report_tqdm is
current gets a subclass of its own class (so isinstance checks still hold) whose `update` adds one
Python call and one store into the task's step counter (the engine's counter path, no call into the
library; benchmarks/python/bench_tqdm.py: about half of tqdm's own update), and whose refresh (tqdm's
own redraw, at most every mininterval) and close send the description and the totals. Iterating a bar
adds nothing per item: tqdm calls update() itself only when it redraws, and sets the final count at
the end, so the task follows what the bar shows. Other bars pay one ContextVar lookup at creation.

Locks: each report_tqdm has one, held while it sends; a refused report warns under it, and a warning may be
written through tqdm.write (logging_redirect_tqdm), which takes tqdm's lock, or go through a logging handler's lock
whose holder may be waiting for tqdm's. So nothing is sent while tqdm's lock is held: a redraw under it (tqdm's
monitor thread, tqdm.write redrawing every bar: refresh(nolock=True)) leaves its report to the bar's next update or
redraw; a bar collected without close() on the monitor thread (which drops its references under tqdm's lock) is let
go without its last report; and a close that cannot take the report_tqdm's lock within a second (a close called
under tqdm's lock) lets its last report go rather than wait for good.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
import time
import weakref
from contextvars import ContextVar, Token
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from ..default import get_progress_tracker_sync
from ..errors import ProgressError
from ..tracker import _STEP_MAX, ProgressTracker

__all__ = ["report_tqdm", "tqdm", "trange"]

F = TypeVar("F", bound=Callable[..., Any])

_INSTALL = "progress_engine.integrations.tqdm needs tqdm, which is not installed: pip install tqdm"

#: Steps a bar whose n or total is not an integer (tqdm allows floats) is reported in.
_SCALE = 10_000
#: How long a bar's close waits for its report_tqdm's lock before it lets its last report go (the module's
#: "Locks"), in seconds.
_RELEASE_WAIT = 1.0
#: How often a disabled bar, which tqdm never redraws, sends what only a redraw sends (its description,
#: a count of items, a fractional n), in seconds: tqdm's default mininterval.
_INTERVAL = 0.1

#: The report_tqdm of the running code: a ContextVar, so it is per thread (a new thread starts without
#: one) and per asyncio task.
_current: "ContextVar[Optional[_Reporter]]" = ContextVar("progress_engine_report_tqdm", default=None)
_install_lock = threading.Lock()
_installed = False


#: Every live _Reporter, whose lock the child of a fork gets anew.
_reporters: "weakref.WeakSet[_Reporter]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Another thread of the parent may have been installing the reporting classes, or syncing a bar, at the fork:
    # that thread does not exist in the child, and the lock it held would never be released.
    global _install_lock
    _install_lock = threading.Lock()
    for reporter in list(_reporters):
        reporter.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
#: base class -> (its reporting subclass, that subclass for a disabled bar)
_classes: Dict[type, Tuple[type, type]] = {}


def _tqdm_std() -> Any:
    try:
        import tqdm.std
    except ImportError as exc:
        raise ImportError(_INSTALL, name="tqdm") from exc
    return tqdm.std


def _install() -> None:
    """Wraps tqdm.std.tqdm.__new__, once per process: a bar created while a report_tqdm is current
    becomes an instance of its reporting subclass before its __init__ runs."""
    global _installed
    with _install_lock:
        if _installed:
            return
        std = _tqdm_std().tqdm
        original_new = std.__new__

        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
            bar = original_new(cls, *args, **kwargs)
            reporter = _current.get()
            if reporter is not None:
                if "_pe_base" not in cls.__dict__:  # (type(bar)(...) of a reporting bar already is one)
                    bar.__class__ = _reporting_classes(cls)[0]
                bar._pe_reporter = reporter
            return bar

        std.__new__ = staticmethod(__new__)
        _installed = True


def _description(bar: Any) -> str:
    desc = getattr(bar, "desc", "") or ""
    if not isinstance(desc, str):  # tqdm takes any object as desc (it formats it), bytes and numbers included
        desc = desc.decode("utf-8", "replace") if isinstance(desc, bytes) else str(desc)
    return desc[:-2] if desc.endswith(": ") else desc  # set_description() appends ": "


def _count(n: Any) -> str:
    return str(int(n)) if isinstance(n, float) and n.is_integer() else str(n)


class _Reporter:
    """One report_tqdm (or one drop-in bar's task): the open bars created under it, innermost last, and
    what was last sent to the task."""

    def __init__(self, task_id: str, tracker: ProgressTracker) -> None:
        self.task_id = task_id
        self.tracker = tracker
        # Weak, as tqdm's own list of bars: a bar a library drops without closing it is closed by its
        # __del__, which it would never reach while this list held it.
        self.bars: "List[weakref.ref[Any]]" = []
        self.lock = threading.RLock()  # adopt / release / sync may come from tqdm's monitor thread or GC
        self.closed = False
        self.pair = (0, 1)  # the last (step, total_steps) sent, which a bar without total keeps
        self.message: Optional[str] = None  # the last message sent
        _reporters.add(self)

    def innermost(self) -> Any:
        with self.lock:
            while self.bars:
                bar = self.bars[-1]()
                if bar is not None and getattr(bar, "_pe_reporter", None) is self:
                    return bar
                self.bars.pop()  # gone, or let go without this lock (release)
            return None

    def adopt(self, bar: Any) -> None:
        with self.lock:
            if self.closed:  # its report_tqdm ended while the bar was being created
                _detach(bar)
                return
            previous = self.innermost()
            if previous is not None:
                previous._pe_counter = None  # no longer innermost
            self.bars.append(weakref.ref(bar))
            self.sync(bar)

    def release(self, bar: Any) -> None:
        """The bar closed: its last count is sent (unless the lock stays held past _RELEASE_WAIT), and the bar
        around it (if any) drives the task again."""
        if not self.lock.acquire(timeout=_RELEASE_WAIT):
            _detach(bar)  # a plain bar again, its last count not sent
            return
        try:
            innermost = self.innermost() is bar
            if innermost:
                self.sync(bar)
            self.bars = [ref for ref in self.bars if ref() is not None and ref() is not bar]
            _detach(bar)
            outer = self.innermost() if innermost else None
            if outer is not None:
                self.sync(outer)
        finally:
            self.lock.release()

    def close(self) -> None:
        """The report_tqdm ended: its open bars stop reporting and are plain bars again."""
        with self.lock:
            self.closed = True
            for ref in self.bars:
                bar = ref()
                if bar is not None:
                    _detach(bar)
            self.bars.clear()

    def sync(self, bar: Any) -> None:
        """Sends the innermost bar's state; leaves the bar's fast path (its counter) set when n and total
        are integers."""
        with self.lock:
            if self.innermost() is not bar or self.tracker.closed:
                return
            n, total = bar.n, bar.total
            desc = _description(bar)
            exact = False
            try:
                counted = total is None or not total > 0  # NaN too
            except TypeError:
                counted = True
            if not counted:
                if isinstance(n, int) and isinstance(total, int) and total <= _STEP_MAX:
                    exact = True
                    step, steps = min(max(n, 0), total), total
                else:
                    fraction = n / total
                    fraction = min(fraction, 1.0) if fraction >= 0 else 0.0  # NaN -> 0
                    step, steps = round(fraction * _SCALE), _SCALE
                self.pair = (step, steps)
                message: Optional[str] = desc
            else:
                step, steps = self.pair
                message = f"{desc}: {_count(n)} items" if desc else f"{_count(n)} items"
            if not message and not self.message:
                message = self.message  # nothing of ours to clear: keep the runner's own message
            tracker, task_id = self.tracker, self.task_id
            try:
                if message != self.message:
                    tracker.update_progress_sync(task_id, step, steps, message)
                    self.message = message
                tracker.update_progress_sync(task_id, step, steps)  # attaches the task's counter on first use
            except ProgressError:
                if tracker.closed:
                    return  # closed by another thread since the look above: nothing to report into
                raise  # strict: the task's refusal
            bar._pe_counter = tracker._counters.get(task_id) if exact else None
            bar._pe_limit = steps
            bar._pe_due = time.monotonic() + _INTERVAL


def _detach(bar: Any) -> None:
    bar._pe_reporter = None
    bar._pe_counter = None
    base = type(bar).__dict__.get("_pe_base")
    if base is not None:
        bar.__class__ = base


def _reporting_classes(base: type) -> Tuple[type, type]:
    """The subclasses of `base` a reporting bar gets: one for a bar that draws, one for a disabled bar
    (tqdm neither counts nor redraws those, so the subclass does both)."""
    classes = _classes.get(base)
    if classes is not None:
        return classes
    base.get_lock()  # created on the base now, so the subclasses share it rather than make their own
    base_init, base_update, base_refresh, base_close, base_reset = (
        base.__init__, base.update, base.refresh, base.close, base.reset
    )
    base_del = getattr(base, "__del__", None)
    detach = _detach  # a module global may already be None when a bar is collected at interpreter exit
    monitor_class = getattr(_tqdm_std(), "TMonitor", ())  # tqdm's monitor thread (tqdm.std imports it)

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base_init(self, *args, **kwargs)
        reporter = self._pe_reporter
        if reporter is None:
            return
        if self.disable and not hasattr(self, "desc"):  # a disabled bar's __init__ returns before storing it
            self.desc = kwargs.get("desc", args[1] if len(args) > 1 else None) or ""
        self.__class__ = disabled if self.disable else drawing
        reporter.adopt(self)

    def update(self: Any, n: Any = 1) -> Any:
        shown = base_update(self, n)
        counter = self._pe_counter
        if counter is not None:
            value, limit = self.n, self._pe_limit
            try:
                if value < limit:
                    counter[0] = value if value >= 0 else 0
                elif value >= limit:  # else a NaN count: nothing to report
                    counter[0] = limit
            except (TypeError, ValueError):  # n became a float, or past 64 bits: the general path
                reporter = self._pe_reporter
                if reporter is not None:  # its report_tqdm may have ended on another thread meanwhile
                    reporter.sync(self)
        return shown

    def refresh(self: Any, *args: Any, **kwargs: Any) -> Any:
        shown = base_refresh(self, *args, **kwargs)
        reporter = self._pe_reporter
        # nolock: the caller holds tqdm's lock (its monitor thread, tqdm.write redrawing every bar), under which
        # nothing is sent (the module's "Locks"): the bar's next update or redraw reports.
        if reporter is not None and not kwargs.get("nolock", args[0] if args else False):
            reporter.sync(self)
        return shown

    def close(self: Any) -> None:
        try:
            base_close(self)
        finally:
            reporter = self._pe_reporter
            if reporter is not None:
                reporter.release(self)

    def __del__(self: Any) -> None:
        # Collected without close() on tqdm's monitor thread, which drops its references to the bars under
        # tqdm's lock: nothing is sent there (the module's "Locks"), so the bar is let go without its last
        # report. Anywhere else tqdm's __del__ closes it as usual, the last report included.
        try:
            if self.__dict__.get("_pe_reporter") is not None and isinstance(threading.current_thread(), monitor_class):
                detach(self)
        finally:
            if base_del is not None:
                base_del(self)

    def update_disabled(self: Any, n: Any = 1) -> None:
        try:
            self.n += n
        except TypeError:  # tqdm's update() of a disabled bar returns before looking at n: update(None) passes
            return
        counter = self._pe_counter
        # A total changed since the last sync (no redraw of a disabled bar would send it): the general path.
        if counter is not None and self.total == self._pe_limit:
            value, limit = self.n, self._pe_limit
            try:
                if value < limit:
                    counter[0] = value if value >= 0 else 0
                elif value >= limit:
                    counter[0] = limit
                else:  # a NaN count: nothing to report
                    return
                return
            except (TypeError, ValueError):
                pass
        reporter = self._pe_reporter
        if reporter is not None and (counter is not None or time.monotonic() >= self._pe_due):
            reporter.sync(self)

    def iter_disabled(self: Any) -> Any:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def reset_disabled(self: Any, total: Any = None) -> None:
        base_reset(self, total)  # returns before its refresh for a disabled bar
        reporter = self._pe_reporter
        if reporter is not None:
            reporter.sync(self)

    shared = {
        "_pe_base": base, "_pe_reporter": None, "_pe_counter": None, "_pe_limit": 0, "_pe_due": 0.0,
        "__init__": __init__, "refresh": refresh, "close": close, "__del__": __del__, "__module__": base.__module__,
        "__qualname__": base.__qualname__, "__doc__": base.__doc__,
    }
    drawing = type(base.__name__, (base,), dict(shared, update=update))
    disabled = type(base.__name__, (base,), dict(
        shared, update=update_disabled, __iter__=iter_disabled, reset=reset_disabled
    ))
    classes = _classes[base] = (drawing, disabled)
    return classes


class report_tqdm:
    """Context manager (`with`, `async with`) and decorator: every tqdm bar created inside reports
    into task `task_id` of `tracker` (None: get_progress_tracker_sync()). The task must exist (create
    it first, e.g. with ProgressContext); reporting follows the tracker's rules for refused updates
    (a ProgressWarning, or an exception when strict). See the module's documentation."""

    def __init__(self, task_id: str, tracker: Optional[ProgressTracker] = None) -> None:
        _tqdm_std()  # the ImportError saying what to install, at once rather than at the first bar
        if not isinstance(task_id, str):
            raise TypeError(f"task_id must be a str, not {type(task_id).__name__}")
        self.task_id = task_id
        self.tracker = tracker
        self._reporter: Optional[_Reporter] = None
        self._token: Any = None

    def __enter__(self) -> "report_tqdm":
        if self._reporter is not None:
            raise RuntimeError("this report_tqdm is already in use; create one per block")
        _install()
        tracker = get_progress_tracker_sync() if self.tracker is None else self.tracker
        self._reporter = _Reporter(self.task_id, tracker)
        self._token = _current.set(self._reporter)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        reporter, self._reporter = self._reporter, None
        try:
            _current.reset(self._token)
        except ValueError:
            # Left in another context than the one entered (a generator's `with`, its items taken through
            # copied contexts, as anyio's iterate_in_threadpool does): that context's value goes back.
            if _current.get(None) is reporter:
                old = self._token.old_value
                _current.set(None if old is Token.MISSING else old)
        finally:
            if reporter is not None:
                reporter.close()

    async def __aenter__(self) -> "report_tqdm":
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)

    def __call__(self, func: F) -> F:
        """Decorates a function (or coroutine function): each call runs in a report_tqdm of its own. For a
        generator function (or async one) each generator reports while its body runs, from its first item to its
        end: the bars it creates, not those its caller creates between items."""
        task_id, tracker = self.task_id, self.tracker
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def run_generator(*args: Any, **kwargs: Any) -> Any:
                reporter = _Reporter(task_id, get_progress_tracker_sync() if tracker is None else tracker)
                gen = func(*args, **kwargs)
                _install()
                try:
                    method, value = gen.send, None
                    while True:
                        token = _current.set(reporter)
                        try:
                            item = method(value)
                        except StopIteration as stop:
                            return stop.value
                        finally:
                            _current.reset(token)
                        try:
                            method, value = gen.send, (yield item)
                        except GeneratorExit:
                            raise
                        except BaseException as error:  # thrown in by the caller: into the body, as `yield from`
                            method, value = gen.throw, error
                finally:
                    gen.close()
                    reporter.close()

            return run_generator  # type: ignore[return-value]
        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def run_async_generator(*args: Any, **kwargs: Any) -> Any:
                reporter = _Reporter(task_id, get_progress_tracker_sync() if tracker is None else tracker)
                gen = func(*args, **kwargs)
                _install()
                try:
                    method, value = gen.asend, None
                    while True:
                        token = _current.set(reporter)
                        try:
                            item = await method(value)
                        except StopAsyncIteration:
                            return
                        finally:
                            _current.reset(token)
                        try:
                            method, value = gen.asend, (yield item)
                        except GeneratorExit:
                            raise
                        except BaseException as error:
                            method, value = gen.athrow, error
                finally:
                    await gen.aclose()
                    reporter.close()

            return run_async_generator  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with report_tqdm(task_id, tracker):
                    return await func(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            with report_tqdm(task_id, tracker):
                return func(*args, **kwargs)

        return run  # type: ignore[return-value]


def _drop_ins() -> Tuple[type, Callable[..., Any]]:
    """The drop-in tqdm class and trange, made at first use (tqdm must then be installed)."""
    _tqdm_std()
    from tqdm.auto import tqdm as auto_tqdm

    class tqdm(auto_tqdm):  # type: ignore[misc, valid-type]
        """tqdm.auto.tqdm with two more keyword arguments: `task_id` (the bar reports into that task, as
        under report_tqdm) and `tracker` (None: get_progress_tracker_sync()). Without task_id it is a
        plain tqdm.auto bar (one that reports inside report_tqdm)."""

        def __new__(cls, *args: Any, task_id: Optional[str] = None, tracker: Optional[ProgressTracker] = None,
                    **kwargs: Any) -> Any:
            if task_id is None:
                return super().__new__(cls, *args, **kwargs)
            _install()
            reporter = _Reporter(task_id, get_progress_tracker_sync() if tracker is None else tracker)
            token = _current.set(reporter)  # only while this one bar is made
            try:
                return super().__new__(cls, *args, **kwargs)
            finally:
                _current.reset(token)

        def __init__(self, *args: Any, task_id: Optional[str] = None, tracker: Optional[ProgressTracker] = None,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)

    tqdm.__module__ = __name__

    def trange(*args: Any, **kwargs: Any) -> Any:
        """tqdm(range(*args), **kwargs) of the drop-in class (task_id=, tracker= included)."""
        return tqdm(range(*args), **kwargs)

    trange.__module__ = __name__
    return tqdm, trange


def __getattr__(name: str) -> Any:
    # The drop-ins subclass tqdm's class, so they exist only once tqdm is importable; without it,
    # `from progress_engine.integrations.tqdm import tqdm` raises the ImportError saying what to install.
    if name in ("tqdm", "trange"):
        with _install_lock:
            if "tqdm" not in globals():
                globals()["tqdm"], globals()["trange"] = _drop_ins()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

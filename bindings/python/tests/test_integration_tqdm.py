"""progress_engine.integrations.tqdm with the real tqdm: bars a library creates inside report_tqdm move the
task (tests/listener/test_listener_tqdm.py watches the same over REST and WebSocket)."""

from __future__ import annotations

import asyncio
import io
import textwrap
import threading

import pytest

tqdm_package = pytest.importorskip("tqdm")
import tqdm.auto  # noqa: E402
import tqdm.std  # noqa: E402

import progress_engine as pe  # noqa: E402
import tqdm_library  # noqa: E402
from progress_engine.integrations import tqdm as integration  # noqa: E402
from progress_engine.integrations.tqdm import report_tqdm  # noqa: E402


@pytest.fixture
def task(tracker):
    tracker.create_task_progress_sync("job", "sdxl", "image_generation")
    return "job"


def stage(tracker, task_id="job"):
    """(current stage index, its progress, its message); a read applies the step counter first."""
    state = tracker.get_task_progress_sync(task_id)
    current = state["stages"][str(state["current_stage"])]
    return state["current_stage"], current["progress"], current["message"]


GENERATION = 2  # image_generation's main stage, where update_progress puts the steps


def test_a_library_bar_moves_the_task(tracker, task):
    seen = []
    with report_tqdm(task, tracker):
        tqdm_library.denoise(20, on_step=lambda step: seen.append(stage(tracker)))
    assert seen == [(GENERATION, step / 20, "Denoising") for step in range(1, 21)]
    assert tracker.get_task_progress_sync(task)["status"] == "executing"  # the runner completes it, not the bar
    assert tracker.stats_sync()["invalid_updates"] == 0


def test_nested_bars_the_innermost_drives(tracker, task):
    seen = {}
    with report_tqdm(task, tracker):
        tqdm_library.train(
            epochs=3, batches=4,
            on_batch=lambda epoch, batch: seen.setdefault((epoch, batch), stage(tracker)),
            on_epoch=lambda epoch: seen.setdefault(epoch, stage(tracker)),
        )
    for epoch in (1, 2, 3):
        for batch in (1, 2, 3, 4):
            assert seen[epoch, batch] == (GENERATION, batch / 4, f"epoch {epoch}")
        assert seen[epoch] == (GENERATION, pytest.approx(epoch / 3), "epochs")  # the batch bar closed


def test_only_the_innermost_open_bar_drives(tracker, task):
    with report_tqdm(task, tracker):
        outer = tqdm.tqdm(total=10, desc="outer", file=io.StringIO())
        inner = tqdm.auto.tqdm(total=4, desc="inner", file=io.StringIO())
        inner.update(1)
        outer.update(7)  # e.g. from another thread of the library: the inner bar is still the one shown
        assert stage(tracker) == (GENERATION, 0.25, "inner")
        inner.close()
        assert stage(tracker) == (GENERATION, 0.7, "outer")
        middle = tqdm.tqdm(total=5, desc="middle", file=io.StringIO())
        innermost = tqdm.tqdm(total=2, desc="innermost", file=io.StringIO())
        middle.close()  # closed out of order: the innermost still drives, then the outer again
        innermost.update(1)
        assert stage(tracker) == (GENERATION, 0.5, "innermost")
        innermost.close()
        assert stage(tracker) == (GENERATION, 0.7, "outer")
        outer.close()


def test_a_bar_dropped_without_close_stops_driving(tracker, task):
    def leaky():  # a library that forgets close(): tqdm's __del__ closes the bar once it is dropped
        bar = tqdm.tqdm(total=10, desc="leaked", file=io.StringIO())
        bar.update(2)

    with report_tqdm(task, tracker):
        leaky()
        assert stage(tracker) == (GENERATION, 0.2, "leaked")
        bar = tqdm.tqdm(total=4, desc="next", file=io.StringIO())
        bar.update(1)
        bar.close()
        assert stage(tracker) == (GENERATION, 0.25, "next")  # not the leaked bar's again


def test_bars_of_other_threads_are_untouched(tracker, task):
    made = {}

    def elsewhere():
        bar = tqdm.auto.tqdm(total=10, desc="other thread", file=io.StringIO())
        bar.update(7)
        made["type"] = type(bar)
        bar.close()

    with report_tqdm(task, tracker):
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join()
        before = stage(tracker)
        tqdm_library.denoise(4, desc="this thread", on_step=lambda step: None, file=io.StringIO())
    assert made["type"] is type(tqdm.auto.tqdm(disable=True))  # a plain bar, not a reporting one
    assert before[1:] == (0.0, None)  # nothing reported from the other thread
    assert stage(tracker) == (GENERATION, 1.0, "this thread")


def test_a_bar_without_total_counts_items_and_keeps_the_progress(tracker, task):
    with report_tqdm(task, tracker):
        tqdm_library.denoise(10, on_step=lambda step: None, file=io.StringIO())
        assert tqdm_library.read(range(1234)) == 1234
    assert stage(tracker) == (GENERATION, 1.0, "Reading: 1234 items")


def test_bars_draw_as_before(tracker, task):
    plain, reporting = io.StringIO(), io.StringIO()
    tqdm_library.denoise(10, file=plain)
    with report_tqdm(task, tracker):
        tqdm_library.denoise(10, file=reporting)
    for out in (plain.getvalue(), reporting.getvalue()):
        assert "Denoising: 100%" in out and "10/10" in out, out


def test_disabled_bars_report_too(tracker, task):
    seen = []
    with report_tqdm(task, tracker):
        tqdm_library.denoise(5, desc="quiet", disable=True, on_step=lambda step: seen.append(stage(tracker)))
        for _ in tqdm.std.tqdm(range(3), desc="quiet loop", disable=True):
            pass
    assert seen == [(GENERATION, step / 5, "quiet") for step in range(1, 6)]
    assert stage(tracker) == (GENERATION, 1.0, "quiet loop")


def test_a_disabled_bar_whose_total_grows_reports_against_the_new_total(tracker, task):
    # Its counter kept the first total as its bound: 25 of 100 showed as 100 %.
    with report_tqdm(task, tracker):
        bar = tqdm.tqdm(total=10, desc="grows", disable=True)
        bar.update(5)
        bar.total = 100
        bar.update(20)
        assert stage(tracker) == (GENERATION, 0.25, "grows")
        bar.close()


def test_a_desc_that_is_not_a_str_reports_as_tqdm_shows_it(tracker, task):
    # tqdm formats any desc; the reporter took it for a str (AttributeError / TypeError in the user's loop).
    with report_tqdm(task, tracker):
        for _ in tqdm.std.tqdm(range(2), desc=5, disable=True):
            pass
        assert stage(tracker) == (GENERATION, 1.0, "5")
        for _ in tqdm.std.tqdm(range(2), desc=b"bytes", disable=True):  # shown, tqdm itself fails on bytes
            pass
        assert stage(tracker) == (GENERATION, 1.0, "bytes")


def test_counts_tqdm_takes_without_complaint_report_nothing_wrong(tracker, task):
    # update(None) of a disabled bar raised TypeError in the reporter (tqdm's own returns before looking at n); a
    # NaN count reported 100 %.
    # (A drawn bar raises on both in tqdm itself.)
    with report_tqdm(task, tracker):
        bar = tqdm.tqdm(total=10, desc="odd", disable=True)
        bar.update(2)
        bar.update(None)
        assert stage(tracker) == (GENERATION, 0.2, "odd")
        bar.update(float("nan"))
        assert stage(tracker)[1] in (0.0, 0.2), stage(tracker)
        bar.close()


@pytest.mark.filterwarnings("ignore:clamping frac:tqdm.std.TqdmWarning")  # tqdm's own, drawing n = -4
def test_counts_past_64_bits_or_below_zero_never_raise_into_the_job(tracker, task):
    # A counter attached by an earlier bar took the next bar's 2**65 as a 64-bit store: ValueError in update().
    with report_tqdm(task, tracker):
        first = tqdm.tqdm(total=10, file=io.StringIO())
        first.update(1)
        first.close()
        huge = tqdm.tqdm(total=2**70, desc="huge", file=io.StringIO())
        huge.update(2**65)
        huge.close()  # sends the last count, scaled as for a float
        current, progress, message = stage(tracker)
        assert (current, message) == (GENERATION, "huge") and progress == pytest.approx(1 / 32, abs=1e-3)
        below = tqdm.tqdm(total=10, desc="below", file=io.StringIO())
        below.update(4)
        below.update(-8)  # tqdm takes it (n = -4): the task shows 0, as a refresh would
        assert stage(tracker) == (GENERATION, 0.0, "below")
        below.close()
    assert tracker.stats_sync()["invalid_updates"] == 0


def test_a_generator_with_a_report_tqdm_block_stepped_through_copied_contexts(tracker, task):
    # As anyio's iterate_in_threadpool and Starlette's streaming responses take a generator's items: each next()
    # in a copy of the caller's context. Leaving the block then raised ValueError (a token of another context)
    # into the job, and the reporter was never closed.
    import contextvars

    def produce():
        with report_tqdm(task, tracker):
            yield from tqdm.tqdm(range(3), desc="stream", file=io.StringIO())

    items = produce()
    got = []
    for _ in range(4):
        try:
            got.append(contextvars.copy_context().run(next, items))
        except StopIteration:
            break
    assert got == [0, 1, 2]
    assert stage(tracker) == (GENERATION, 1.0, "stream")
    after = tqdm.tqdm(total=4, desc="after", file=io.StringIO())  # outside the block: reports nothing
    after.update(1)
    after.close()
    assert stage(tracker) == (GENERATION, 1.0, "stream")


def test_overshoot_float_and_reset(tracker, task):
    with report_tqdm(task, tracker):
        bar = tqdm.tqdm(total=4, desc="over", file=io.StringIO())
        bar.update(5)  # tqdm shows 125 %; the task shows its total
        assert stage(tracker) == (GENERATION, 1.0, "over")
        bar.reset(total=8)
        bar.update(2)
        assert stage(tracker)[1] == 0.25
        bar.n = 6  # as some libraries move a bar, then redraw it
        bar.refresh()
        assert stage(tracker)[1] == 0.75
        bar.close()
        fraction = tqdm.tqdm(total=1.0, desc="fraction", file=io.StringIO())
        fraction.update(0.25)
        fraction.refresh()  # a float n is reported at the redraw, not per update
        assert stage(tracker) == (GENERATION, 0.25, "fraction")
        fraction.close()
    assert tracker.stats_sync()["invalid_updates"] == 0


def test_bars_after_the_block_or_left_open_stop_reporting(tracker, task):
    with report_tqdm(task, tracker):
        left_open = tqdm.tqdm(total=10, desc="left open", file=io.StringIO())
        left_open.update(3)
    assert type(left_open) is tqdm.std.tqdm  # a plain bar again
    left_open.update(5)
    left_open.close()
    after = tqdm.tqdm(total=10, desc="after", file=io.StringIO())
    after.update(9)
    after.close()
    assert stage(tracker) == (GENERATION, 0.3, "left open")


def test_decorator_and_async(tracker, task):
    @report_tqdm(task, tracker)
    def generate(steps):
        return tqdm_library.denoise(steps, desc="decorated", file=io.StringIO())

    assert generate(6) == 6 and generate.__name__ == "generate"
    assert stage(tracker) == (GENERATION, 1.0, "decorated")

    @report_tqdm(task, tracker)
    async def generate_async(steps):
        await asyncio.sleep(0)
        return tqdm_library.denoise(steps, desc="async", on_step=lambda step: seen.append(stage(tracker)),
                                    file=io.StringIO())

    seen = []
    assert asyncio.run(generate_async(2)) == 2
    assert seen == [(GENERATION, 0.5, "async"), (GENERATION, 1.0, "async")]


def test_decorated_generators_report_while_their_body_runs(tracker, task):
    # The body's bars report, item after item; a bar the caller makes between items does not; send() and throw()
    # reach the body; the generator's return value comes back through `yield from`.
    @report_tqdm(task, tracker)
    def batches(n):
        with tqdm.auto.tqdm(total=n, desc="batches", file=io.StringIO()) as bar:
            for i in range(n):
                got = yield i
                if got == "skip":
                    bar.update()
                bar.update()
        return "done"

    seen = []
    gen = batches(4)
    assert next(gen) == 0
    with tqdm.auto.tqdm(total=10, desc="caller", file=io.StringIO()) as outside:
        outside.update(5)  # made between items, outside the body: not this task's
    assert stage(tracker)[2] != "caller"
    assert gen.send("skip") == 1
    seen.append(stage(tracker))
    assert next(gen) == 2
    seen.append(stage(tracker))

    def drive():
        return (yield from gen)

    outer = drive()
    assert next(outer) == 3
    with pytest.raises(StopIteration) as stop:
        outer.send(None)
    assert stop.value.value == "done"
    assert seen == [(GENERATION, 0.5, "batches"), (GENERATION, 0.75, "batches")]
    assert stage(tracker) == (GENERATION, 1.0, "batches")

    @report_tqdm(task, tracker)
    def failing():
        with tqdm.auto.tqdm(total=2, desc="failing", file=io.StringIO()) as bar:
            try:
                yield 1
            except ValueError:
                bar.update(2)
                yield "caught"

    gen = failing()
    assert next(gen) == 1
    assert gen.throw(ValueError("in")) == "caught"
    gen.close()
    assert stage(tracker) == (GENERATION, 1.0, "failing")

    @report_tqdm(task, tracker)
    async def stream(n):
        with tqdm.auto.tqdm(total=n, desc="stream", file=io.StringIO()) as bar:
            for i in range(n):
                await asyncio.sleep(0)
                bar.update()
                yield i

    async def consume():
        return [i async for i in stream(3)]

    assert asyncio.run(consume()) == [0, 1, 2]
    assert stage(tracker) == (GENERATION, 1.0, "stream")


def test_report_tqdm_is_per_asyncio_task(tracker):
    for task_id in ("a", "b"):
        tracker.create_task_progress_sync(task_id, "sdxl", "image_generation")

    async def job(task_id, steps):
        async with report_tqdm(task_id, tracker):
            bar = tqdm.auto.tqdm(total=steps, desc=task_id, file=io.StringIO())
            for _ in range(steps):
                bar.update()
                await asyncio.sleep(0.001)  # the other job's bar updates meanwhile
            bar.close()

    async def both():
        await asyncio.gather(job("a", 4), job("b", 5))

    asyncio.run(both())
    assert stage(tracker, "a") == (GENERATION, 1.0, "a") and stage(tracker, "b") == (GENERATION, 1.0, "b")


def test_drop_in_class(tracker, task):
    from progress_engine.integrations.tqdm import tqdm as drop_in, trange

    assert issubclass(drop_in, tqdm.auto.tqdm)
    bar = drop_in(total=8, desc="drop-in", task_id=task, tracker=tracker, file=io.StringIO())
    assert isinstance(bar, tqdm.auto.tqdm)
    bar.update(2)
    assert stage(tracker) == (GENERATION, 0.25, "drop-in")
    bar.close()
    plain = drop_in(total=8, desc="plain", file=io.StringIO())  # no task_id, no report_tqdm: a plain bar
    plain.update(8)
    plain.close()
    assert stage(tracker) == (GENERATION, 0.25, "drop-in")
    assert list(trange(3, desc="trange", task_id=task, tracker=tracker, file=io.StringIO())) == [0, 1, 2]
    assert stage(tracker) == (GENERATION, 1.0, "trange")


def test_an_unknown_task_warns_once_and_the_library_runs_on(tracker):
    with pytest.warns(pe.ProgressWarning) as shown:
        with report_tqdm("missing", tracker):
            assert tqdm_library.denoise(5, file=io.StringIO()) == 5
    assert [(w.message.task_id, type(w.message.error)) for w in shown] == [("missing", pe.NotFoundError)]


def test_strict_tracker_raises(strict_tracker):
    with pytest.raises(pe.NotFoundError):
        with report_tqdm("missing", strict_tracker):
            tqdm_library.denoise(5, file=io.StringIO())


def test_default_tracker_and_argument_checks(no_engine_env, monkeypatch):
    with pe.ProgressTracker() as tracker:
        monkeypatch.setattr("progress_engine.integrations.tqdm.get_progress_tracker_sync", lambda: tracker)
        tracker.create_task_progress_sync("job", "sdxl", "image_generation")
        with report_tqdm("job"):
            tqdm_library.denoise(3, file=io.StringIO())
        assert stage(tracker) == (GENERATION, 1.0, "Denoising")
    with pytest.raises(TypeError):
        report_tqdm(42)
    block = report_tqdm("job", tracker)
    with pytest.raises(RuntimeError, match="already in use"):
        with block, block:
            pass


def test_added_cost_is_a_counter_store(tracker, task):
    """The reporting bar's update() is tqdm's own plus a store into the task's counter: no engine call
    (stats' update count, which every progress_update bumps, does not move per update)."""
    with report_tqdm(task, tracker):
        bar = tqdm.tqdm(total=10_000, file=io.StringIO(), mininterval=3600)  # never redraws in this test
        updates = tracker.stats_sync()["updates"]
        for _ in range(5_000):
            bar.update()
        assert tracker.stats_sync()["updates"] - updates <= 5  # only the counter the engine reads
        assert stage(tracker)[1] == 0.5
        bar.close()


def test_module_imports_without_tqdm(fresh_python):
    """tqdm blocked in a fresh interpreter: the module imports; using it says what to install."""
    result = fresh_python(
        """
        import sys
        sys.modules["tqdm"] = None  # as if it were not installed: any import of it raises ImportError
        import progress_engine.integrations.tqdm as integration
        from progress_engine.integrations.tqdm import report_tqdm
        for use in (lambda: report_tqdm("job"), lambda: integration.tqdm, lambda: integration.trange):
            try:
                use()
            except ImportError as exc:
                assert "pip install tqdm" in str(exc), exc
            else:
                raise AssertionError("no ImportError")
        try:
            from progress_engine.integrations.tqdm import tqdm
        except ImportError as exc:
            assert "pip install tqdm" in str(exc), exc
        else:
            raise AssertionError("no ImportError")
        print("ok")
        """
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert integration.__doc__  # and here, with tqdm, the same module imports as usual


#: The start of the deadlock tests' scripts: a tracker holding task "job"; two events forcing the interleaving,
#: `holding` (a thread holds its lock and is about to wait for tqdm's) and `locked` (the other thread holds tqdm's
#: lock); TqdmHandler, a logging handler that writes through tqdm.write (logging_redirect_tqdm's kind), whose record
#: of logger "app" sets `holding` and waits for `locked`; run_both(a, b): both threads to their end, or "deadlock"
#: and exit status 3.
DEADLOCK_PRELUDE = """
import gc, logging, os, sys, threading, warnings
from tqdm import tqdm
from tqdm.std import TMonitor
from progress_engine import ProgressTracker
from progress_engine.integrations.tqdm import report_tqdm

t = ProgressTracker()
t.create_task_progress_sync("job", "sdxl", "image_generation")
holding, locked = threading.Event(), threading.Event()

class TqdmHandler(logging.Handler):
    def emit(self, record):
        if record.name == "app":
            holding.set()
            locked.wait(5)
        tqdm.write(self.format(record), file=sys.stderr)

def run_both(*threads):
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    if any(thread.is_alive() for thread in threads):
        print("deadlock", flush=True)
        os._exit(3)
"""


def assert_no_deadlock(fresh_python, scenario: str) -> None:
    """Runs DEADLOCK_PRELUDE then `scenario` in a fresh interpreter, so that a deadlock cannot hang this one."""
    result = fresh_python(DEADLOCK_PRELUDE + textwrap.dedent(scenario) + 'print("ok")\n')
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), (result.stdout, result.stderr[-2000:])


def test_a_warning_written_through_tqdm_does_not_deadlock_with_a_redraw_on_another_thread(fresh_python):
    """A refused report warns while the bar's reporter holds its lock; a warning written through tqdm.write (what
    logging_redirect_tqdm does with captured warnings) then waits for tqdm's lock. tqdm's monitor thread and
    tqdm.write redraw every bar while holding that lock (refresh(nolock=True)), and that redraw waited for the
    reporter's lock: each thread held what the other waited for, for good."""
    assert_no_deadlock(fresh_python, """
        def show(message, category, filename, lineno, file=None, line=None):
            holding.set()
            locked.wait(5)
            tqdm.write(f"warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        with report_tqdm("job", tracker=t):
            bar = tqdm(total=10, file=sys.stderr, mininterval=0)
            bar.update(3)
            t.complete_task_sync("job")  # the bar's next report is refused: a ProgressWarning

            def writer():
                holding.wait(5)
                with tqdm.get_lock():
                    locked.set()
                    bar.refresh(nolock=True)

            run_both(threading.Thread(target=writer, daemon=True), threading.Thread(target=bar.refresh, daemon=True))
            bar.close()
        assert holding.is_set(), "no warning"
        """)


def test_a_redraw_under_tqdms_lock_sends_nothing_so_a_logging_handler_cannot_deadlock_it(fresh_python):
    """The other cycle of the same locks: a redraw under tqdm's lock (tqdm.write from one thread) whose report was
    refused warned; with logging.captureWarnings (a Celery worker sets it) the warning waited for a logging
    handler's lock, held by another thread's logger call whose handler writes through tqdm.write and waited for
    tqdm's lock."""
    assert_no_deadlock(fresh_python, """
        logging.getLogger().addHandler(TqdmHandler())
        logging.captureWarnings(True)
        with report_tqdm("job", tracker=t):
            bar = tqdm(total=10, file=sys.stderr, mininterval=0)
            bar.update(3)
            bar.set_description("now")  # a description the next report sends
            t.complete_task_sync("job")  # that report is refused: a ProgressWarning

            def redraw():
                holding.wait(5)
                with tqdm.get_lock():
                    locked.set()
                    bar.refresh(nolock=True)

            run_both(threading.Thread(target=redraw, daemon=True),
                     threading.Thread(target=lambda: logging.getLogger("app").warning("hello"), daemon=True))
            bar.close()
        """)


def test_a_close_that_cannot_take_the_reporters_lock_lets_its_last_report_go(tracker, task):
    """A close() called under tqdm's lock (by code that holds it) waited for the reporter's lock, held by a sync
    that may wait for tqdm's: it never ended. Here another thread holds the reporter's lock: the close returns
    within about a second, the bar a plain one again."""
    with report_tqdm(task, tracker=tracker):
        bar = tqdm.std.tqdm(total=10, disable=True)
        bar.update(4)
        reporter = bar._pe_reporter
        held, done = threading.Event(), threading.Event()

        def hold():
            with reporter.lock:
                held.set()
                done.wait(10)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        held.wait(5)
        closer = threading.Thread(target=bar.close, daemon=True)
        closer.start()
        closer.join(3)
        stuck = closer.is_alive()
        done.set()
        holder.join(5)
        closer.join(5)
        assert not stuck, "close() still waiting for the reporter's lock after 3 s"
        assert bar._pe_reporter is None and type(bar) is tqdm.std.tqdm
        assert stage(tracker)[1] == 0.4  # the counter's last store; the final report was let go


def test_a_bar_collected_under_tqdms_lock_sends_nothing(fresh_python):
    """tqdm's monitor thread drops its references to the bars under tqdm's lock; a bar the library never closed
    is then closed by __del__ there, and its last report, refused, warned under tqdm's lock: with captured warnings
    the logging cycle of the test above. (Collected on any other thread, a bar is closed with its last report:
    test_a_bar_dropped_without_close_stops_driving.)"""
    assert_no_deadlock(fresh_python, """
        logging.getLogger().addHandler(TqdmHandler())
        logging.captureWarnings(True)
        gc.disable()  # the bar goes when its last reference does, on the thread that drops it
        with report_tqdm("job", tracker=t):
            bars = [tqdm(total=10, file=sys.stderr, mininterval=0)]
            bars[0].update(3)
            bars[0].set_description("now")  # a description its last report would send
            t.complete_task_sync("job")  # that report is refused: a ProgressWarning

            class Monitor(TMonitor):  # tqdm's monitor thread, doing what it does with a bar nobody else holds
                def __init__(self):
                    threading.Thread.__init__(self, daemon=True)  # not TMonitor's: no wake-ups of its own

                def run(self):
                    holding.wait(5)
                    with tqdm.get_lock():
                        locked.set()
                        bars.clear()

            run_both(Monitor(), threading.Thread(target=lambda: logging.getLogger("app").warning("hello"), daemon=True))
        """)

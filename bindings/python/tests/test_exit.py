"""A tracker still open at interpreter exit is closed then (README "Never break the job"), after the calls that
daemon threads had already made into its engine returned, never under them; a daemon thread that is not inside a
call (blocked in a runner's own code under track()) does not hold exit up. An explicit close() waits the same way
for the calls other threads have started."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import progress_engine as pe

BINDINGS = os.path.dirname(os.path.dirname(pe.__file__))

# A server that reads requests and never answers, as the Redis of a tracker (REDIS_URL): a read of a task the engine
# does not hold asks it and blocks for its 200 ms timeout; `asked` is set once such a read's request has arrived.
NEVER_ANSWERING_REDIS = textwrap.dedent("""
    import socket, sys, threading
    sys.path.insert(0, BINDINGS)

    asked = threading.Event()

    def never_answer(server):
        while True:
            conn, _ = server.accept()
            threading.Thread(target=read_forever, args=(conn,), daemon=True).start()

    def read_forever(conn):
        seen = b""
        while data := conn.recv(65536):
            seen += data
            if b"elsewhere" in seen:
                asked.set()

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    threading.Thread(target=never_answer, args=(server,), daemon=True).start()
    REDIS_URL = f"redis://127.0.0.1:{server.getsockname()[1]}"
""")


def run(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a new interpreter with this binding (BINDINGS defined in it), without the default tracker's
    environment."""
    env = {**os.environ, "PYTHONPATH": BINDINGS}
    for name in ("PROGRESS_REDIS_URL", "PROGRESS_ENGINE_CONFIG", "PROGRESS_LISTEN"):
        env.pop(name, None)
    return subprocess.run([sys.executable, "-c", f"BINDINGS = {BINDINGS!r}\n" + code], capture_output=True, text=True,
                          env=env, timeout=60)


# The reader thread is inside a read of the never-answering Redis when the main thread exits. An exit hook registered
# before the binding's import runs after the binding's, and says whether each engine was closed (its finalizer run).
RUNNER = NEVER_ANSWERING_REDIS + textwrap.dedent("""
    import atexit, queue, time
    engines = []
    atexit.register(lambda: print("engines closed", [not e.alive for e in engines], flush=True))
    from progress_engine import ProgressTracker, get_progress_tracker_sync, track

    tracker = ProgressTracker(redis_url=REDIS_URL)
    default = get_progress_tracker_sync()  # another open tracker, closed at exit too
    engines += [tracker._finalizer, default._finalizer]
    default.create_task_progress_sync("local", "sdxl")

    def reader():
        while True:
            try:
                tracker.get_task_progress_sync("elsewhere")
            except Exception as error:
                if type(error).__name__ != "NotFoundError":
                    print("reader stopped by", type(error).__name__, flush=True)
                    return
            if asked.is_set():
                print("read returned", flush=True)

    def stepper():
        while True:
            try:
                default.update_progress_sync("local", 1, 2, message="m")
            except Exception as error:
                print("stepper stopped by", type(error).__name__, flush=True)
                return

    jobs = queue.Queue()

    def consumer():  # blocked in the runner's own code (a queue) between two items of track()
        for _ in track(iter(jobs.get, None), "consumer", total=10, tracker=default, template_id="sdxl"):
            pass

    jobs.put(1)
    for work in (reader, stepper, consumer):
        threading.Thread(target=work, daemon=True).start()
    assert asked.wait(10), "no read reached the never-answering server"
    print("main exits", flush=True)
""")


def test_exit_closes_after_the_calls_in_flight_return():
    start = time.monotonic()
    done = run(RUNNER)
    took = time.monotonic() - start
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert "stays open" not in done.stderr, done.stderr[-2000:]
    after = lines[lines.index("main exits") + 1:]
    # The read in flight at exit returned before the engine closed, then both threads found their trackers
    # closed (a new call raises StateError).
    assert "read returned" in after and after.index("read returned") < after.index("reader stopped by StateError"), lines
    assert "stepper stopped by StateError" in after, lines
    # Both engines closed.
    assert lines[-1] == "engines closed [True, True]", lines
    # The consumer blocked in its queue did not hold exit up for the 2 s a call in flight may take.
    assert took < 5, took


def test_a_tracker_opened_after_the_exit_close_is_refused():
    """An atexit handler registered before the import runs after the binding's: trackers are closed by then, and
    one opened there would never be closed, so opening one raises StateError."""
    code = textwrap.dedent("""
        import atexit, sys
        def late():
            from progress_engine import ProgressTracker, StateError
            try:
                ProgressTracker()
            except StateError as error:
                print("refused:", error, flush=True)
        atexit.register(late)
        sys.path.insert(0, BINDINGS)
        from progress_engine import get_progress_tracker_sync
        get_progress_tracker_sync().create_task_progress_sync("t", "sdxl")
    """)
    done = run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("refused: the interpreter is exiting"), (done.stdout, done.stderr[-2000:])


def test_interrupted_calls_leave_no_call_counted_in_flight():
    """A signal handler that raises (KeyboardInterrupt, an alarm) can interrupt a call anywhere: the count of calls
    in flight still comes back to 0, so exit closes the engine without waiting."""
    code = textwrap.dedent("""
        import signal, sys, time
        sys.path.insert(0, BINDINGS)
        from progress_engine import ProgressTracker
        from progress_engine import tracker as T
        t = ProgressTracker()
        t.create_task_progress_sync("x", "sdxl")
        class Tick(Exception):
            pass
        armed = False
        def tick(*_):
            global armed
            if armed:  # once per arming, and only inside the `try` below
                armed = False
                raise Tick
        signal.signal(signal.SIGALRM, tick)
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.00003)
        interrupted = 0
        end = time.monotonic() + 1
        while time.monotonic() < end:
            try:
                armed = True
                for _ in range(20):
                    t.update_progress_sync("x", 1, 2, message="m")
                    t.update_stage_sync("x", 1)
                    t.get_task_progress_sync("x")
                armed = False
            except Tick:
                interrupted += 1
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        print("interrupted", interrupted, "in flight", t._calls_in_flight(), flush=True)
    """)
    done = run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    assert int(words[1]) > 1000 and words[2:] == ["in", "flight", "0"], done.stdout
    assert "stays open" not in done.stderr, done.stderr[-2000:]


def test_a_forked_child_counts_its_own_calls():
    """A fork while another thread of the parent is inside a call: that call is not the child's (the thread does
    not exist there), so the child's exit closes its engine at once, without the 2 s wait for it."""
    code = NEVER_ANSWERING_REDIS + textwrap.dedent("""
        import os
        from progress_engine import ProgressTracker
        t = ProgressTracker(redis_url=REDIS_URL)
        def reader():
            while True:
                try:
                    t.get_task_progress_sync("elsewhere")
                except Exception as error:
                    if type(error).__name__ != "NotFoundError":
                        return
        threading.Thread(target=reader, daemon=True).start()
        assert asked.wait(10)
        pid = os.fork()
        if pid == 0:
            print("child in flight", t._calls_in_flight(), flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child status", status, flush=True)
        os._exit(0)
    """)
    done = run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["child in flight 0", "child status 0"], (done.stdout, done.stderr[-2000:])
    assert "stays open" not in done.stderr, done.stderr[-2000:]


# close() on the main thread while a reader thread is inside a read of the never-answering Redis and a stepper thread
# updates in a loop. CLOSE_WAIT is how long close() waits for them.
CLOSER = NEVER_ANSWERING_REDIS + textwrap.dedent("""
    import gc, glob
    from progress_engine import ProgressTracker
    from progress_engine import tracker as T
    T._CLOSE_WAIT_SECONDS = CLOSE_WAIT
    before = set(glob.glob("/tmp/progress-previews-*"))
    t = ProgressTracker(redis_url=REDIS_URL)
    (folder,) = set(glob.glob("/tmp/progress-previews-*")) - before
    t.create_task_progress_sync("local", "sdxl")
    events = []

    def reader():
        while True:
            try:
                t.get_task_progress_sync("elsewhere")
            except Exception as error:
                if type(error).__name__ != "NotFoundError":
                    events.append("reader stopped by " + type(error).__name__)
                    return
            if asked.is_set():
                events.append("read returned")

    def stepper():
        while True:
            try:
                t.update_progress_sync("local", 1, 2, message="m")
            except Exception as error:
                events.append("stepper stopped by " + type(error).__name__)
                return

    threads = [threading.Thread(target=work) for work in (reader, stepper)]
    for thread in threads:
        thread.start()
    assert asked.wait(10), "no read reached the never-answering server"
    t.close()
    events.append("closed" + (", engine open" if os.path.exists(folder) else ""))
    for thread in threads:
        thread.join()
    print("\\n".join(events), flush=True)
    del t, threads
    gc.collect()
    print("engine closed at the end:", not os.path.exists(folder), flush=True)
""")


# A call into the engine held between reading the tracker's handle and entering the engine (the binding's foreign
# function replaced by one that waits: HOLD "sleep" sleeps 0.1 s, HOLD "until closed" waits until close() returned),
# while the main thread calls close(), whose wait is CLOSE_WAIT seconds.
HELD_CALL = textwrap.dedent("""
    import gc, sys, threading, time
    sys.path.insert(0, BINDINGS)
    from progress_engine import ProgressTracker, _lib
    from progress_engine import tracker as T
    T._CLOSE_WAIT_SECONDS = CLOSE_WAIT
    t = ProgressTracker()
    engine = t._finalizer  # alive until progress_engine_close() is called
    t.create_task_progress_sync("x", "sdxl")
    real = _lib.progress_log
    inside, closed = threading.Event(), threading.Event()

    def held(engine, *args):
        inside.set()
        if HOLD == "sleep":
            time.sleep(0.1)
        else:
            closed.wait(10)
        return real(engine, *args)

    _lib.progress_log = held
    outcome = []

    def logger():
        try:
            t.log_sync("x", "info", "m")
            outcome.append("returned")
        except Exception as error:
            outcome.append(type(error).__name__)

    thread = threading.Thread(target=logger)
    thread.start()
    inside.wait()
    t.close()
    print("after close(): engine", "open" if engine.alive else "closed", flush=True)
    closed.set()
    thread.join()
    _lib.progress_log = real
    print("the call", outcome[0], flush=True)
    try:
        t.log_sync("x", "info", "late")
    except Exception as error:
        print("a later call", type(error).__name__, flush=True)
    del t
    gc.collect()
    print("at the end: engine", "open" if engine.alive else "closed", flush=True)
""")


def test_close_waits_for_a_call_that_has_read_the_handle():
    """close() closes the engine only once a call another thread started has returned. Before, the engine was freed
    under it: the held log call then went into the freed engine and raised NotFoundError."""
    done = run('CLOSE_WAIT = 2.0\nHOLD = "sleep"\n' + HELD_CALL)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.splitlines() == ["after close(): engine closed", "the call returned", "a later call StateError",
                                        "at the end: engine closed"], (done.stdout, done.stderr[-2000:])
    assert "stays open" not in done.stderr, done.stderr[-2000:]


def test_close_leaves_the_engine_open_while_a_call_has_not_returned():
    """A call that outlasts close()'s wait: the engine stays open, with a line on stderr, the call completes in it,
    and the engine closes once the tracker is collected."""
    done = run('CLOSE_WAIT = 0.05\nHOLD = "until closed"\n' + HELD_CALL)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.splitlines() == ["after close(): engine open", "the call returned", "a later call StateError",
                                        "at the end: engine closed"], (done.stdout, done.stderr[-2000:])
    assert "on close(), a call into a tracker's engine had not returned after 0.05 s" in done.stderr, done.stderr


def test_close_in_a_signal_handler_that_interrupted_a_call_defers_the_close():
    """A signal handler that runs inside a call into the engine (here raised from within it) and closes the tracker:
    close() returns at once (it waited 2 s for that call, which cannot return before the handler does), the
    interrupted call completes in the engine, which closes once the tracker is collected."""
    code = textwrap.dedent("""
        import gc, signal, sys, time
        sys.path.insert(0, BINDINGS)
        from progress_engine import ProgressTracker, _lib
        t = ProgressTracker()
        engine = t._finalizer
        t.create_task_progress_sync("x", "sdxl")
        real = _lib.progress_log
        def handler(*_):
            start = time.monotonic()
            t.close()
            print("close() took under 0.5 s:", time.monotonic() - start < 0.5, "engine open:", engine.alive, flush=True)
        signal.signal(signal.SIGUSR1, handler)
        def interrupted(handle, *args):
            signal.raise_signal(signal.SIGUSR1)  # the handler runs here, inside the call
            return real(handle, *args)
        _lib.progress_log = interrupted
        t.log_sync("x", "info", "m")
        _lib.progress_log = real
        print("the call returned", flush=True)
        del t
        gc.collect()
        print("engine open at the end:", engine.alive, flush=True)
    """)
    done = run(code)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])
    assert done.stdout.splitlines() == ["close() took under 0.5 s: True engine open: True", "the call returned",
                                        "engine open at the end: False"], (done.stdout, done.stderr[-2000:])
    assert "had not returned" not in done.stderr, done.stderr[-2000:]


def test_close_registered_as_an_atexit_hook_itself():
    """close() as the very function atexit calls: nothing in Python below it on the stack."""
    code = textwrap.dedent("""
        import atexit, sys
        sys.path.insert(0, BINDINGS)
        from progress_engine import ProgressTracker
        t = ProgressTracker()
        t.create_task_progress_sync("x", "sdxl")
        atexit.register(t.close)
    """)
    done = run(code)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr[-2000:]


def test_close_in_a_signal_handler_that_interrupted_the_trackers_lock_returns():
    """The handler runs while the interrupted code holds the tracker's lock (here inside complete_task_sync's
    bookkeeping), which close() takes: it used to wait on it forever."""
    code = textwrap.dedent("""
        import faulthandler, signal, sys
        sys.path.insert(0, BINDINGS)
        faulthandler.dump_traceback_later(10, exit=True)
        from progress_engine import ProgressTracker
        t = ProgressTracker()
        t.create_task_progress_sync("x", "sdxl")
        signal.signal(signal.SIGUSR1, lambda *_: t.close())
        class Interrupting(dict):
            def pop(self, *args):
                signal.raise_signal(signal.SIGUSR1)  # the handler runs here, under the tracker's lock
                return super().pop(*args)
        t._counters = Interrupting()
        t.complete_task_sync("x")
        print("closed:", t.closed, flush=True)
    """)
    done = run(code)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "closed: True", (done.stdout, done.stderr[-2000:])

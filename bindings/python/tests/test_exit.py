"""A tracker still open at interpreter exit is closed then (README "Never break the job"), after the calls that
daemon threads had already made into its engine returned, never under them; a daemon thread that is not inside a
call (blocked in a runner's own code under track()) does not hold exit up."""

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


# The reader thread is inside a read of the never-answering Redis when the main thread exits. Each engine made its
# own preview folder, which it removes when it closes: the folders tell the test that both engines were closed.
RUNNER = NEVER_ANSWERING_REDIS + textwrap.dedent("""
    import glob, queue, time
    from progress_engine import ProgressTracker, get_progress_tracker_sync, track

    def new_folder(open_tracker):
        before = set(glob.glob("/tmp/progress-previews-*"))
        tracker = open_tracker()
        (made,) = set(glob.glob("/tmp/progress-previews-*")) - before
        print("folder", made, flush=True)
        return tracker

    tracker = new_folder(lambda: ProgressTracker(redis_url=REDIS_URL))
    default = new_folder(get_progress_tracker_sync)  # another open tracker, closed at exit too
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
    assert "left open" not in done.stderr, done.stderr[-2000:]
    after = lines[lines.index("main exits") + 1:]
    # The read in flight at exit returned before the engine closed, then both threads found their trackers
    # closed (a new call raises StateError).
    assert "read returned" in after and after.index("read returned") < after.index("reader stopped by StateError"), lines
    assert "stepper stopped by StateError" in after, lines
    # Both engines closed: each removed its preview folder.
    folders = [line.split(" ", 1)[1] for line in lines if line.startswith("folder ")]
    assert len(folders) == 2 and not any(os.path.exists(f) for f in folders), folders
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
        print("interrupted", interrupted, "in flight", T._calls_in_flight(), flush=True)
    """)
    done = run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    assert int(words[1]) > 1000 and words[2:] == ["in", "flight", "0"], done.stdout
    assert "left open" not in done.stderr, done.stderr[-2000:]


def test_a_forked_child_counts_its_own_calls():
    """A fork while another thread of the parent is inside a call: that call is not the child's (the thread does
    not exist there), so the child's exit closes its engine at once, without the 2 s wait for it."""
    code = NEVER_ANSWERING_REDIS + textwrap.dedent("""
        import os
        from progress_engine import ProgressTracker
        from progress_engine import tracker as T
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
            print("child in flight", T._calls_in_flight(), flush=True)
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child status", status, flush=True)
        os._exit(0)
    """)
    done = run(code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["child in flight 0", "child status 0"], (done.stdout, done.stderr[-2000:])
    assert "left open" not in done.stderr, done.stderr[-2000:]

"""A fork while another thread of the parent holds one of the binding's module locks (opening the default tracker,
registering templates into a new tracker, opening Celery's tracker, installing tqdm's reporting classes): that
thread does not exist in the child, so the child gets the lock anew; before, its first use there hung forever."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import progress_engine as pe

BINDINGS = os.path.dirname(os.path.dirname(pe.__file__))

# (module, the lock's name in it, what the child does that takes the lock)
LOCKS = {
    "default tracker": ("progress_engine.default", "_lock", "pe.get_progress_tracker_sync()"),
    "template registry": ("progress_engine.stages", "StageManager._lock", "pe.ProgressTracker().close()"),
    "celery tracker": ("progress_engine.integrations.celery", "_lock",
                       "m._tracker(types.SimpleNamespace(conf={'progress_engine': {}}))"),
    "tqdm classes": ("progress_engine.integrations.tqdm", "_install_lock", "m._install()"),
}


def assert_child_exits_cleanly(code):
    """Runs `code` (which forks, and prints the child's exit status) in a fresh interpreter: the child must exit 0
    before its faulthandler timeout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROGRESS_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "child exit status 0", (done.stdout, done.stderr[-2000:])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
@pytest.mark.parametrize("case", list(LOCKS))
def test_a_lock_held_by_another_thread_at_the_fork_is_free_in_the_child(case):
    module, lock, use = LOCKS[case]
    if "celery" in module:
        pytest.importorskip("celery")
    if "tqdm" in module:
        pytest.importorskip("tqdm")
    code = textwrap.dedent(f"""
        import faulthandler, importlib, operator, os, sys, threading, types
        sys.path.insert(0, {BINDINGS!r})
        import progress_engine as pe
        m = importlib.import_module({module!r})
        held, release = threading.Event(), threading.Event()
        def holder():
            with operator.attrgetter({lock!r})(m):
                held.set()
                release.wait()
        threading.Thread(target=holder, daemon=True).start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            faulthandler.dump_traceback_later(10, exit=True)
            {use}
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        release.set()
        print("child exit status", os.waitstatus_to_exitcode(status), flush=True)
    """)
    assert_child_exits_cleanly(code)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_report_tqdm_lock_held_by_another_thread_at_the_fork_is_free_in_the_child():
    """A bar's report_tqdm has a lock of its own (tqdm's monitor thread or the garbage collector may sync a bar while
    the loop's thread updates it). Held by another thread at the fork, it hung the child's first bar update there."""
    pytest.importorskip("tqdm")
    code = textwrap.dedent(f"""
        import faulthandler, io, os, sys, threading
        sys.path.insert(0, {BINDINGS!r})
        import progress_engine as pe
        import tqdm
        from progress_engine.integrations.tqdm import report_tqdm
        t = pe.ProgressTracker()
        t.create_task_progress_sync("job", "tpl")
        with report_tqdm("job", tracker=t) as reporting:
            bar = tqdm.tqdm(total=10, file=io.StringIO(), mininterval=0)
            bar.update(1)
            held, release = threading.Event(), threading.Event()
            def holder():
                with reporting._reporter.lock:
                    held.set()
                    release.wait()
            threading.Thread(target=holder, daemon=True).start()
            held.wait()
            pid = os.fork()
            if pid == 0:
                faulthandler.dump_traceback_later(10, exit=True)
                bar.update(1)
                bar.close()
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            release.set()
            bar.close()
        print("child exit status", os.waitstatus_to_exitcode(status), flush=True)
    """)
    assert_child_exits_cleanly(code)

"""The disk under preview_dir fills up (a 64 KiB tmpfs): a preview that cannot be written is logged and
counted, the task goes on, and previews are written again once there is space (docs/RELIABILITY.md)."""

import os
import subprocess

import pytest

from faults_support import record, wait_until


@pytest.fixture
def tiny_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(folder):
    """Writes a file until ENOSPC; returns it."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                os.fsync(f.fileno())
        except OSError:
            pass
    return filler


def test_disk_full_under_preview_dir_is_logged_counted_and_the_task_goes_on(tiny_disk):
    from progress_engine import ProgressTracker, Stage
    noise = os.urandom(256 * 256 * 3)  # incompressible: its PNG (~200 KiB) cannot fit anyway once full
    small = bytes(64 * 64 * 3)  # a flat image: a PNG of a few hundred bytes
    with ProgressTracker(preview_dir=str(tiny_disk / "previews")) as t:
        t.register_template_stages_sync("flat", [Stage("work", "Work", 1.0)])
        t.create_task_progress_sync("t", "flat")
        filler = fill(tiny_disk)

        def finished():
            s = t.stats_sync()
            return s["previews_written"] + s["previews_failed"] + s["previews_dropped"]

        t.update_progress_sync(task_id="t", step=30, total_steps=100)
        t.update_preview_sync("t", (noise, 256, 256, 3))
        wait_until(lambda: finished() >= 1, 10, what="the preview to be attempted")
        s = t.stats_sync()
        assert (s["previews_written"], s["previews_failed"]) == (0, 1), s
        warnings = [e["message"] for e in t.get_logs_sync("t", level="warning")["logs"]]
        assert len(warnings) == 1 and "preview" in warnings[0] and "failed" in warnings[0], warnings
        assert t.get_task_progress_sync("t")["preview_url"] is None
        assert not [p for p in (tiny_disk / "previews").iterdir()], "a partial file was left behind"
        # Space again: the next milestone's preview is written.
        filler.unlink()
        t.update_progress_sync(task_id="t", step=60, total_steps=100)
        t.update_preview_sync("t", (small, 64, 64, 3))
        wait_until(lambda: finished() >= 2, 10, what="the second preview")
        s = t.stats_sync()
        assert (s["previews_written"], s["previews_failed"]) == (1, 1), s
        assert t.get_task_progress_sync("t")["preview_url"]
        t.update_progress_sync(task_id="t", step=100, total_steps=100)
        t.complete_task_sync("t")
        assert t.get_task_progress_sync("t")["status"] == "completed"
        record("preview_disk_full", previews_failed=1, previews_written_after_space=1, task_completed=True)

"""The tqdm integration seen from outside: a bar that a library creates inside report_tqdm moves the task as
the listener's REST API and WebSocket show it (bindings/python/tests/test_integration_tqdm.py has the rest)."""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("tqdm")
# The stand-in library the binding's tqdm tests use, so both drive the same bars.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python" / "tests"))

import tqdm_library  # noqa: E402
from progress_engine.integrations.tqdm import report_tqdm  # noqa: E402

GENERATION = "2"  # image_generation's main stage, where the steps go


def generation(task: dict) -> tuple:
    stage = task["stages"][GENERATION]
    return stage["progress"], stage["message"]


def test_a_library_bar_moves_the_task_over_rest_and_websocket(wire):
    t = wire.open()
    t.create_task_progress_sync("tqdm-job", "sdxl", "image_generation")
    halfway, go_on = threading.Event(), threading.Event()

    def on_step(step: int) -> None:
        if step == 10:  # the bar stays at 10 / 20 while the test reads the task over REST
            halfway.set()
            go_on.wait(10)
        time.sleep(0.02)  # 0.4 s in all: several throttle periods (100 ms), so several updates

    def runner() -> None:
        with report_tqdm("tqdm-job", t):  # the runner's thread: the library's bar is created in it
            tqdm_library.denoise(20, on_step=on_step, file=io.StringIO())
        t.complete_task_sync("tqdm-job")

    def rest_until(accept, timeout: float = 5) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = wire.http(t, f"{wire.API}/tasks/tqdm-job")
            assert r.status == 200, r
            if accept(r.json()) or time.monotonic() > deadline:
                return r.json()
            time.sleep(0.01)

    async def scenario() -> list:
        seen: list = []
        async with wire.connect(t, "watcher") as ws:
            (current,) = await wire.subscribed(ws, ["tqdm-job"])
            assert current["data"]["status"] == "queued"
            thread = threading.Thread(target=runner)
            thread.start()
            try:
                halfway_update = await wire.recv_until(
                    ws, lambda m: m["type"] == "progress.update" and generation(m["data"])[0] == 0.5, 10, seen)
                assert generation(halfway_update["data"]) == (0.5, "Denoising")
                assert await asyncio.to_thread(halfway.wait, 10)
                task = await asyncio.to_thread(rest_until, lambda task: generation(task) == (0.5, "Denoising"))
                assert generation(task) == (0.5, "Denoising") and task["status"] == "executing", task
                go_on.set()
                await wire.recv_until(
                    ws, lambda m: m["type"] == "progress.update" and m["data"]["status"] == "completed", 10, seen)
            finally:
                go_on.set()
                thread.join(10)
        return seen

    seen = wire.run(scenario())
    running = [generation(m["data"]) for m in seen
               if m["type"] == "progress.update" and m["data"]["status"] == "executing"]
    progress = [p for p, _ in running if p > 0]
    assert progress == sorted(progress) and 0.5 in progress and len(set(progress)) >= 3, progress
    assert {message for p, message in running if p > 0} == {"Denoising"}
    task = rest_until(lambda task: task["status"] == "completed")
    assert task["status"] == "completed" and generation(task) == (1.0, "Denoising")

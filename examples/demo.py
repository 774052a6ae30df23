"""The README's demo: an engine with its listener, sample runners producing tasks, and the URLs to watch them.

Runners (as a diffusion / video pipeline would report): an SDXL-like image task walking its stages step by step,
a video task jumping straight to frames, a batch of three image tasks, a custom-template task, a tqdm-style loop,
and one task that fails. The image and video runners hand the engine synthetic pixels every step (it keeps a
preview at 25/50/75 %) and report simulated GPU figures, as a pipeline that knows its device would. The live
dashboard is served at the listener's root (open the first URL printed); a watcher also redraws a table in the
terminal while the same state is served over WebSocket and REST. Rounds repeat (new task ids each round) until
Ctrl-C, or `--rounds N`.

Run: `make demo` (or `python3 examples/demo.py --speed 5 --rounds 1`).
"""

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import tempfile

from progress_engine import (
    EngineIOError,
    ProgressContext,
    ProgressTracker,
    Stage,
    StageManager,
    StageStatus,
    track,
)

BAR = 24
PREVIEW_SIZE = 64


def sample_image(task_id, done, frame=0):
    """A synthetic "denoising" picture: noise fading into a smooth pattern as `done` (0-1) grows, as RGB bytes."""
    rng = random.Random(f"{task_id}:{frame}:{round(done, 3)}")
    hue = (sum(task_id.encode()) % 360) / 360 * 2 * math.pi
    size = PREVIEW_SIZE
    pixels = bytearray(size * size * 3)
    i = 0
    for y in range(size):
        for x in range(size):
            wave = math.sin((x + frame * 3) / 9 + hue) * math.cos(y / 11 - hue)
            for c in range(3):
                clean = 128 + 110 * math.sin(wave * 2 + hue + c * 2.1)
                pixels[i] = int(max(0, min(255, done * clean + (1 - done) * rng.randrange(256))))
                i += 1
    return bytes(pixels), size, size, 3


async def report_gpu(tracker, task_id, load):
    """Simulated GPU figures (a real runner would read them from its framework)."""
    await tracker.send_event(task_id, "resources", {"gpu_percent": round(min(100.0, load + random.uniform(-6, 6)), 1),
                                                    "gpu_memory_mb": round(6144 + 40 * load)})


async def image_runner(tracker, task_id, steps, pace, batch_id=None, quality="high"):
    async with ProgressContext(tracker, task_id=task_id, template_id="stable-diffusion-xl",
                               template_category="image_generation", quality=quality, batch_id=batch_id) as ctx:
        callback = ctx.get_callback()
        await asyncio.sleep(3 * pace)  # waiting in the queue
        await callback("model_loading", {"message": "Loading UNet and VAE"})
        await asyncio.sleep(5 * pace)
        for step in range(1, steps + 1):
            await callback("execution_progress", {"step": step, "total_steps": steps, "message": f"Step {step}/{steps}"})
            if step % 3 == 0 or step == steps:
                # A runner decodes a preview now and then; the engine keeps one when the task has crossed a
                # milestone (25/50/75 %) since the last, and returns at once otherwise.
                await tracker.update_preview(task_id=task_id, image=sample_image(task_id, step / steps))
            await report_gpu(tracker, task_id, 70 + 20 * math.sin(step / 3))
            if step == steps // 2:
                await callback("log", {"level": "info", "message": f"Half way: {step}/{steps} steps, guidance 7.5"})
            await asyncio.sleep(pace)
        await callback("post_processing", {"message": "Upscaling"})
        await asyncio.sleep(3 * pace)


async def video_runner(tracker, task_id, frames, pace):
    await tracker.create_task_progress(task_id=task_id, template_id="video-gen-v1", template_category="video_generation")
    await asyncio.sleep(2 * pace)
    for frame in range(1, frames + 1):
        # Straight to steps: the engine moves the task to its main stage (frame_generation).
        await tracker.update_progress(task_id=task_id, step=frame, total_steps=frames, message=f"Frame {frame}/{frames}")
        if frame % 4 == 0:
            await tracker.update_preview(task_id=task_id, image=sample_image(task_id, 0.9, frame))
        await report_gpu(tracker, task_id, 85)
        await asyncio.sleep(pace)
    await tracker.update_stage(task_id=task_id, stage=3, status=StageStatus.IN_PROGRESS, progress=0.0,
                               message="Encoding video")
    await asyncio.sleep(4 * pace)
    await tracker.complete_task(task_id)


async def custom_runner(tracker, task_id, pace):
    StageManager.register_template_stages("my-custom-template", [
        Stage("preprocessing", "Preparing data", weight=0.2),
        Stage("analysis", "Analyzing content", weight=0.3),
        Stage("synthesis", "Synthesizing output", weight=0.4),
        Stage("validation", "Validating results", weight=0.1),
    ])
    await tracker.create_task_progress(task_id=task_id, template_id="my-custom-template", template_category="custom")
    for index in range(4):
        for tenth in range(1, 11):
            await tracker.update_stage(task_id=task_id, stage=index, status=StageStatus.IN_PROGRESS, progress=tenth / 10)
            await asyncio.sleep(pace / 2)
    await tracker.complete_task(task_id)


async def failing_runner(tracker, task_id, pace):
    try:
        async with ProgressContext(tracker, task_id=task_id, template_id="stable-diffusion-xl",
                                   template_category="image_generation"):
            for step in range(1, 12):
                await tracker.update_progress(task_id=task_id, step=step, total_steps=30)
                await asyncio.sleep(pace)
            await tracker.log(task_id, "error", "torch.cuda.OutOfMemoryError: tried to allocate 2.00 GiB (demo)")
            raise RuntimeError("CUDA out of memory (demo)")
    except RuntimeError:
        pass  # ProgressContext marked the task failed and re-raised; the demo goes on.


async def loop_runner(tracker, task_id, pace):
    # The sampling-loop helper: one step per item, the task completed at the end.
    for _ in track(range(40), task_id=task_id, tracker=tracker, template_id="audio-gen",
                   template_category="audio_generation"):
        await asyncio.sleep(pace)


def render(tasks, clear):
    lines = []
    for t in tasks:
        done = int(BAR * t["overall_progress"] / 100)
        stage = t["stages"][str(t["current_stage"])]
        detail = t["error"] if t["status"] == "failed" else (stage["message"] or stage["name"])
        lines.append(f"{t['task_id']:<16} {t['status']:<10} [{'#' * done}{'.' * (BAR - done)}] "
                     f"{t['overall_progress']:5.1f}%  {stage['name']:<17} {detail}")
    if clear:
        sys.stdout.write(f"\x1b[{len(lines)}F")
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


async def watch(tracker, ids, interval):
    drawn = False
    while True:
        tasks = []
        for task_id in ids:
            try:
                tasks.append(await tracker.get_task_progress(task_id))
            except LookupError:
                pass  # not created yet
        if len(tasks) == len(ids):
            render(tasks, drawn)
            drawn = True
            if all(t["status"] in ("completed", "failed", "cancelled") for t in tasks):
                return
        await asyncio.sleep(interval)


def open_tracker(listen, preview_dir):
    config = dict(retention_seconds=3600, preview_dir=preview_dir)
    try:
        return ProgressTracker(listen=listen, **config)
    except EngineIOError as exc:
        host = listen.rpartition(":")[0]
        print(f"{exc}: using a free port instead", file=sys.stderr)
        return ProgressTracker(listen=f"{host}:0", **config)


async def run_round(tracker, round_no, pace):
    p = f"r{round_no}-"
    ids = [p + name for name in ("sdxl-001", "video-001", "batch-a-1", "batch-a-2", "batch-a-3", "custom-001",
                                 "audio-001", "sdxl-oom")]
    runners = [
        image_runner(tracker, ids[0], 30, pace),
        video_runner(tracker, ids[1], 48, pace),
        *(image_runner(tracker, ids[1 + i], 20 + 5 * i, pace, batch_id=p + "batch-a", quality="draft")
          for i in range(1, 4)),
        custom_runner(tracker, ids[5], pace),
        loop_runner(tracker, ids[6], pace),
        failing_runner(tracker, ids[7], pace),
    ]
    await asyncio.gather(watch(tracker, ids, 0.1), *runners)
    batch = await tracker.get_batch_progress(p + "batch-a")
    print(f"\n{p}batch-a: {batch['completed_tasks']}/{batch['total_tasks']} completed, "
          f"overall {batch['overall_progress']:.1f}%")
    return ids


async def main(speed, rounds, listen):
    pace = 0.1 / speed
    preview_dir = tempfile.mkdtemp(prefix="progress-demo-previews-")
    try:
        await run_demo(pace, rounds, listen, preview_dir)
    finally:
        shutil.rmtree(preview_dir, ignore_errors=True)


async def run_demo(pace, rounds, listen, preview_dir):
    with open_tracker(listen, preview_dir) as tracker:
        url = tracker.url
        print(f"ProgressEngine dashboard: {url}/   <- open this in a browser\n")
        print("ProgressEngine demo: 8 tasks per round from 6 sample runners\n")
        print(f"  REST       {url}/api/v1/progress/tasks/r1-sdxl-001")
        print(f"  WebSocket  ws{url[4:]}/api/v1/progress/ws  (send {{\"type\":\"subscribe\",\"task_ids\":[\"*\"]}})")
        print(f"  metrics    {url}/metrics\n")
        round_no = 0
        while rounds == 0 or round_no < rounds:
            round_no += 1
            ids = await run_round(tracker, round_no, pace)
            if round_no == 1:
                print(f"\nTaskProgress of {ids[0]}:")
                print(json.dumps(await tracker.get_task_progress(ids[0]), indent=2))
                history = await tracker.get_history(ids[0])
                print(f"\nhistory of {ids[0]}: {len(history['events'])} events kept, last seq {history['last_seq']}")
            if rounds == 0 or round_no < rounds:
                print(f"\nnext round in 3 s (Ctrl-C to stop; the state stays served at {url})\n")
                await asyncio.sleep(3)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0, help="run the sample runners this many times faster")
    parser.add_argument("--rounds", type=int, default=0, help="stop after this many rounds (0 = until Ctrl-C)")
    parser.add_argument("--listen", default="127.0.0.1:8000", help="HOST:PORT of the listener (port 0 = any)")
    args = parser.parse_args()
    try:
        asyncio.run(main(args.speed, args.rounds, args.listen))
    except KeyboardInterrupt:
        print("\nstopped")

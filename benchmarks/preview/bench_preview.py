#!/usr/bin/env python3
"""Preview cost: the engine's 1024x1024 RGB -> 512 px PNG preview against Pillow, and what the runner's
thread pays for a preview call against a memcpy of the same buffer. Everything in one process and run.

End to end (median of N, the two alternated):
  engine   progress_preview_pixels() with a preview due, until the PNG is in preview_dir (the engine's
           previews_written counter moves; the file is renamed into place before it does)
  Pillow   Image.frombuffer(...) + thumbnail((512, 512)) + save(PNG), the same pixels
  (for reference: Pillow with resample=BOX, the engine's filter; and the engine's two stages timed
  alone through the library's internal CProgress_downscale / CProgress_png_write)

Runner thread (median of M, alternated, each preview call made when the previous one is finished, as at
milestones; the buffers warm):
  memcpy                         ctypes.memmove of the 3 MiB buffer into a warm buffer
  progress_preview_pixels, due   the call that copies the pixels and queues them
  progress_preview_pixels, not   the call when no preview is due (returns without reading the pixels)
  update_preview_sync(ndarray)   the Python binding, due and not due (for reference)

Targets: engine end to end <= 15 ms and <= 1.0 x Pillow; runner-thread cost of a due call <= 1.2 x memcpy.
Exit status: 0 (figures printed, targets marked met / MISSED), 1 if a preview failed, 2 without Pillow or
numpy. --strict: exit 3 when a target is missed.
Usage: python3 benchmarks/preview/bench_preview.py [-n N] [-m M] [--size 1024] [--max-size 512]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bindings" / "python"))

try:
    import numpy as np
    from PIL import Image
    import PIL
except ImportError as missing:
    print(f"{missing.name} is not installed (pip install numpy pillow); this benchmark needs both")
    sys.exit(2)

from progress_engine import ProgressTracker, Stage  # noqa: E402
from progress_engine import _lib  # noqa: E402

TARGET_MS = 15.0
TARGET_VS_PILLOW = 1.0
TARGET_VS_MEMCPY = 1.2


def realistic_image(size: int, profile: str = "textured", seed: int = 7) -> "np.ndarray":
    """Like a diffusion model's output: smooth colour fields and soft shapes, fine texture, sensor-like
    noise. Neither flat (PNG would be trivially fast) nor white noise (incompressible).
    profile "textured": as generated (about 1.9 bytes per pixel as a 512 px PNG); "smooth": the same
    through a 5x5 box blur (about 1.3 bytes per pixel), as a softer render. zlib's cost differs a lot."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 3), np.float32)
    for c in range(3):
        for _ in range(6):
            fx, fy, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
            img[..., c] += np.sin(2 * np.pi * (fx * x + fy * y) + phase) * rng.uniform(10, 30)
    for _ in range(12):  # soft blobs
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-60, 60, 3)
    # Fine texture: noise blurred by a 3x3 box, then per-pixel noise.
    texture = rng.normal(0, 10, (size + 2, size + 2, 3)).astype(np.float32)
    texture = sum(texture[dy : dy + size, dx : dx + size] for dy in range(3) for dx in range(3)) / 3
    img += 128 + texture + rng.normal(0, 3, img.shape)
    img = img.clip(0, 255).astype(np.uint8)
    if profile == "smooth":
        padded = np.pad(img.astype(np.float32), ((2, 2), (2, 2), (0, 0)), mode="edge")
        img = (sum(padded[dy : dy + size, dx : dx + size] for dy in range(5) for dx in range(5)) / 25)
        img = (img + 0.5).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


class Engine:
    """One tracker with a preview due on every step (preview_every_steps=1), driven through ctypes."""

    def __init__(self, folder: str, max_size: int) -> None:
        self.tracker = ProgressTracker(preview_dir=folder, preview_every_steps=1, preview_max_size=max_size)
        self.tracker.register_template_stages_sync("bench", [Stage("sampling", "Sampling", 1.0)])
        self.tracker.create_task_progress_sync("bench", "bench")
        self.handle = self.tracker._handle()
        dll = _lib._dll
        # Our own prototype with a void * for the pixels, so a numpy buffer's address passes as it is.
        self.preview = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
            ctypes.c_int, ctypes.c_int,
        )(("progress_preview_pixels", dll))
        self.update = ctypes.CFUNCTYPE(
            ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_char_p
        )(("progress_update", dll))
        self.step = 0
        self.folder = folder

    def next_step(self) -> None:
        self.step += 1
        assert self.update(self.handle, b"bench", self.step, 1 << 40, None) == 0

    def finished(self) -> int:
        s = self.tracker.stats_sync()
        return s["previews_written"] + s["previews_failed"] + s["previews_dropped"]

    def wait(self, count: int, timeout_s: float = 10.0) -> None:
        deadline = time.perf_counter() + timeout_s
        while self.finished() < count:
            if time.perf_counter() > deadline:
                raise RuntimeError(f"preview not finished within {timeout_s} s: {self.tracker.stats_sync()}")
            time.sleep(0.0005)  # a coarse poll: it must not take CPU from the preview thread

    def prune(self) -> None:
        """Deletes the previews written so far (hundreds of 0.5 MB files otherwise); untimed."""
        for path in Path(self.folder).glob("*.png"):
            path.unlink()

    def close(self) -> None:
        self.tracker.close()


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    return sum(os.times()[:2])


def wait_quiet(limit_s: float) -> float:
    """Waits (at most limit_s) until the rest of the machine uses under 0.3 cores; returns that load."""
    deadline = time.monotonic() + limit_s
    while True:
        b0 = machine_busy_s()
        time.sleep(1.0)
        load = machine_busy_s() - b0
        if load < 0.3 or time.monotonic() >= deadline:
            return load
        print(f"  the machine is busy ({load:.2f} cores used by others); waiting", flush=True)


def median_ms(values: list) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--previews", type=int, default=40, help="end-to-end repeats (each side)")
    parser.add_argument("-m", "--calls", type=int, default=300, help="runner-thread repeats (each case)")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="seconds to wait first for other load on the machine to drop (default 30)")
    parser.add_argument("--dump", metavar="DIR", help="only write the two images, downscaled to 512 px by the "
                        "engine's filter, as DIR/textured.rgb and DIR/smooth.rgb (raw RGB, for png_settings.c)")
    args = parser.parse_args()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        for name in ("textured", "smooth"):
            small = Image.fromarray(realistic_image(args.size, name)).reduce(args.size // 512)
            Path(args.dump, f"{name}.rgb").write_bytes(small.tobytes())
        return 0
    load_before = wait_quiet(args.quiet_wait)
    busy0, own0, wall0 = machine_busy_s(), own_cpu_s(), time.monotonic()

    size, max_size = args.size, args.max_size
    out_side = max(1, round(size * min(1.0, max_size / size)))
    folder = tempfile.mkdtemp(prefix="bench-preview-")
    engine = Engine(os.path.join(folder, "engine"), max_size)
    pillow_dir = os.path.join(folder, "pillow")
    os.mkdir(pillow_dir)
    dll = _lib._dll
    # The library's internal C functions, for the stage breakdown only (absent if a build hides them).
    stages_visible = hasattr(dll, "CProgress_downscale") and hasattr(dll, "CProgress_png_write")
    if stages_visible:
        dll.CProgress_downscale.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_size_t,
                                            ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        dll.CProgress_downscale.restype = None
        dll.CProgress_png_write.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        dll.CProgress_png_write.restype = ctypes.c_int
    done = 0

    def end_to_end(image: "np.ndarray") -> dict:
        nonlocal done
        src = image.ctypes.data
        e2e_engine, e2e_pillow, e2e_box = [], [], []
        for i in range(args.previews + 3):  # 3 warm-up rounds
            engine.prune()
            engine.next_step()
            t0 = time.perf_counter()
            rc = engine.preview(engine.handle, b"bench", src, size, size, size * 3, 3)
            engine.wait(done + 1)
            t1 = time.perf_counter()
            done += 1
            assert rc == 0, _lib.progress_last_error()

            t2 = time.perf_counter()
            im = Image.frombuffer("RGB", (size, size), image, "raw", "RGB", 0, 1)
            im.thumbnail((max_size, max_size))
            im.save(os.path.join(pillow_dir, "p.png"), "PNG")
            t3 = time.perf_counter()

            im = Image.frombuffer("RGB", (size, size), image, "raw", "RGB", 0, 1)
            im.thumbnail((max_size, max_size), resample=Image.Resampling.BOX)
            im.save(os.path.join(pillow_dir, "b.png"), "PNG")
            t4 = time.perf_counter()
            if i >= 3:
                e2e_engine.append(t1 - t0)
                e2e_pillow.append(t3 - t2)
                e2e_box.append(t4 - t3)

        # The engine's stages alone, through the library's internal C functions (informational).
        small = np.empty((out_side, out_side, 3), np.uint8)
        err = ctypes.create_string_buffer(512)
        t_down, t_png = [], []
        png_path = os.path.join(folder, "stage.png").encode()
        for _ in range(max(10, args.previews // 2) if stages_visible else 0):
            t0 = time.perf_counter()
            dll.CProgress_downscale(src, size, size, size * 3, 3, small.ctypes.data, out_side, out_side)
            t1 = time.perf_counter()
            assert dll.CProgress_png_write(png_path, small.ctypes.data, out_side, out_side, 3, err, 512) == 0, err.value
            t2 = time.perf_counter()
            t_down.append(t1 - t0)
            t_png.append(t2 - t1)
        if stages_visible:
            os.unlink(png_path)

        # Both outputs: valid PNGs of the same size; how far apart they are; file sizes.
        latest = max(Path(engine.folder).glob("*.png"), key=lambda p: p.stat().st_mtime_ns)
        with Image.open(latest) as a, Image.open(os.path.join(pillow_dir, "p.png")) as b:
            a.load()
            b.load()
            sizes_ok = a.size == b.size == (out_side, out_side) and a.mode == b.mode == "RGB"
            diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).mean()
        return {
            "engine": median_ms(e2e_engine), "pillow": median_ms(e2e_pillow), "box": median_ms(e2e_box),
            "down": median_ms(t_down) if t_down else float("nan"), "png": median_ms(t_png) if t_png else float("nan"), "n": len(e2e_engine), "sizes_ok": sizes_ok,
            "diff": diff, "engine_bytes": latest.stat().st_size,
            "pillow_bytes": os.path.getsize(os.path.join(pillow_dir, "p.png")),
        }

    profiles = {name: realistic_image(size, name) for name in ("textured", "smooth")}
    results = {name: end_to_end(image) for name, image in profiles.items()}
    stats = engine.tracker.stats_sync()
    if stats["previews_failed"] or stats["previews_dropped"]:
        print(f"a preview failed or was dropped: {stats}")
        return 1
    image = profiles["textured"]
    nbytes = image.nbytes
    src = image.ctypes.data

    # ---- runner thread --------------------------------------------------------------------------
    dst = np.empty_like(image)
    dst[...] = 1  # warm
    dst_address = dst.ctypes.data
    memmove = ctypes.memmove
    cost_memcpy, cost_due, cost_not_due, cost_py_due, cost_py_not = [], [], [], [], []
    tracker = engine.tracker
    for i in range(args.calls + 5):
        # A due call (the previous preview is finished: steady state, as between milestones), the same
        # step again (none due), and the memcpy, which goes first in every other round so that neither
        # always finds the source already in cache.
        if i % 20 == 0:
            engine.prune()
        engine.next_step()
        if i % 2:
            t0 = time.perf_counter()
            memmove(dst_address, src, nbytes)
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        engine.preview(engine.handle, b"bench", src, size, size, size * 3, 3)
        t3 = time.perf_counter()
        engine.preview(engine.handle, b"bench", src, size, size, size * 3, 3)
        t4 = time.perf_counter()
        if not i % 2:
            t0 = time.perf_counter()
            memmove(dst_address, src, nbytes)
            t1 = time.perf_counter()
        done += 1
        engine.wait(done)
        record = i >= 5
        if record:
            cost_memcpy.append(t1 - t0)
            cost_due.append(t3 - t2)
            cost_not_due.append(t4 - t3)
        if i < args.calls // 3 + 5:  # the binding, fewer rounds (it is the slow path anyway)
            engine.next_step()
            t5 = time.perf_counter()
            tracker.update_preview_sync("bench", image)
            t6 = time.perf_counter()
            tracker.update_preview_sync("bench", image)
            t7 = time.perf_counter()
            done += 1
            engine.wait(done)
            if record:
                cost_py_due.append(t6 - t5)
                cost_py_not.append(t7 - t6)
    stats = engine.tracker.stats_sync()
    others = (machine_busy_s() - busy0 - (own_cpu_s() - own0)) / (time.monotonic() - wall0)
    engine.close()
    for path in Path(folder).rglob("*.png"):
        path.unlink()
    for sub in ("engine", "pillow"):
        if os.path.isdir(os.path.join(folder, sub)):
            os.rmdir(os.path.join(folder, sub))
    os.rmdir(folder)
    if stats["previews_failed"] or stats["previews_dropped"]:
        print(f"a preview failed or was dropped: {stats}")
        return 1

    # ---- report ---------------------------------------------------------------------------------
    m_us = median_ms(cost_memcpy) * 1000
    d_us, n_us = median_ms(cost_due) * 1000, median_ms(cost_not_due) * 1000
    pd_us, pn_us = median_ms(cost_py_due) * 1000, median_ms(cost_py_not) * 1000
    verdict = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    print(f"Preview benchmark: {size}x{size} RGB -> {out_side} px PNG; Python {platform.python_version()}, "
          f"Pillow {PIL.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"other load: {load_before:.2f} cores before, {max(0.0, others):.2f} during the run")
    checks = []
    for name, r in results.items():
        e_ms, p_ms, b_ms = r["engine"], r["pillow"], r["box"]
        print(f"end to end, {name} image, median of {r['n']} (alternated)    ms   x Pillow")
        print(f"  engine: call -> PNG in preview_dir             {e_ms:8.2f} {e_ms / p_ms:8.2f}")
        print(f"  Pillow: frombuffer + thumbnail + save          {p_ms:8.2f} {1:8.2f}")
        print(f"  Pillow, resample=BOX (the engine's filter)     {b_ms:8.2f} {b_ms / p_ms:8.2f}")
        print(f"  engine stages alone: downscale {r['down']:.2f} ms, PNG encode+write {r['png']:.2f} ms")
        print(f"  outputs: {out_side}x{out_side} RGB both {'yes' if r['sizes_ok'] else 'NO'}; "
              f"engine {r['engine_bytes']:,} B, Pillow {r['pillow_bytes']:,} B; "
              f"mean |engine - Pillow| {r['diff']:.2f} levels")
        checks += [
            (f"{name}: end to end <= {TARGET_MS:g} ms", e_ms <= TARGET_MS, f"{e_ms:.2f} ms"),
            (f"{name}: end to end <= {TARGET_VS_PILLOW:g} x Pillow", e_ms <= TARGET_VS_PILLOW * p_ms,
             f"{e_ms / p_ms:.2f} x"),
        ]
    print(f"runner thread, median of {len(cost_memcpy)} (alternated)             us   x memcpy")
    print(f"  memcpy of the {nbytes / 2**20:.0f} MiB buffer (ctypes.memmove)    {m_us:8.1f} {1:8.2f}")
    print(f"  progress_preview_pixels, preview due         {d_us:8.1f} {d_us / m_us:8.2f}")
    print(f"  progress_preview_pixels, none due            {n_us:8.1f} {n_us / m_us:8.2f}")
    print(f"  update_preview_sync(ndarray), due ({len(cost_py_due)})      {pd_us:8.1f} {pd_us / m_us:8.2f}")
    print(f"  update_preview_sync(ndarray), none due       {pn_us:8.1f} {pn_us / m_us:8.2f}")
    checks.append((f"runner-thread cost <= {TARGET_VS_MEMCPY:g} x memcpy", d_us <= TARGET_VS_MEMCPY * m_us,
                   f"{d_us / m_us:.2f} x"))
    print("targets:")
    for name, ok, figure in checks:
        print(f"  {name:44} {figure:>10}  {verdict(ok)}")
    if args.strict and not all(ok for _, ok, _ in checks):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())

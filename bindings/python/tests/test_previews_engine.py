"""Previews made by the engine (SPEC §11): the PNG files themselves, checked with Pillow.

One preview per milestone (or every N steps), for gray / RGB / RGBA pixels, padded strides, numpy arrays,
PIL images and the seed's preview_path; the right size (longest side = preview_max_size, aspect kept) and
orientation (a red top-left block stays top-left); video tasks name the file after the frame; broken
inputs give an error or a logged, counted failure and the task goes on; files expire with the task.

Previews are encoded on the engine's preview thread, so every test waits (polls with a deadline) for the
engine's preview counters before looking at files.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

np = pytest.importorskip("numpy")
Image = pytest.importorskip("PIL.Image")

from progress_engine import (  # noqa: E402
    EngineIOError,
    InvalidArgumentError,
    NotFoundError,
    ProgressContext,
    ProgressTracker,
    ProgressWarning,
    Stage,
    StateError,
)
from progress_engine import _lib  # noqa: E402

#: A template of one stage, so overall_progress == step / total_steps and milestones fall on known steps.
FLAT = "preview-flat"
URL_PREFIX = "/api/v1/previews/"
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
RED, BLUE = (255, 0, 0), (0, 0, 255)
DEADLINE_S = 10.0


# ---- helpers --------------------------------------------------------------------------------------


def make_image(width: int, height: int, channels: int, marker: int = 0) -> "np.ndarray":
    """A diffusion-like test image: smooth gradients plus mild noise, with three flat blocks that give
    orientation and identity away after a downscale: top-left red (white in gray), bottom-right blue
    (black in gray), bottom-left `marker` in every colour channel (which frame this is). RGBA images are
    opaque except a transparent top-right block."""
    img = _base_image(width, height, channels).copy()
    img[-(height // 8):, : width // 8] = marker if channels < 4 else (marker, marker, marker, 255)
    return img


@functools.lru_cache(maxsize=None)
def _base_image(width: int, height: int, channels: int) -> "np.ndarray":
    rng = np.random.default_rng(width * 7 + height * 13 + channels)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bw, bh = width // 8, height // 8
    if channels == 1:
        img = (64 + 64 * xx / width + 32 * yy / height + rng.normal(0, 4, (height, width))).clip(0, 255)
        img = img.astype(np.uint8)
        img[:bh, :bw] = 255
        img[-bh:, -bw:] = 0
        return img
    rgb = np.stack(
        [
            96 + 80 * xx / width,
            96 + 80 * yy / height,
            140 - 40 * (xx + yy) / (width + height),
        ],
        axis=-1,
    )
    rgb = (rgb + rng.normal(0, 4, rgb.shape)).clip(0, 255).astype(np.uint8)
    rgb[:bh, :bw] = RED
    rgb[-bh:, -bw:] = BLUE
    if channels == 3:
        return rgb
    alpha = np.full((height, width, 1), 255, np.uint8)
    alpha[:bh, -bw:] = 0
    return np.concatenate([rgb, alpha], axis=-1)


def area_resize(img: "np.ndarray", out_w: int, out_h: int) -> "np.ndarray":
    """Exact area averaging (every source pixel weighted by its overlap with the destination pixel), the
    reference for the engine's box filter. Pillow's BOX samples its filter at pixel centres, which differs
    from it by up to ~15 levels on noisy images at non-integer ratios."""

    def weights(n_in: int, n_out: int) -> "np.ndarray":
        scale = n_in / n_out
        lo = np.arange(n_out)[:, None] * scale
        edges = np.arange(n_in + 1)[None, :]
        overlap = np.clip(np.minimum(edges[:, 1:], lo + scale) - np.maximum(edges[:, :-1], lo), 0, None)
        return overlap / scale

    h, w = img.shape[:2]
    a = img.astype(np.float64).reshape(h, w, -1)
    rgba = a.shape[2] == 4
    if rgba:  # colour weighted by alpha (premultiplied), as the engine does, divided out after averaging
        a = np.concatenate([a[..., :3] * a[..., 3:], a[..., 3:]], axis=2)
    rows = np.tensordot(weights(h, out_h), a, axes=(1, 0))  # out_h x w x c
    out = np.tensordot(weights(w, out_w), rows, axes=(1, 1)).transpose(1, 0, 2)  # out_h x out_w x c
    if rgba:
        alpha = out[..., 3:]
        colour = np.divide(out[..., :3], alpha, out=np.zeros_like(out[..., :3]), where=alpha > 0)
        out = np.concatenate([colour, alpha], axis=2)
    return np.floor(out + 0.5).clip(0, 255).astype(np.uint8).reshape((out_h, out_w) + img.shape[2:])


def expected_size(width: int, height: int, max_size: int) -> tuple:
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_preview(path: Path, src_size: tuple, channels: int, max_size: int = 512, marker: Optional[int] = None):
    """Asserts `path` is a valid PNG of the right size, mode and orientation; returns it as an array."""
    with Image.open(path) as probe:
        assert probe.format == "PNG"
        probe.verify()  # CRCs and structure
    with Image.open(path) as img:
        img.load()
        assert img.size == expected_size(*src_size, max_size), (img.size, src_size)
        assert img.mode == MODES[channels], img.mode
        a = np.asarray(img)
    h, w = a.shape[:2]
    # Sample well inside each block (blocks are 1/8 of each side; the filter blurs their edges).
    top_left, bottom_right = a[h // 32, w // 32], a[h - 1 - h // 32, w - 1 - w // 32]
    bottom_left = a[h - 1 - h // 32, w // 32]
    centre = a[h // 2, w // 2]
    if channels == 1:
        assert int(top_left) >= 250 and int(bottom_right) <= 5, (top_left, bottom_right)
        assert 60 < int(centre) < 200
        if marker is not None:
            assert abs(int(bottom_left) - marker) <= 2, (bottom_left, marker)
        return a
    assert np.abs(top_left[:3].astype(int) - RED).max() <= 3, top_left
    assert np.abs(bottom_right[:3].astype(int) - BLUE).max() <= 3, bottom_right
    top_right = a[h // 32, w - 1 - w // 32]
    assert top_right[0] < 200 or top_right[1] > 50, f"red found top-right: flipped? {top_right}"
    if marker is not None:
        assert np.abs(bottom_left[:3].astype(int) - marker).max() <= 2, (bottom_left, marker)
    if channels == 4:
        assert top_left[3] == 255 and top_right[3] <= 2, (top_left, top_right)
    return a


def wait_previews(tracker: ProgressTracker, count: int, timeout_s: float = DEADLINE_S) -> Dict[str, Any]:
    """Polls the engine until `count` previews are finished (written, failed or dropped); then waits a
    little more and checks no further one turns up. Returns the stats."""
    deadline = time.monotonic() + timeout_s

    def finished(stats: Dict[str, Any]) -> int:
        return stats["previews_written"] + stats["previews_failed"] + stats["previews_dropped"]

    while True:
        stats = tracker.stats_sync()
        if finished(stats) >= count or time.monotonic() >= deadline:
            break
        time.sleep(0.005)
    time.sleep(0.05)
    stats = tracker.stats_sync()
    assert finished(stats) == count, stats
    return stats


def url_file(url: Optional[str]) -> str:
    assert url is not None and url.startswith(URL_PREFIX), url
    return url[len(URL_PREFIX):]


def pngs(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def step(tracker: ProgressTracker, task: str, n: int, total: int = 100, **extra: Any) -> None:
    """A progress step the engine applies at once (execution_progress goes straight to the engine)."""
    tracker.send_event_sync(task, "execution_progress", {"step": n, "total_steps": total, **extra})


def warnings_of(tracker: ProgressTracker, task: str) -> List[str]:
    return [e["message"] for e in tracker.get_logs_sync(task, level="warning")["logs"]]


@pytest.fixture
def preview_dir(tmp_path) -> Path:
    return tmp_path / "previews"  # the engine creates it


@pytest.fixture
def open_tracker(preview_dir):
    """open_tracker(**config) -> a ProgressTracker writing previews into preview_dir, closed afterwards."""
    opened: List[ProgressTracker] = []

    def open_tracker(**config: Any) -> ProgressTracker:
        config.setdefault("preview_dir", str(preview_dir))
        tracker = ProgressTracker(**config)
        opened.append(tracker)
        tracker.register_template_stages_sync(FLAT, [Stage("sampling", "Sampling", 1.0)])
        return tracker

    yield open_tracker
    for tracker in opened:
        tracker.close()


@pytest.fixture
def ptracker(open_tracker) -> ProgressTracker:
    return open_tracker()


# ---- milestones, formats ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_one_preview_per_milestone(ptracker, preview_dir, channels):
    ptracker.create_task_progress_sync("t", FLAT)
    width, height = 1024, 768
    for n in range(101):
        step(ptracker, "t", n)
        # Every step offers its frame; only the frames at 25, 50, 75 % become previews.
        ptracker.update_preview_sync("t", make_image(width, height, channels, marker=2 * n))
    stats = wait_previews(ptracker, 3)
    assert (stats["previews_written"], stats["previews_failed"], stats["previews_dropped"]) == (3, 0, 0)
    files = pngs(preview_dir)
    assert len(files) == 3 and not any(name.startswith(".") for name in files), files  # no temporaries left
    by_milestone = {m: [f for f in files if f.endswith(f"_{m}.png")] for m in (25, 50, 75)}
    assert all(len(v) == 1 for v in by_milestone.values()), files
    for milestone, (name,) in by_milestone.items():
        # The frame offered when progress reached the milestone (step == milestone here).
        check_preview(preview_dir / name, (width, height), channels, marker=2 * milestone)
    task = ptracker.get_task_progress_sync("t")
    assert url_file(task["preview_url"]) == by_milestone[75][0]


def test_milestones_are_configurable_and_taken_once(open_tracker, preview_dir):
    tracker = open_tracker(preview_milestones=[90, 10], preview_max_size=64)
    tracker.create_task_progress_sync("t", FLAT)
    img = make_image(200, 100, 3)
    step(tracker, "t", 5)
    tracker.update_preview_sync("t", img)  # below every milestone
    step(tracker, "t", 10)
    for _ in range(5):
        tracker.update_preview_sync("t", img)  # 10 % crossed: one preview however often it is offered
    step(tracker, "t", 95)  # jumps past 90
    tracker.update_preview_sync("t", img)
    tracker.update_preview_sync("t", img)
    wait_previews(tracker, 2)
    files = pngs(preview_dir)
    assert [f.rsplit("_", 1)[1] for f in files] == ["10.png", "90.png"], files
    for name in files:
        check_preview(preview_dir / name, (200, 100), 3, max_size=64)


def test_a_jump_past_several_milestones_makes_one_preview(ptracker, preview_dir):
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 60)  # past 25 and 50 at once: the current frame stands for the latest milestone
    ptracker.update_preview_sync("t", make_image(64, 64, 3))
    step(ptracker, "t", 80)
    ptracker.update_preview_sync("t", make_image(64, 64, 3))
    wait_previews(ptracker, 2)
    assert [f.rsplit("_", 1)[1] for f in pngs(preview_dir)] == ["50.png", "75.png"]


def test_every_n_steps(open_tracker, preview_dir):
    tracker = open_tracker(preview_every_steps=10, preview_max_size=32)
    tracker.create_task_progress_sync("t", FLAT)
    for n in range(1, 36):
        step(tracker, "t", n, total=35)
        tracker.update_preview_sync("t", make_image(40, 40, 1, marker=n))
        tracker.update_preview_sync("t", make_image(40, 40, 1, marker=n))  # twice: once per step
    wait_previews(tracker, 3)
    files = pngs(preview_dir)
    assert [f.rsplit("_", 1)[1] for f in files] == ["s10.png", "s20.png", "s30.png"], files
    for name in files:
        n = int(name.rsplit("_s", 1)[1][:-4])
        check_preview(preview_dir / name, (40, 40), 1, max_size=32, marker=n)


def test_every_n_steps_with_frames_offered_off_the_multiples(open_tracker, preview_dir):
    """A runner that offers a frame every 3 steps with preview_every_steps 5 gets one preview each time the step
    crosses the next multiple of 5 (at steps 6, 12, 15, 21), not only when it lands on one (15)."""
    tracker = open_tracker(preview_every_steps=5, preview_max_size=32)
    tracker.create_task_progress_sync("t", FLAT)
    for n in range(3, 22, 3):
        step(tracker, "t", n, total=30)
        tracker.update_preview_sync("t", make_image(40, 40, 1, marker=n))
    wait_previews(tracker, 4)
    assert [f.rsplit("_", 1)[1] for f in pngs(preview_dir)] == ["s12.png", "s15.png", "s21.png", "s6.png"]


@pytest.mark.parametrize("width, height", [(1024, 1024), (768, 1024), (1000, 333), (300, 200), (17, 9)])
def test_size_keeps_aspect_and_never_upscales(open_tracker, preview_dir, width, height):
    tracker = open_tracker(preview_max_size=512)
    tracker.create_task_progress_sync("t", FLAT)
    step(tracker, "t", 30)
    tracker.update_preview_sync("t", make_image(width, height, 3))
    wait_previews(tracker, 1)
    (name,) = pngs(preview_dir)
    if min(width, height) >= 64:
        check_preview(preview_dir / name, (width, height), 3)
    else:  # too small for the block probes: the pixels come through unchanged
        with Image.open(preview_dir / name) as img:
            assert img.size == (width, height)
            assert np.array_equal(np.asarray(img), make_image(width, height, 3))


def test_downscale_averages_rather_than_aliases(open_tracker, preview_dir):
    """A proper filter: a 1-pixel checkerboard halves to flat grey (point sampling gives black or white),
    and a smooth image matches Pillow's box-filter resize."""
    tracker = open_tracker(preview_max_size=256)
    tracker.create_task_progress_sync("checker", FLAT)
    tracker.create_task_progress_sync("smooth", FLAT)
    checker = ((np.indices((512, 512)).sum(axis=0) % 2) * 255).astype(np.uint8)
    smooth = make_image(1024, 768, 3)
    step(tracker, "checker", 30)
    tracker.update_preview_sync("checker", checker)
    step(tracker, "smooth", 30)
    tracker.update_preview_sync("smooth", smooth)
    wait_previews(tracker, 2)
    task = tracker.get_task_progress_sync("checker")
    with Image.open(preview_dir / url_file(task["preview_url"])) as img:
        a = np.asarray(img).astype(int)
    assert a.shape == (256, 256) and a.min() >= 126 and a.max() <= 129, (a.min(), a.max())
    task = tracker.get_task_progress_sync("smooth")
    with Image.open(preview_dir / url_file(task["preview_url"])) as img:
        ours = np.asarray(img).astype(int)
    pillow = np.asarray(Image.fromarray(smooth).resize((256, 192), Image.Resampling.BOX)).astype(int)
    assert np.abs(ours - pillow).max() <= 1  # an integer ratio: Pillow's BOX is exact area averaging too
    reference = area_resize(smooth, 256, 192).astype(int)
    assert np.abs(ours - reference).max() <= 1


def test_transparent_pixels_do_not_tint_edges(open_tracker, preview_dir):
    tracker = open_tracker(preview_max_size=20)
    img = np.zeros((60, 93, 4), np.uint8)
    img[:, :47] = (255, 255, 255, 255)  # opaque white
    img[:, 47:] = (255, 0, 0, 0)  # fully transparent: its red is invisible
    tracker.create_task_progress_sync("t", FLAT)
    step(tracker, "t", 30)
    tracker.update_preview_sync("t", img)
    wait_previews(tracker, 1)
    (name,) = pngs(preview_dir)
    with Image.open(preview_dir / name) as out:
        a = np.asarray(out).astype(int)
    visible = a[..., 3] > 0
    # Every partly visible pixel shows white: the transparent red must not leak in.
    assert (a[visible][:, 1:3] >= 250).all(), a[5, 8:12]


# ---- inputs: strides, numpy views, PIL images, the C call --------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_padded_stride_through_the_c_call(ptracker, preview_dir, channels):
    """progress_preview_pixels with rows `stride` bytes apart: the padding (bright green garbage) must
    never show up in the preview."""
    width, height, pad = 301, 203, 37
    img = make_image(width, height, channels)
    stride = width * channels + pad
    padded = np.full((height, stride), 0x7F, np.uint8)
    padded[:, : width * channels] = img.reshape(height, width * channels)
    padded[:, width * channels :] = np.resize(np.array([0, 255, 0, 255], np.uint8), pad)
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30)
    _lib.progress_preview_pixels(
        ptracker._handle(), b"t", padded.tobytes(), width, height, stride, channels
    )
    wait_previews(ptracker, 1)
    (name,) = pngs(preview_dir)
    preview = check_preview(preview_dir / name, (width, height), channels)
    # Compare with the area average of the unpadded image: the padding would drag the right edge.
    ref = area_resize(img, *preview.shape[1::-1]).astype(int)
    got = preview.astype(int)
    if channels == 4:  # a fully transparent pixel has no colour to compare
        got[got[..., 3] == 0, :3] = 0
        ref[ref[..., 3] == 0, :3] = 0
    assert np.abs(got - ref).max() <= 1


def test_numpy_views_and_layouts(open_tracker, preview_dir):
    """Strided numpy views (a crop of a wider array, a flipped array, H×W×1, Fortran order) are taken as
    the image they show."""
    tracker = open_tracker(preview_every_steps=1)
    wide = np.zeros((256, 400, 3), np.uint8)
    wide[:, :320] = make_image(320, 256, 3)
    cases = {
        "crop": (wide[:, :320], (320, 256), 3),
        "flip": (make_image(320, 256, 3)[::-1][::-1], (320, 256), 3),  # a negative-stride view of a view
        "hw1": (make_image(320, 256, 1)[:, :, None], (320, 256), 1),
        "fortran": (np.asfortranarray(make_image(320, 256, 4)), (320, 256), 4),
    }
    for name, (array, size, channels) in cases.items():
        tracker.create_task_progress_sync(name, FLAT)
        step(tracker, name, 1)
        tracker.update_preview_sync(name, array)
    wait_previews(tracker, len(cases))
    for name, (array, size, channels) in cases.items():
        task = tracker.get_task_progress_sync(name)
        check_preview(preview_dir / url_file(task["preview_url"]), size, channels)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "La", "I;16"])
def test_pil_images(open_tracker, preview_dir, mode):
    """Real Pillow images of the common modes; the preview shows what the image shows (16-bit grey at its
    8-bit level, a palette image in its colours, grey + alpha with its alpha)."""
    tracker = open_tracker()
    gray, rgb, rgba = (make_image(640, 480, c) for c in (1, 3, 4))
    image, shown, channels = {
        "L": (Image.fromarray(gray), gray, (1,)),
        "RGB": (Image.fromarray(rgb), rgb, (3,)),
        "RGBA": (Image.fromarray(rgba), rgba, (4,)),
        "P": (Image.fromarray(rgb).quantize(256), None, (3, 4)),
        "LA": (Image.fromarray(gray).convert("LA"), np.dstack([gray, gray, gray, np.full_like(gray, 255)]), (4,)),
        # Alpha premultiplied (opaque here, so the same pixels): Pillow cannot convert it to RGBA directly.
        "La": (Image.fromarray(gray).convert("LA").convert("La"), np.dstack([gray, gray, gray, np.full_like(gray, 255)]),
               (4,)),
        "I;16": (Image.fromarray(gray.astype(np.uint16) * 257), gray, (1, 3)),
    }[mode]
    assert image.mode == mode
    if shown is None:
        shown = np.asarray(image.convert("RGB"))
    tracker.create_task_progress_sync("t", FLAT)
    step(tracker, "t", 30)
    tracker.update_preview_sync("t", image)
    wait_previews(tracker, 1)
    (name,) = pngs(preview_dir)
    if mode in ("L", "RGB", "RGBA"):
        check_preview(preview_dir / name, (640, 480), channels[0])
    with Image.open(preview_dir / name) as img:
        assert img.size == (512, 384) and img.mode in [MODES[c] for c in channels], (img.size, img.mode)
        got = np.asarray(img).astype(int)
    expected = area_resize(shown, 512, 384).astype(int)
    if got.ndim == 3 and expected.ndim == 2:
        expected = np.dstack([expected] * got.shape[2])
    assert np.abs(got[..., :3] - expected[..., :3]).max() <= 1, mode


def test_buffer_tuple_through_the_binding(ptracker, preview_dir):
    img = make_image(300, 200, 4)
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30)
    ptracker.update_preview_sync("t", (bytearray(img.tobytes()), 300, 200, 4))
    wait_previews(ptracker, 1)
    (name,) = pngs(preview_dir)
    check_preview(preview_dir / name, (300, 200), 4)


# ---- the seed's preview_path ------------------------------------------------------------------------


def _png_variants(folder: Path) -> Dict[str, tuple]:
    """name -> (path, channels the preview should have). PNGs as runners write them."""
    rgb = Image.fromarray(make_image(640, 480, 3))
    gray = Image.fromarray(make_image(640, 480, 1))
    variants = {
        "rgb": (rgb, 3),
        "rgba": (Image.fromarray(make_image(640, 480, 4)), 4),
        "gray": (gray, 1),
        "gray_alpha": (gray.convert("LA"), 4),
        "palette": (rgb.quantize(256), 3),
        "gray16": (Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), 1),
    }
    out = {}
    for name, (image, channels) in variants.items():
        path = folder / f"{name}.png"
        image.save(path, compress_level=1)
        out[name] = (path, channels)
    return out


def test_preview_path_pngs_are_decoded(open_tracker, preview_dir, tmp_path):
    tracker = open_tracker()
    variants = _png_variants(tmp_path)
    for name, (path, channels) in variants.items():
        tracker.create_task_progress_sync(name, FLAT)
        step(tracker, name, 10, preview_path=str(path))  # not due: the file is not read
        step(tracker, name, 30, preview_path=str(path))
    wait_previews(tracker, len(variants))
    assert tracker.stats_sync()["previews_failed"] == 0
    for name, (path, channels) in variants.items():
        task = tracker.get_task_progress_sync(name)
        preview = preview_dir / url_file(task["preview_url"])
        if name == "gray_alpha":  # grey + alpha widens to RGBA: grey blocks, so no colour probes
            with Image.open(preview) as img:
                assert (img.size, img.mode) == ((512, 384), "RGBA")
        else:
            check_preview(preview, (640, 480), channels)
        if name == "gray16":
            continue  # levels: see test_sixteen_bit_png_levels
        with Image.open(path) as src, Image.open(preview) as got:
            ref = area_resize(np.asarray(src.convert(MODES[channels])), 512, 384).astype(int)
            assert np.abs(np.asarray(got).astype(int) - ref).max() <= 1, name


def write_png16(path: Path, pixels: "np.ndarray", gamma: Optional[float] = None) -> None:
    """A 16-bit PNG of pixels (H x W x C uint16, C = 1, 2, 3 or 4), with a gAMA chunk when gamma is given:
    Pillow cannot write 16-bit colour PNGs."""
    import struct
    import zlib

    height, width, channels = pixels.shape
    color = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color, 0, 0, 0))
    if gamma is not None:
        png += chunk(b"gAMA", struct.pack(">I", round(gamma * 100000)))
    path.write_bytes(png + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_png_levels(ptracker, preview_dir, tmp_path, channels):
    """A 16-bit PNG without gamma information is read as sRGB, as Pillow and browsers show it (libpng's
    simplified API would take it for linear light: mid grey 0x8080 became 186); colours and alpha kept."""
    levels = {1: [0x8080], 2: [0x8080, 0xFFFF], 3: [0x8080, 0x4040, 0xC0C0],
              4: [0x8080, 0x4040, 0xC0C0, 0x8080]}[channels]  # 2: grey + opaque alpha; 4: half transparent
    path = tmp_path / "mid16.png"
    write_png16(path, np.tile(np.array(levels, np.uint16), (64, 64, 1)))
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30, preview_path=str(path))
    wait_previews(ptracker, 1)
    (name,) = pngs(preview_dir)
    with Image.open(preview_dir / name) as img:
        got = np.asarray(img).reshape(-1, len(img.getbands()))
    want = [v >> 8 for v in levels]
    if channels == 2:
        want = [0x80, 0x80, 0x80, 0xFF]  # grey + alpha widens to RGBA
    assert np.abs(got.astype(int) - np.array(want)).max() <= 1, (got[0], want)


def test_sixteen_bit_png_with_gamma_is_converted(ptracker, preview_dir, tmp_path):
    """A gAMA chunk still rules: linear light (gamma 1.0) at half intensity is 186 in the 8-bit preview
    (libpng encodes its sRGB output with the 1/2.2 power law: 255 * 0.5 ** (1 / 2.2))."""
    path = tmp_path / "linear16.png"
    write_png16(path, np.full((64, 64, 1), 0x8000, np.uint16), gamma=1.0)
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30, preview_path=str(path))
    wait_previews(ptracker, 1)
    (name,) = pngs(preview_dir)
    with Image.open(preview_dir / name) as img:
        assert abs(int(np.asarray(img).mean()) - round(255 * (0x8000 / 0xFFFF) ** (1 / 2.2))) <= 1


# ---- video -----------------------------------------------------------------------------------------


def test_video_tasks_preview_the_current_frame(ptracker, preview_dir):
    ptracker.create_task_progress_sync("clip", "svd", "video_generation")
    frames = 48
    crossed = {}
    last = 0.0
    for frame in range(frames + 1):
        step(ptracker, "clip", frame, total=frames)
        ptracker.update_preview_sync("clip", make_image(320, 180, 3, marker=frame * 5))
        overall = ptracker.get_task_progress_sync("clip")["overall_progress"]
        for m in (25, 50, 75):
            if last < m <= overall:
                crossed[m] = frame
        last = overall
    wait_previews(ptracker, 3)
    files = pngs(preview_dir)
    assert len(files) == 3, files
    for m, frame in crossed.items():
        (name,) = [f for f in files if f"_{m}_f" in f]
        assert name.endswith(f"_{m}_f{frame}.png"), (name, frame)  # the frame index is in the name
        check_preview(preview_dir / name, (320, 180), 3, marker=frame * 5)  # and it is that frame


def test_image_tasks_have_no_frame_in_the_name(ptracker, preview_dir):
    ptracker.create_task_progress_sync("img", "sdxl", "image_generation")
    step(ptracker, "img", 10)
    ptracker.update_preview_sync("img", make_image(64, 64, 3))
    wait_previews(ptracker, 1)
    (name,) = pngs(preview_dir)
    assert "_f" not in name.rsplit("-", 1)[1], name


# ---- broken inputs: an error or a logged, counted failure; the task goes on -----------------------


def assert_task_goes_on(tracker: ProgressTracker, task: str, n: int = 99) -> None:
    step(tracker, task, n)
    got = tracker.get_task_progress_sync(task)
    assert got["status"] == "executing" and got["stages"]["0"]["progress"] == pytest.approx(n / 100)
    tracker.complete_task_sync(task)
    assert tracker.get_task_progress_sync(task)["status"] == "completed"


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((b"\0" * 12, 0, 2, 6, 3), "width and height"),
        ((b"\0" * 12, 2, 0, 6, 3), "width and height"),
        ((b"\0" * 12, -2, 2, 6, 3), "width and height"),
        ((b"\0" * 12, 2, 2, 5, 3), "stride"),
        ((b"\0" * 8, 2, 2, 4, 2), "channels"),
        ((b"\0" * 20, 2, 2, 10, 5), "channels"),
        ((None, 2, 2, 6, 3), "NULL"),
    ],
)
def test_bad_pixel_arguments_are_refused_by_the_engine(ptracker, preview_dir, args, fragment):
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30)  # a preview is due: the checks come first anyway
    with pytest.raises(InvalidArgumentError, match=fragment):
        _lib.progress_preview_pixels(ptracker._handle(), b"t", *args)
    # The milestone was not used up by the refused call.
    ptracker.update_preview_sync("t", make_image(64, 64, 3))
    wait_previews(ptracker, 1)
    assert len(pngs(preview_dir)) == 1
    assert_task_goes_on(ptracker, "t")


@pytest.mark.parametrize(
    "image",
    [
        (b"", 0, 0, 3),  # zero size
        (b"\0" * 11, 2, 2, 3),  # short buffer
        (b"\0" * 13, 2, 2, 3),  # long buffer
        "zeros(0, 0, 3)",
        "zeros(4, 4, 2)",
        "float32",
    ],
)
def test_bad_images_are_refused_by_the_binding(open_tracker, preview_dir, image):
    ptracker = open_tracker(strict=True)
    if image == "zeros(0, 0, 3)":
        image = np.zeros((0, 0, 3), np.uint8)
    elif image == "zeros(4, 4, 2)":
        image = np.zeros((4, 4, 2), np.uint8)
    elif image == "float32":
        image = np.zeros((4, 4, 3), np.float32)
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30)
    with pytest.raises(InvalidArgumentError):
        ptracker.update_preview_sync("t", image)
    assert ptracker.stats_sync()["previews_written"] == 0
    assert_task_goes_on(ptracker, "t")


def test_an_unreadable_pil_image_is_refused_not_raised(open_tracker, preview_dir, tmp_path):
    """A lazily opened PNG still being written (a renderer's newest frame) reads its pixels in the preview call:
    Pillow's OSError went straight into the runner. It is a bad image: a warning, or InvalidArgumentError when
    strict, and the task goes on."""
    path = tmp_path / "frame.png"
    Image.fromarray(make_image(64, 64, 3)).save(path)
    path.write_bytes(path.read_bytes()[:200])  # cut short, as a file still being written
    for strict in (False, True):
        tracker = open_tracker(strict=strict)
        tracker.create_task_progress_sync("t", FLAT)
        step(tracker, "t", 30)
        image = Image.open(path)  # lazy: the pixels are read when the preview asks for them
        if strict:
            with pytest.raises(InvalidArgumentError, match="could not be read"):
                tracker.update_preview_sync("t", image)
        else:
            with pytest.warns(ProgressWarning, match="could not be read"):
                tracker.update_preview_sync("t", image)
        assert tracker.stats_sync()["previews_written"] == 0
        assert_task_goes_on(tracker, "t")
        tracker.close()


def test_unknown_and_finished_tasks(open_tracker):
    ptracker = open_tracker(strict=True)
    with pytest.raises(NotFoundError):
        ptracker.update_preview_sync("nope", make_image(8, 8, 3))
    ptracker.create_task_progress_sync("t", FLAT)
    ptracker.complete_task_sync("t")
    with pytest.raises(StateError):
        ptracker.update_preview_sync("t", make_image(8, 8, 3))


def _corrupt_pngs(folder: Path) -> Dict[str, Path]:
    good = folder / "good.png"
    Image.fromarray(make_image(128, 128, 3)).save(good)
    data = good.read_bytes()
    files = {
        "missing": folder / "does-not-exist.png",
        "directory": folder,
        "not_png": folder / "text.png",
        "truncated": folder / "truncated.png",
        "bad_crc": folder / "bad_crc.png",
        "empty": folder / "empty.png",
    }
    files["not_png"].write_text("this is not a PNG\n")
    files["truncated"].write_bytes(data[: len(data) // 2])
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0xFF  # inside the IDAT data: zlib or CRC error
    files["bad_crc"].write_bytes(bytes(broken))
    files["empty"].write_bytes(b"")
    return files


def test_bad_preview_paths_are_logged_and_counted(ptracker, preview_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = _corrupt_pngs(src)
    for name, path in files.items():
        ptracker.create_task_progress_sync(name, FLAT)
        step(ptracker, name, 30, preview_path=str(path))  # the event itself succeeds: decoding is later
        assert ptracker.get_task_progress_sync(name)["overall_progress"] == pytest.approx(30)
    stats = wait_previews(ptracker, len(files))
    assert stats["previews_failed"] == len(files) and stats["previews_written"] == 0, stats
    assert pngs(preview_dir) == []
    for name, path in files.items():
        task = ptracker.get_task_progress_sync(name)
        assert task["preview_url"] is None
        (warning,) = warnings_of(ptracker, name)
        assert "preview" in warning and "failed" in warning and str(path) in warning, warning
        assert_task_goes_on(ptracker, name)


def test_oversized_png_is_refused_not_decoded(ptracker, preview_dir, tmp_path):
    """A small file that decodes to 10^8 pixels (a decompression bomb) is refused before allocating."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (10_000, 10_000)).save(bomb)
    assert bomb.stat().st_size < 100_000
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 30, preview_path=str(bomb))
    stats = wait_previews(ptracker, 1)
    assert stats["previews_failed"] == 1
    (warning,) = warnings_of(ptracker, "t")
    assert "10000x10000" in warning, warning
    assert_task_goes_on(ptracker, "t")


def test_file_names_are_safe_for_any_task_id(ptracker, preview_dir):
    # ("../../escape" itself is refused at creation: docs/API.md "Ids".)
    ids = ["..\\..\\escape", ".../.../escape", "a/b\\c", "x y*?:é😀", "." * 256, "same-prefix-" + "z" * 60,
           "same-prefix-" + "z" * 61]
    for task in ids:
        ptracker.create_task_progress_sync(task, FLAT)
        step(ptracker, task, 30)
        ptracker.update_preview_sync(task, make_image(16, 16, 3))
    wait_previews(ptracker, len(ids))
    files = pngs(preview_dir)
    assert len(files) == len(set(files)) == len(ids), files
    for task in ids:
        name = url_file(ptracker.get_task_progress_sync(task)["preview_url"])
        assert name in files and len(name) <= 100, name
        assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in name) and not name.startswith("."), name
    assert [p.name for p in preview_dir.parent.iterdir()] == ["previews"]  # nothing escaped the folder


def test_unwritable_preview_dir_fails_at_open(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(EngineIOError, match="preview_dir"):
        ProgressTracker(preview_dir=str(blocker / "previews"))


def test_preview_dir_that_disappears_is_logged_and_counted(ptracker, preview_dir):
    ptracker.create_task_progress_sync("t", FLAT)
    preview_dir.rmdir()
    step(ptracker, "t", 30)
    ptracker.update_preview_sync("t", make_image(256, 256, 3))
    stats = wait_previews(ptracker, 1)
    assert (stats["previews_written"], stats["previews_failed"]) == (0, 1), stats
    (warning,) = warnings_of(ptracker, "t")
    assert "preview" in warning and "failed" in warning, warning
    assert ptracker.get_task_progress_sync("t")["preview_url"] is None
    # The folder comes back: the next milestone's preview is written again.
    preview_dir.mkdir()
    step(ptracker, "t", 60)
    ptracker.update_preview_sync("t", make_image(256, 256, 3))
    wait_previews(ptracker, 2)
    assert len(pngs(preview_dir)) == 1
    assert_task_goes_on(ptracker, "t")


def test_a_flood_is_dropped_not_queued(open_tracker, preview_dir):
    """Every step due with big frames: the encoder cannot keep up, the excess is dropped (counted, logged)
    and nothing is lost track of."""
    tracker = open_tracker(preview_every_steps=1)
    tracker.create_task_progress_sync("t", FLAT)
    big = make_image(2048, 2048, 3)
    for n in range(1, 41):
        step(tracker, "t", n)
        tracker.update_preview_sync("t", big)
    stats = wait_previews(tracker, 40, timeout_s=60)
    assert stats["previews_written"] + stats["previews_dropped"] == 40 and stats["previews_failed"] == 0
    assert len(pngs(preview_dir)) == stats["previews_written"] >= 1 and stats["previews_dropped"] >= 1
    dropped = [m for m in warnings_of(tracker, "t") if "skipped" in m]
    assert len(dropped) == stats["previews_dropped"]
    assert_task_goes_on(tracker, "t")


# ---- timing of the milestone and lifetime of the files -----------------------------------------------


def test_preview_finishing_after_completion_is_kept(ptracker, preview_dir):
    ptracker.create_task_progress_sync("t", FLAT)
    step(ptracker, "t", 80)
    ptracker.update_preview_sync("t", make_image(2048, 2048, 3))
    ptracker.complete_task_sync("t")  # before the encoder is done, most likely
    wait_previews(ptracker, 1)
    task = ptracker.get_task_progress_sync("t")
    assert task["status"] == "completed"
    assert (preview_dir / url_file(task["preview_url"])).is_file()


def test_milestone_seen_through_the_step_counter(ptracker, preview_dir):
    """The runner's hot path (update_progress_sync without a message) writes an attached counter that the
    engine reads within throttle_ms; a preview offered right after the step that crosses a milestone must
    still be that milestone's preview."""
    ptracker.create_task_progress_sync("t", FLAT)
    ptracker.update_progress_sync("t", 1, 100)  # attaches the counter
    time.sleep(0.3)  # read by the maintenance thread
    ptracker.update_progress_sync("t", 25, 100)
    ptracker.update_preview_sync("t", make_image(64, 64, 3, marker=50))  # the frame of step 25
    ptracker.update_progress_sync("t", 26, 100)  # the runner moves on
    time.sleep(0.3)
    ptracker.update_preview_sync("t", make_image(64, 64, 3, marker=200))  # the frame of step 26
    wait_previews(ptracker, 1)
    (name,) = pngs(preview_dir)
    check_preview(preview_dir / name, (64, 64), 3, marker=50)


def test_preview_files_expire_with_their_task(open_tracker, preview_dir):
    tracker = open_tracker(retention_seconds=0.5)
    for task in ("old", "running"):
        tracker.create_task_progress_sync(task, FLAT)
        for n in (30, 60):
            step(tracker, task, n)
            tracker.update_preview_sync(task, make_image(128, 128, 3))
    wait_previews(tracker, 4)
    assert len(pngs(preview_dir)) == 4
    tracker.complete_task_sync("old")
    # The maintenance thread sweeps about once a second; retention is 0.5 s.
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and len(pngs(preview_dir)) > 2:
        time.sleep(0.05)
    remaining = pngs(preview_dir)
    assert len(remaining) == 2 and all(f.startswith("running-") for f in remaining), remaining
    with pytest.raises(NotFoundError):
        tracker.get_task_progress_sync("old")
    assert tracker.stats_sync()["purged_tasks"] == 1


def test_expiry_with_explicit_past_timestamps(open_tracker, preview_dir):
    tracker = open_tracker(retention_seconds=5)
    t0 = time.time() - 1000
    tracker.create_task_progress_sync("t", FLAT, timestamp=t0)
    tracker.send_event_sync("t", "execution_progress", {"step": 30, "total_steps": 100, "timestamp": t0 + 1})
    tracker.update_preview_sync("t", make_image(128, 128, 3))
    wait_previews(tracker, 1)
    tracker.send_event_sync("t", "execution_complete", {"timestamp": t0 + 2})  # RangeError today
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and pngs(preview_dir):
        time.sleep(0.05)
    assert pngs(preview_dir) == []


def test_private_preview_folder_is_removed_on_close():
    """Without preview_dir the engine uses a private temporary folder, removed on close."""
    tracker = ProgressTracker()
    try:
        tracker.register_template_stages_sync(FLAT, [Stage("sampling", "Sampling", 1.0)])
        tracker.create_task_progress_sync("t", FLAT)
        step(tracker, "t", 30)
        tracker.update_preview_sync("t", make_image(64, 64, 3))
        wait_previews(tracker, 1)
        name = url_file(tracker.get_task_progress_sync("t")["preview_url"])
        (path,) = glob.glob(f"/tmp/progress-previews-*/{name}")
        folder = os.path.dirname(path)
        check_preview(Path(path), (64, 64), 3)
        assert os.stat(folder).st_mode & 0o777 == 0o700  # private
    finally:
        tracker.close()
    assert not os.path.exists(folder)


def test_close_finishes_queued_previews(open_tracker, preview_dir):
    tracker = open_tracker(preview_every_steps=1)
    tracker.create_task_progress_sync("t", FLAT)
    for n in range(1, 5):
        step(tracker, "t", n)
        tracker.update_preview_sync("t", make_image(1024, 1024, 3))
    queued = 4 - tracker.stats_sync()["previews_dropped"]
    tracker.close()
    files = pngs(preview_dir)
    assert len(files) == queued and not any(f.startswith(".") for f in files), files
    for name in files:
        check_preview(preview_dir / name, (1024, 1024), 3)


# ---- served at preview_url -------------------------------------------------------------------------


def _get(tracker: ProgressTracker, path: str) -> tuple:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(tracker.url + path, timeout=5) as response:
            return response.status, response.headers.get("Content-Type"), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type"), error.read()


def _serve_one(tracker: ProgressTracker) -> tuple:
    tracker.register_template_stages_sync(FLAT, [Stage("sampling", "Sampling", 1.0)])
    tracker.create_task_progress_sync("t", FLAT)
    step(tracker, "t", 30)
    tracker.update_preview_sync("t", make_image(200, 100, 3))
    wait_previews(tracker, 1)
    url = tracker.get_task_progress_sync("t")["preview_url"]
    return url, _get(tracker, url)


def test_preview_url_is_served_by_the_listener(open_tracker, preview_dir):
    tracker = open_tracker(listen="127.0.0.1:0")
    url, (status, content_type, body) = _serve_one(tracker)
    assert (status, content_type) == (200, "image/png")
    assert body == (preview_dir / url_file(url)).read_bytes()
    # A PNG next to the preview folder must not be reachable through it.
    Image.fromarray(make_image(8, 8, 3)).save(preview_dir.parent / "outside.png")
    (preview_dir / ".hidden.png").write_bytes(body)
    for bad in ("..%2Foutside.png", "%2E%2E/outside.png", "..%5Coutside.png", "../outside.png", ".hidden.png",
                "nope.png", url_file(url)[:-4]):
        status, _, _ = _get(tracker, URL_PREFIX + bad)
        assert status == 404, bad


def test_preview_url_is_served_without_a_preview_dir():
    with ProgressTracker(listen="127.0.0.1:0") as tracker:
        url, (status, content_type, body) = _serve_one(tracker)
        assert (status, content_type) == (200, "image/png"), body[:200]
        with Image.open(__import__("io").BytesIO(body)) as img:
            assert img.size == (200, 100)


# ---- preview_due ----------------------------------------------------------------------------------


def labels(folder: Path) -> List[str]:
    """The milestone / step label of each preview file (NAME_LABEL.png), in the order they were taken."""
    files = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return [p.name[:-len(".png")].rsplit("_", 1)[1] for p in files]


def test_preview_due_is_true_exactly_when_the_offer_is_taken(open_tracker, preview_dir):
    # update_progress_sync without a message only writes the step counter: preview_due must see those steps.
    t = open_tracker(preview_milestones=[25, 50, 75, 90])
    t.create_task_progress_sync("pd", template_id=FLAT)
    img = make_image(64, 48, 3)
    due_at, taken = [], 0
    for n in range(1, 21):
        t.update_progress_sync("pd", n, 20)
        due = t.preview_due("pd")
        if due:
            due_at.append(n)
        if n == 5:
            assert due and t.preview_due("pd"), "asking takes nothing"
            continue  # a due preview not offered stays due
        t.update_preview_sync("pd", img)
        assert not t.preview_due("pd"), f"step {n}: still due after the offer"
        # Taken exactly when due: one more finished preview per due offer, none otherwise.
        taken += due
        wait_previews(t, taken)
    assert due_at == [5, 6, 10, 15, 18]  # 25 % at 5 (not offered, taken at 6), then 50, 75, 90 %
    assert labels(preview_dir) == ["25", "50", "75", "90"]
    t.complete_task_sync("pd")
    assert not t.preview_due("pd"), "a finished task takes no previews"


def test_preview_due_every_n_steps_through_the_context(open_tracker, preview_dir):
    t = open_tracker(preview_every_steps=3)
    img = make_image(32, 32, 1)
    taken = []
    with ProgressContext(t, "ctx", template_id=FLAT) as ctx:
        for n in range(1, 14):
            t.update_progress_sync("ctx", n, 13)
            if ctx.preview_due():
                taken.append(n)
                t.update_preview_sync("ctx", img)
    assert taken == [3, 6, 9, 12]
    wait_previews(t, 4)
    assert labels(preview_dir) == ["s3", "s6", "s9", "s12"]


def test_preview_due_errors(open_tracker):
    t = open_tracker(strict=True)  # the default tracker answers False with a warning (test_runner_safe)
    with pytest.raises(NotFoundError):
        t.preview_due("nobody")
    with pytest.raises(InvalidArgumentError):
        t.preview_due("bad\x01id")
    t.create_task_progress_sync("e", template_id=FLAT)
    due = ctypes.c_int(7)
    with pytest.raises(InvalidArgumentError):
        _lib.progress_preview_due(t._handle(), b"e", None)
    with pytest.raises(InvalidArgumentError):
        _lib.progress_preview_due(t._handle(), None, ctypes.byref(due))
    assert due.value == 0
    due.value = 7
    with pytest.raises(InvalidArgumentError):
        _lib.progress_preview_due(None, b"e", ctypes.byref(due))
    assert due.value == 0

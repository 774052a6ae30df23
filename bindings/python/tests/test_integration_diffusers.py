"""progress_engine.integrations.diffusers: the latent-to-RGB previews of each family against pixels worked out by
hand from the published factors, Flux's unpacking against diffusers' packing, and the callback in diffusers'
denoising loop on a real engine: every step reported, the previews the engine's milestones take (decoded back
from the PNG files), and a cancel request interrupting the pipeline.

The loop here is `DenoisingLoop`: the part of StableDiffusionPipeline.__call__ (diffusers 0.42) that touches the
callback, transcribed with numpy latents, so that these run without torch (numpy only, as the callback needs).
test_integration_diffusers_pipeline.py runs the callback in real diffusers pipelines where torch is installed."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import progress_engine as pe
from progress_engine import ProgressTracker, ProgressWarning
from progress_engine.integrations.diffusers import (LATENT_RGB_FACTORS, ProgressCallback, latent_family,
                                                    latents_to_rgb, unpack_flux_latents)


def one_hot(channels: int, k: int, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(channels)
    v[k] = scale
    return v


def image_of(vectors: dict, channels: int, h: int, w: int) -> np.ndarray:
    """(1, C, h, w) latents, zero except the given {(row, col): channel vector}."""
    latents = np.zeros((1, channels, h, w), dtype=np.float32)
    for (row, col), v in vectors.items():
        latents[0, :, row, col] = v
    return latents


# (family, channels, {(row, col): channel vector}, {(row, col): RGB}, RGB of a zero latent). Each RGB is
# rint((factors row [+ bias] + 1) * 127.5), worked out by hand; e.g. SD 1.x channel 0 = (0.3512, 0.2297, 0.3227)
# -> (172.278, 156.787, 168.644) -> (172, 157, 169).
CASES = [
    ("sd1", 4, {(0, 1): one_hot(4, 0), (1, 0): one_hot(4, 3), (1, 1): one_hot(4, 0, 10), (0, 0): one_hot(4, 0, -10)},
     {(0, 1): (172, 157, 169), (1, 0): (100, 94, 36), (1, 1): (255, 255, 255), (0, 0): (0, 0, 0)}, (128, 128, 128)),
    ("sdxl", 4, {(0, 1): one_hot(4, 1)}, {(0, 1): (109, 125, 141)}, (141, 125, 127)),
    ("sd3", 16, {(0, 1): one_hot(16, 2), (1, 0): one_hot(16, 15)}, {(0, 1): (183, 167, 158), (1, 0): (140, 136, 137)},
     (158, 155, 152)),
    ("flux", 16, {(0, 1): one_hot(16, 9), (1, 0): one_hot(16, 13)}, {(0, 1): (136, 128, 111), (1, 0): (107, 112, 103)},
     (123, 118, 117)),
]


@pytest.mark.parametrize("family, channels, vectors, expected, zero", CASES, ids=[c[0] for c in CASES])
def test_latent_to_rgb_pixels_of_each_family(family, channels, vectors, expected, zero):
    latents = image_of(vectors, channels, 2, 3)
    rgb = latents_to_rgb(latents, family)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    for row in range(2):
        for col in range(3):
            assert tuple(rgb[row, col]) == expected.get((row, col), zero), (family, row, col)
    # Only the batch's first image is previewed.
    batch = np.concatenate([latents, np.full_like(latents, 5.0)])
    assert np.array_equal(latents_to_rgb(batch, family), rgb)


def test_factor_tables_have_one_row_per_channel():
    assert {f: (len(w), len(b)) for f, (w, b) in LATENT_RGB_FACTORS.items()} == {
        "sd1": (4, 3), "sdxl": (4, 3), "sd3": (16, 3), "flux": (16, 3)}
    assert all(len(row) == 3 for w, _ in LATENT_RGB_FACTORS.values() for row in w)


def pack_like_diffusers(latents: np.ndarray) -> np.ndarray:
    """FluxPipeline._pack_latents in numpy: 2x2 patches of each channel side by side, row-major patches."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def test_flux_packed_latents_are_unpacked_first():
    # A 32 x 48 image: 4 x 6 latents, 2 x 3 packed patches of 64.
    latents = image_of({(1, 4): one_hot(16, 9), (2, 0): one_hot(16, 13)}, 16, 4, 6)
    packed = pack_like_diffusers(latents)
    assert packed.shape == (1, 6, 64)
    assert np.array_equal(unpack_flux_latents(packed, 32, 48), latents)
    rgb = latents_to_rgb(packed, height=32, width=48)  # the family is known from the shape
    assert latent_family(packed) == "flux"
    assert tuple(rgb[1, 4]) == (136, 128, 111) and tuple(rgb[2, 0]) == (107, 112, 103)
    assert tuple(rgb[0, 0]) == (123, 118, 117) and rgb.shape == (4, 6, 3)
    with pytest.raises(ValueError, match="not a square"):
        latents_to_rgb(packed)
    # A square image needs no size.
    square = image_of({(3, 2): one_hot(16, 9)}, 16, 4, 4)
    assert np.array_equal(latents_to_rgb(pack_like_diffusers(square)), latents_to_rgb(square, "flux"))


def test_family_from_shape_and_pipeline():
    class StableDiffusionXLPipeline:
        pass

    class FluxPipeline:
        pass

    assert latent_family(np.zeros((1, 4, 8, 8))) == "sd1"
    assert latent_family(np.zeros((1, 4, 8, 8)), StableDiffusionXLPipeline()) == "sdxl"
    assert latent_family(np.zeros((1, 16, 8, 8))) == "sd3"
    assert latent_family(np.zeros((1, 16, 8, 8)), FluxPipeline()) == "flux"
    with pytest.raises(ValueError, match="no latent-to-RGB factors"):
        latent_family(np.zeros((1, 8, 8, 8)))


class DenoisingLoop:
    """What StableDiffusionPipeline.__call__ (diffusers 0.42) does around `callback_on_step_end`, with numpy latents:
    `_interrupt` reset and `_num_timesteps` set before the loop, a step skipped once `interrupt` is set, the
    callback called after the scheduler step with the requested tensors, and its "latents" taken back."""

    def __init__(self, latents_of_step) -> None:
        self.latents_of_step = latents_of_step  # stands for the UNet and the scheduler step
        self.called = 0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return self._interrupt

    def __call__(self, num_inference_steps, callback_on_step_end=None, callback_on_step_end_tensor_inputs=None):
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        timesteps = list(range(999, 0, -(1000 // num_inference_steps)))[:num_inference_steps]
        self._interrupt = False
        self._num_timesteps = len(timesteps)
        latents = None
        for i, t in enumerate(timesteps):
            if self.interrupt:
                continue
            latents = self.latents_of_step(i)
            if callback_on_step_end is not None:
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:
                    callback_kwargs[k] = locals()[k]
                self.called += 1
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)
        return latents


PATTERN = np.linspace(-2.0, 2.0, 4 * 8 * 8, dtype=np.float32).reshape(1, 4, 8, 8)


def latents_of_step(i: int) -> np.ndarray:
    return PATTERN * (i + 1) / 20


def wait_previews(tracker: ProgressTracker, n: int) -> None:
    deadline = time.monotonic() + 10
    while tracker.stats_sync()["previews_written"] < n:
        assert time.monotonic() < deadline, tracker.stats_sync()
        time.sleep(0.02)


def test_callback_reports_every_step_and_previews_at_the_milestones(tmp_path):
    with ProgressTracker(preview_dir=str(tmp_path)) as tracker:
        tracker.create_task_progress_sync("img", "sd15")
        steps = []

        class Watching(ProgressCallback):
            def __call__(self, pipe, step_index, timestep, callback_kwargs):
                out = super().__call__(pipe, step_index, timestep, callback_kwargs)
                steps.append(tracker.get_task_progress_sync("img")["stages"]["1"]["progress"])
                return out

        loop = DenoisingLoop(latents_of_step)
        final = loop(20, callback_on_step_end=Watching("img", tracker))
        assert np.array_equal(final, latents_of_step(19))  # the latents went back into the loop
        assert steps == [(i + 1) / 20 for i in range(20)]
        # Default stages: queue 5 %, processing 85 %: overall 5 + 85 * step / 20 reaches 25, 50, 75 at steps 5, 11
        # and 17, so the previews are those steps' latents, mapped with the SD 1.x factors.
        wait_previews(tracker, 3)
        task = tracker.get_task_progress_sync("img")
        assert task["preview_url"] and task["preview_url"].endswith("_75.png")
        for milestone, step in ((25, 5), (50, 11), (75, 17)):
            [png] = tmp_path.glob(f"*_{milestone}.png")
            with Image.open(png) as image:
                assert image.size == (8, 8)
                expected = latents_to_rgb(latents_of_step(step - 1), "sd1")
                assert np.array_equal(np.asarray(image.convert("RGB")), expected)
        assert len(list(tmp_path.glob("*.png"))) == 3
        tracker.complete_task_sync("img")


class AskedTracker(ProgressTracker):
    """A tracker whose preview_due says yes at step 7 only, so the one preview shows that the callback makes
    previews exactly when preview_due says so."""

    asked = 0

    def preview_due(self, task_id: str) -> bool:
        self.asked += 1
        return self.get_task_progress_sync(task_id)["stages"]["1"]["progress"] == 7 / 20


def test_callback_asks_preview_due_when_the_tracker_has_it(tmp_path):
    with AskedTracker(preview_dir=str(tmp_path)) as tracker:
        tracker.create_task_progress_sync("img", "sd15")
        DenoisingLoop(latents_of_step)(20, callback_on_step_end=ProgressCallback("img", tracker))
        assert tracker.asked == 20
        wait_previews(tracker, 1)
        tracker.complete_task_sync("img")
    [png] = tmp_path.glob("*.png")  # step 7 is past the 25 % milestone, which the engine then takes
    with Image.open(png) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), latents_to_rgb(latents_of_step(6), "sd1"))


def test_tensor_inputs_and_preview_none(tmp_path):
    assert ProgressCallback.tensor_inputs == ["latents"]
    with ProgressTracker(preview_dir=str(tmp_path)) as tracker:
        tracker.create_task_progress_sync("img", "sd15")
        DenoisingLoop(latents_of_step)(10, callback_on_step_end=ProgressCallback("img", tracker, preview=None))
        assert tracker.get_task_progress_sync("img")["stages"]["1"]["progress"] == 1.0
        assert tracker.stats_sync()["previews_written"] == 0


def test_a_cancel_request_interrupts_the_pipeline_and_cancels_the_task():
    with ProgressTracker(listen="127.0.0.1:0") as tracker:
        tracker.create_task_progress_sync("img", "sd15")

        def latents_asking_to_cancel(i: int) -> np.ndarray:
            if i == 4:  # during step 5, someone presses Cancel
                request = urllib.request.Request(f"{tracker.url}/api/v1/progress/tasks/img/cancel", method="POST",
                                                 data=b'{"reason": "pressed Cancel"}')
                assert urllib.request.urlopen(request, timeout=5).status == 202
            return latents_of_step(i)

        loop = DenoisingLoop(latents_asking_to_cancel)
        loop(20, callback_on_step_end=ProgressCallback("img", tracker, preview=None))
        assert loop.called == 5 and loop.interrupt  # steps 6..20 were skipped, as diffusers skips them
        task = tracker.get_task_progress_sync("img")
        assert task["stages"]["1"]["progress"] == 5 / 20
        assert task["status"] == "cancelled" and task["error"] == "pressed Cancel" and not task["cancel_requested"]


def test_bad_options():
    with ProgressTracker() as tracker:
        with pytest.raises(ValueError, match="preview must be"):
            ProgressCallback("t", tracker, preview="taesd")
        with pytest.raises(ValueError, match="unknown latent family"):
            ProgressCallback("t", tracker, family="sd2")


def test_latents_without_a_preview_mapping_warn_once_and_the_loop_runs_on(tmp_path):
    # 5-D video latents have no latent-to-RGB mapping here: each due preview is refused (one warning), every step
    # is still reported and the pipeline ends normally.
    video = np.zeros((1, 16, 5, 8, 8), dtype=np.float32)
    with ProgressTracker(preview_dir=str(tmp_path), preview_every_steps=1) as tracker:
        tracker.create_task_progress_sync("vid", "wan")
        with pytest.warns(ProgressWarning) as shown:
            final = DenoisingLoop(lambda i: video)(10, callback_on_step_end=ProgressCallback("vid", tracker))
        assert final is video
        assert [type(w.message.error).__name__ for w in shown] == ["InvalidArgumentError"]
        assert tracker.get_task_progress_sync("vid")["stages"]["1"]["progress"] == 1.0
        assert not list(tmp_path.glob("*.png"))
        tracker.complete_task_sync("vid")
    with ProgressTracker(preview_dir=str(tmp_path), preview_every_steps=1, strict=True) as tracker:
        tracker.create_task_progress_sync("vid", "wan")
        with pytest.raises(pe.InvalidArgumentError, match="no preview"):
            DenoisingLoop(lambda i: video)(10, callback_on_step_end=ProgressCallback("vid", tracker))


class LoopWithoutStepCount(DenoisingLoop):
    """A pipeline that sets no num_timesteps (older or custom pipelines)."""

    num_timesteps = None


def test_a_pipeline_without_num_timesteps_warns_once_and_runs_on():
    # update_progress_sync(..., None) raised TypeError (and getattr on a pipeline without the attribute
    # AttributeError) inside the denoising loop, ending the user's pipeline.
    with ProgressTracker() as tracker:
        tracker.create_task_progress_sync("nosteps", "sd")
        with pytest.warns(ProgressWarning, match="num_timesteps is None; pass total_steps=") as shown:
            loop = LoopWithoutStepCount(latents_of_step)
            loop(10, callback_on_step_end=ProgressCallback("nosteps", tracker, preview=None))
        assert loop.called == 10 and len(shown) == 1
        assert tracker.get_task_progress_sync("nosteps")["status"] == "queued"
        loop(4, callback_on_step_end=ProgressCallback("nosteps", tracker, total_steps=4, preview=None))
        assert tracker.get_task_progress_sync("nosteps")["stages"]["1"]["progress"] == 1.0

"""progress_engine.integrations.diffusers in real diffusers pipelines (torch on the CPU): a StableDiffusionPipeline
built from tiny, randomly initialised models (no download), run with ProgressCallback as `callback_on_step_end`.
What test_integration_diffusers.py checks against its transcription of the loop, checked here against diffusers
itself: every step reported, the previews taken from the latents diffusers hands the callback, a cancel request
interrupting the pipeline, the VAE preview equal to the pipeline's own output, and Flux's unpacking equal to
FluxPipeline's.

Skipped where torch is not installed: scripts/setup.sh installs a CPU build of torch when pip can find one (PyPI's
x86-64 torch pulls about 2.4 GB of CUDA wheels) and says so when it cannot."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="torch is not installed (scripts/setup.sh installs a CPU build when pip "
                                            "can find one)")
diffusers = pytest.importorskip("diffusers")

from progress_engine import ProgressTracker  # noqa: E402
from progress_engine.integrations.diffusers import (ProgressCallback, latent_family, latents_to_rgb,  # noqa: E402
                                                    unpack_flux_latents)

from test_integration_diffusers import wait_previews  # noqa: E402

STEPS = 20


@pytest.fixture(scope="module")
def pipe():
    """SD 1.x's pipeline with models small enough to run 20 steps in well under a second on one core: 16 x 16
    latents, a 32 x 32 image. No text encoder: the prompt is given as embeddings."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2)
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    scheduler = DDIMScheduler(clip_sample=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def run(pipe, callback, steps=STEPS, **kwargs):
    embeddings = torch.randn(1, 4, 8, generator=torch.Generator().manual_seed(1))
    return pipe(prompt_embeds=embeddings, negative_prompt_embeds=torch.zeros_like(embeddings),
                num_inference_steps=steps, generator=torch.Generator().manual_seed(2), output_type="np",
                callback_on_step_end=callback, **kwargs).images


class Recording(ProgressCallback):
    """The callback, also keeping what diffusers handed it and the task's progress after each step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.latents, self.progress = [], []

    def __call__(self, pipe, step_index, timestep, callback_kwargs):
        self.latents.append(callback_kwargs["latents"].clone())
        out = super().__call__(pipe, step_index, timestep, callback_kwargs)
        task = self.tracker.get_task_progress_sync(self.task_id)
        self.progress.append(task["stages"][str(task["current_stage"])]["progress"])
        return out


def test_every_step_is_reported_and_the_previews_are_of_the_steps_latents(pipe, tmp_path):
    with ProgressTracker(preview_dir=str(tmp_path)) as tracker:
        tracker.create_task_progress_sync("img", "sd15")
        callback = Recording("img", tracker)
        images = run(pipe, callback)
        assert images.shape == (1, 32, 32, 3)
        assert callback.progress == [(i + 1) / STEPS for i in range(STEPS)]
        assert latent_family(callback.latents[0], pipe) == "sd1"
        # Default stages (queue 5 %, processing 85 %): the 25, 50 and 75 % milestones fall on steps 5, 11 and 17.
        wait_previews(tracker, 3)
        for milestone, step in ((25, 5), (50, 11), (75, 17)):
            [png] = tmp_path.glob(f"*_{milestone}.png")
            with Image.open(png) as image:
                assert image.size == (16, 16)
                expected = latents_to_rgb(callback.latents[step - 1], "sd1")
                assert np.array_equal(np.asarray(image.convert("RGB")), expected), milestone
        tracker.complete_task_sync("img")


def test_a_cancel_request_interrupts_the_pipeline(pipe):
    with ProgressTracker(listen="127.0.0.1:0") as tracker:
        tracker.create_task_progress_sync("img", "sd15")

        class PressingCancel(Recording):
            def __call__(self, pipe, step_index, timestep, callback_kwargs):
                if step_index == 4:  # during step 5, someone presses Cancel
                    request = urllib.request.Request(f"{tracker.url}/api/v1/progress/tasks/img/cancel",
                                                     method="POST", data=b'{"reason": "pressed Cancel"}')
                    assert urllib.request.urlopen(request, timeout=5).status == 202
                return super().__call__(pipe, step_index, timestep, callback_kwargs)

        callback = PressingCancel("img", tracker, preview=None)
        run(pipe, callback)
        assert len(callback.latents) == 5 and pipe.interrupt  # diffusers skipped steps 6..20
        task = tracker.get_task_progress_sync("img")
        assert task["stages"]["1"]["progress"] == 5 / STEPS
        assert (task["status"], task["error"], task["cancel_requested"]) == ("cancelled", "pressed Cancel", False)


def test_the_vae_preview_of_the_last_step_is_the_pipelines_image(pipe, tmp_path):
    with ProgressTracker(preview_dir=str(tmp_path), preview_every_steps=STEPS) as tracker:
        tracker.create_task_progress_sync("img", "sd15")
        images = run(pipe, ProgressCallback("img", tracker, preview="vae"))
        wait_previews(tracker, 1)
        [png] = tmp_path.glob("*.png")
        with Image.open(png) as image:
            preview = np.asarray(image.convert("RGB"))
        assert preview.shape == (32, 32, 3)
        assert np.array_equal(preview, np.rint(images[0] * 255.0).astype(np.uint8))
        tracker.complete_task_sync("img")


@pytest.mark.parametrize("height, width", [(32, 48), (64, 64)])
def test_flux_latents_unpack_as_flux_pipeline_unpacks_them(height, width):
    from diffusers import FluxPipeline
    latents = torch.randn(2, 16, height // 8, width // 8, generator=torch.Generator().manual_seed(3))
    packed = FluxPipeline._pack_latents(latents, 2, 16, height // 8, width // 8)
    theirs = FluxPipeline._unpack_latents(packed, height, width, 8).numpy()
    assert np.array_equal(theirs, latents.numpy())
    assert np.array_equal(unpack_flux_latents(packed.numpy(), height, width), theirs)
    assert np.array_equal(latents_to_rgb(packed, height=height, width=width), latents_to_rgb(latents, "flux"))

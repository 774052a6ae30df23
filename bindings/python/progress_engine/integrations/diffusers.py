"""diffusers pipelines that report into ProgressEngine: a `callback_on_step_end`.

    from progress_engine.integrations.diffusers import ProgressCallback

    with ProgressContext(tracker, "img-1", "sdxl", template_category="image_generation"):
        image = pipe(prompt, num_inference_steps=30,
                     callback_on_step_end=ProgressCallback("img-1", tracker)).images[0]

Each denoising step reports step_index + 1 of `pipe.num_timesteps`. When a preview is due, one is made from
the step's latents without the VAE: a linear map of the latent channels to RGB (`latents_to_rgb`, numpy), with
the published factors of each latent family (those ComfyUI's latent previews use: comfy/latent_formats.py):
SD 1.x / 2.x and SDXL (4 channels), SD3 and Flux (16 channels; Flux's packed latents are unpacked first). It
costs 0.07 ms for SDXL's 128 x 128 latents and 1 ms for Flux's at 1024 px on one CPU core, against a VAE
decode of tens to hundreds of milliseconds. The preview is at latent resolution (1/8 of the image).
`preview="vae"` decodes with the pipeline's VAE instead (torch).

A preview is made only when `tracker.preview_due(task_id)` says the engine would take one (its
`preview_milestones` or `preview_every_steps`), so the latents are converted at most that often.

Cancel: when someone asked for the task to be cancelled (`tracker.cancel_requested(task_id)`: REST POST
/api/v1/progress/tasks/{id}/cancel, the WebSocket "cancel" message), the callback cancels the task with the
request's reason and sets `pipe._interrupt = True`, the flag diffusers pipelines check at the top of each
denoising step: the remaining steps are skipped and the pipeline returns what it has (so a runner that goes on
after the pipeline should look at `pipe.interrupt` before it uses the image).

This module imports neither diffusers nor torch nor numpy. The callback and `latents_to_rgb` need numpy
(an ImportError says so); `preview="vae"` needs torch.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Dict, Optional, Tuple

from ..default import get_progress_tracker_sync
from ..errors import InvalidArgumentError, ProgressError
from ..tracker import ProgressTracker

# Latent channel -> (R, G, B) weights and the RGB bias of each family, applied to the latents as the
# pipeline holds them during denoising (scaled, and shifted for SD3 / Flux): ComfyUI's latent_formats.py
# (SD15, SDXL, SD3, Flux), the factors its latent previews use.
LATENT_RGB_FACTORS: Dict[str, Tuple[Tuple[Tuple[float, float, float], ...], Tuple[float, float, float]]] = {
    # SD 1.x and 2.x (one VAE).
    "sd1": (
        ((0.3512, 0.2297, 0.3227),
         (0.3250, 0.4974, 0.2350),
         (-0.2829, 0.1762, 0.2721),
         (-0.2120, -0.2616, -0.7177)),
        (0.0, 0.0, 0.0),
    ),
    "sdxl": (
        ((0.3651, 0.4232, 0.4341),
         (-0.2533, -0.0042, 0.1068),
         (0.1076, 0.1111, -0.0362),
         (-0.3165, -0.2492, -0.2188)),
        (0.1084, -0.0175, -0.0011),
    ),
    "sd3": (
        ((-0.0922, -0.0175, 0.0749),
         (0.0311, 0.0633, 0.0954),
         (0.1994, 0.0927, 0.0458),
         (0.0856, 0.0339, 0.0902),
         (0.0587, 0.0272, -0.0496),
         (-0.0006, 0.1104, 0.0309),
         (0.0978, 0.0306, 0.0427),
         (-0.0042, 0.1038, 0.1358),
         (-0.0194, 0.0020, 0.0669),
         (-0.0488, 0.0130, -0.0268),
         (0.0922, 0.0988, 0.0951),
         (-0.0278, 0.0524, -0.0542),
         (0.0332, 0.0456, 0.0895),
         (-0.0069, -0.0030, -0.0810),
         (-0.0596, -0.0465, -0.0293),
         (-0.1448, -0.1463, -0.1189)),
        (0.2394, 0.2135, 0.1925),
    ),
    "flux": (
        ((-0.0346, 0.0244, 0.0681),
         (0.0034, 0.0210, 0.0687),
         (0.0275, -0.0668, -0.0433),
         (-0.0174, 0.0160, 0.0617),
         (0.0859, 0.0721, 0.0329),
         (0.0004, 0.0383, 0.0115),
         (0.0405, 0.0861, 0.0915),
         (-0.0236, -0.0185, -0.0259),
         (-0.0245, 0.0250, 0.1180),
         (0.1008, 0.0755, -0.0421),
         (-0.0515, 0.0201, 0.0011),
         (0.0428, -0.0012, -0.0036),
         (0.0817, 0.0765, 0.0749),
         (-0.1264, -0.0522, -0.1103),
         (-0.0280, -0.0881, -0.0499),
         (-0.1262, -0.0982, -0.0778)),
        (-0.0329, -0.0718, -0.0851),
    ),
}

def _numpy() -> Any:
    try:
        import numpy
    except ImportError:
        raise ImportError(
            "progress_engine.integrations.diffusers needs numpy for previews: pip install numpy") from None
    return numpy


def _first_image(latents: Any) -> Any:
    """The batch's first image as a float32 numpy array: (C, h, w), or (L, C*4) when packed. A torch tensor is
    sliced before it is copied off the device (bfloat16 has no numpy type: through float32)."""
    np = _numpy()
    if latents.ndim not in (3, 4):
        raise ValueError(f"latents must be (B, C, h, w) or Flux-packed (B, L, C*4), got shape {tuple(latents.shape)}")
    first = latents[0]
    if hasattr(first, "detach"):
        first = first.detach().float().cpu().numpy()
    return np.asarray(first, dtype=np.float32)


def unpack_flux_latents(packed: Any, height: Optional[int] = None, width: Optional[int] = None,
                        vae_scale_factor: int = 8) -> Any:
    """Flux's packed latents (L, C*4) or (B, L, C*4), 2x2 latent patches side by side, as (C, h, w) or
    (B, C, h, w): the numpy form of diffusers' FluxPipeline._unpack_latents. `height` and `width` are the
    image's, in pixels, as passed to the pipeline; without them the image is taken to be square."""
    np = _numpy()
    packed = np.asarray(packed)
    batched = packed.ndim == 3
    if not batched:
        packed = packed[None]
    batch, patches, channels = packed.shape
    if height is None or width is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"{patches} packed latent patches are not a square: pass the image's height and width")
        rows = cols = side
    else:
        rows, cols = int(height) // (vae_scale_factor * 2), int(width) // (vae_scale_factor * 2)
        if rows * cols != patches:
            raise ValueError(f"{height}x{width} gives {rows}x{cols} patches, but the latents hold {patches}")
    out = packed.reshape(batch, rows, cols, channels // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    out = out.reshape(batch, channels // 4, rows * 2, cols * 2)
    return out if batched else out[0]


def latent_family(latents: Any, pipe: Any = None) -> str:
    """The factor table for latents as a pipeline holds them: packed (B, L, C*4) -> "flux"; (B, 16, h, w) ->
    "sd3" ("flux" for a Flux pipeline); (B, 4, h, w) -> "sdxl" for an SDXL pipeline (by class name), else "sd1"."""
    name = type(pipe).__name__ if pipe is not None else ""
    shape = tuple(latents.shape)
    if len(shape) == 3:
        return "flux"
    if len(shape) == 4 and shape[1] == 16:
        return "flux" if "Flux" in name else "sd3"
    if len(shape) == 4 and shape[1] == 4:
        return "sdxl" if "XL" in name else "sd1"
    raise ValueError(f"no latent-to-RGB factors for latents of shape {shape}: pass family= or preview='vae'")


def latents_to_rgb(latents: Any, family: Optional[str] = None, *, height: Optional[int] = None,
                   width: Optional[int] = None) -> Any:
    """The first image of `latents` as an h x w x 3 uint8 RGB array, without the VAE: each pixel's RGB is its
    latent channel vector times the family's factors plus its bias, mapped from -1..1 to 0..255 (rounded,
    clipped). `latents`: numpy or torch, as the pipeline holds them: (B, C, h, w), or Flux-packed (B, L, C*4)
    (then `height` / `width`, the image's in pixels, unless it is square). `family`: "sd1" (SD 1.x / 2.x), "sdxl",
    "sd3", "flux"; None: guessed from the shape (see latent_family)."""
    np = _numpy()
    family = family or latent_family(latents)
    if family not in LATENT_RGB_FACTORS:
        raise ValueError(f"unknown latent family {family!r}; one of {', '.join(LATENT_RGB_FACTORS)}")
    x = _first_image(latents)
    if x.ndim == 2:  # packed Flux
        x = unpack_flux_latents(x, height, width)
    weights, bias = LATENT_RGB_FACTORS[family]
    if x.shape[0] != len(weights):
        raise ValueError(f"{family} latents have {len(weights)} channels, these have {x.shape[0]} (shape {x.shape})")
    channels, h, w = x.shape
    # float32 (C x 3)^T times (C x pixels): about 50 us for a 128 x 128 latent (einsum in float64: 550 us).
    rgb = (np.asarray(weights, dtype=np.float32).T @ x.reshape(channels, h * w)).T.reshape(h, w, 3)
    rgb += np.asarray(bias, dtype=np.float32)
    return np.clip(np.rint((rgb + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ImportError("preview='vae' needs torch and diffusers: pip install torch diffusers") from None
    return torch


def vae_decode(pipe: Any, latents: Any, *, height: Optional[int] = None, width: Optional[int] = None) -> Any:
    """The first image of `latents` decoded by `pipe.vae` as the pipeline decodes its output (unpacked for Flux,
    unscaled by the VAE's scaling_factor, shift_factor or latents_mean / latents_std), as an H x W x 3 uint8
    array. Needs torch. An fp16 VAE that the pipeline upcasts for its output (force_upcast) is used as it is."""
    torch = _torch()
    np = _numpy()
    vae = pipe.vae
    x = latents[:1]
    if x.ndim == 3:  # packed Flux latents
        side = math.isqrt(x.shape[1]) * 2 * pipe.vae_scale_factor
        x = pipe._unpack_latents(x, height or side, width or side, pipe.vae_scale_factor)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # SDXL-style per-channel statistics
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(x.device, x.dtype)
        std = torch.tensor(std).view(1, -1, 1, 1).to(x.device, x.dtype)
        x = x * std / config.scaling_factor + mean
    else:
        x = x / config.scaling_factor + (getattr(config, "shift_factor", None) or 0.0)
    with torch.no_grad():
        image = vae.decode(x.to(vae.dtype), return_dict=False)[0]
    image = pipe.image_processor.postprocess(image, output_type="np")[0]  # H x W x 3 floats in 0..1
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


class ProgressCallback:
    """A diffusers `callback_on_step_end` (`pipe(..., callback_on_step_end=ProgressCallback(task_id, tracker))`)
    that reports each denoising step of an existing task and offers a preview when one is due.

    - `tracker`: None for the process's default tracker (get_progress_tracker_sync()).
    - `total_steps`: None for `pipe.num_timesteps` (the loop's length, set by the pipeline before it).
    - `preview`: "latents" (default, the linear latent-to-RGB map), "vae" (decode with pipe.vae), or None.
    - `family`: the latent-to-RGB table ("sd1", "sdxl", "sd3", "flux"); None guesses from the latents.
    - `height`, `width`: the image size passed to the pipeline, for Flux's packed latents when not square.

    Returns `callback_kwargs` unchanged. `tensor_inputs` (["latents"]) lets MultiPipelineCallbacks ask for
    the latents, which pipelines pass by default."""

    tensor_inputs = ["latents"]

    def __init__(self, task_id: str, tracker: Optional[ProgressTracker] = None, *, total_steps: Optional[int] = None,
                 preview: Optional[str] = "latents", family: Optional[str] = None, height: Optional[int] = None,
                 width: Optional[int] = None) -> None:
        if preview not in ("latents", "vae", None):
            raise ValueError(f"preview must be 'latents', 'vae' or None, not {preview!r}")
        if family is not None and family not in LATENT_RGB_FACTORS:
            raise ValueError(f"unknown latent family {family!r}; one of {', '.join(LATENT_RGB_FACTORS)}")
        if preview is not None:  # say now, not at the first preview due, what is missing
            _numpy()
        if preview == "vae":
            _torch()
        self.task_id = task_id
        self.tracker = tracker if tracker is not None else get_progress_tracker_sync()
        self.total_steps = total_steps
        self.preview = preview
        self.family = family
        self.height, self.width = height, width

    def __call__(self, pipe: Any, step_index: int, timestep: Any, callback_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        tracker, task_id = self.tracker, self.task_id
        total = self.total_steps or getattr(pipe, "num_timesteps", None)
        try:
            total = operator.index(total)
        except TypeError:
            # A pipeline that sets no num_timesteps: no step count to report, and the denoising loop goes on.
            tracker._refused(task_id, InvalidArgumentError(
                f"no step count: the pipeline's num_timesteps is {total!r}; pass total_steps= to ProgressCallback"))
        else:
            tracker.update_progress_sync(task_id, step_index + 1, total)
        latents = callback_kwargs.get("latents")
        if self.preview is not None and latents is not None and tracker.preview_due(task_id):
            try:
                if self.preview == "vae":
                    image = vae_decode(pipe, latents, height=self.height, width=self.width)
                else:
                    image = latents_to_rgb(latents, self.family or latent_family(latents, pipe),
                                           height=self.height, width=self.width)
            except Exception as error:  # latents this module cannot turn into an image: no preview, the loop goes on
                tracker._refused(task_id, InvalidArgumentError(f"no preview of these latents: {error}"))
            else:
                tracker.update_preview_sync(task_id, image)
        if tracker.cancel_requested(task_id):
            reason = tracker.get_task_progress_sync(task_id).get("cancel_reason")
            try:
                tracker.cancel_task_sync(task_id, reason or "cancelled on request")
            except ProgressError as error:
                tracker._refused(task_id, error)
            pipe._interrupt = True
        return callback_kwargs

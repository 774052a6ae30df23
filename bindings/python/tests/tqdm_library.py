"""Stands for a third-party library (diffusers, transformers, datasets): it takes tqdm's classes at its own
import time, in the three usual spellings, and creates and drives its bars inside its functions, so the
tests that call it never hold a bar. `on_step` is the library's callback (as diffusers' callback_on_step_end),
where a test looks at the task while the bar is open."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import tqdm as tqdm_package
from tqdm.auto import tqdm
from tqdm.std import tqdm as std_tqdm


def denoise(steps: int, desc: str = "Denoising", on_step: Optional[Callable[[int], None]] = None, **bar_options):
    """diffusers' loop: a tqdm.auto bar of `steps`, one update() per step."""
    with tqdm(total=steps, desc=desc, **bar_options) as bar:
        for step in range(1, steps + 1):
            bar.update()
            if on_step is not None:
                on_step(step)
    return steps


def train(epochs: int, batches: int, on_batch: Optional[Callable[[int, int], None]] = None,
          on_epoch: Optional[Callable[[int], None]] = None):
    """Nested bars: epochs on a tqdm.tqdm bar, each epoch's batches on a tqdm.std.tqdm bar whose
    description is set after it opened."""
    epochs_bar = tqdm_package.tqdm(total=epochs, desc="epochs")
    for epoch in range(1, epochs + 1):
        batches_bar = std_tqdm(total=batches, leave=False)
        batches_bar.set_description(f"epoch {epoch}")
        for batch in range(1, batches + 1):
            batches_bar.update()
            if on_batch is not None:
                on_batch(epoch, batch)
        batches_bar.close()
        epochs_bar.update()
        if on_epoch is not None:
            on_epoch(epoch)
    epochs_bar.close()


def read(records: Iterable, desc: str = "Reading") -> int:
    """A bar without a total: a generator's items, counted by iterating the bar."""
    return sum(1 for _ in tqdm((r for r in records), desc=desc))

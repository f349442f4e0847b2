"""Samples from a generative model's prior as one grid image: at validation epoch end (every N epochs)
and at the end of `predict`. The same noise every time, so the grids of successive epochs compare."""

import torch
from lightning.pytorch import Callback
from torchvision.utils import make_grid
from typing_extensions import override

from callbacks import media
from callbacks.eval_mode import eval_mode
from callbacks.reconstruction_grid import for_display


class SampleGrid(Callback):
    """`sample(n)` of the model (DESIGN.md), drawn with a fixed seed in a forked RNG so the training
    run's own random stream is untouched. Models without `sample` are skipped. Files go to
    `<run>/figures/samples/epoch<NNN>.png` and `<run>/predict/figures/samples/predict.png`, and to the
    loggers through callbacks/media.py.

    Args:
        num_samples: How many samples.
        every_n_epochs: Draw at the end of every n-th validation epoch.
        per_row: Samples per row.
        seed: Seed of the noise.
    """

    key = "samples"

    def __init__(self, num_samples: int = 64, every_n_epochs: int = 1, per_row: int = 8, seed: int = 0) -> None:
        self.num_samples, self.every_n_epochs, self.per_row, self.seed = num_samples, every_n_epochs, per_row, seed

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._draw(trainer, pl_module, tag=None)

    @override
    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._draw(trainer, pl_module, tag="predict")

    def _draw(self, trainer, pl_module, tag: str | None) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "sample"):
            return
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), eval_mode(pl_module):
            torch.manual_seed(self.seed)
            samples = pl_module.sample(self.num_samples)
        grid = make_grid(for_display(trainer, samples.float()), nrow=self.per_row, padding=2, pad_value=1.0)
        media.log_image(trainer, self.key, grid, tag=tag)

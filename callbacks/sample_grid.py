"""Samples from a generative model's prior as one grid image: at validation epoch end (every N epochs,
and after the last) and at the end of `predict`. The same noise every time, so the grids of successive
epochs compare."""

import torch
from lightning.pytorch import LightningModule, Trainer
from torchvision.utils import make_grid
from typing_extensions import override

from callbacks.figure import FigureCallback
from cnnlab.errors import CnnlabError
from cnnlab.protocol import GenerativeModel


class SampleGrid(FigureCallback):
    """`sample(n)` of the model (protocol: GenerativeModel), drawn with a fixed seed in a forked RNG
    so the training run's own random stream is untouched. Files go to
    `<run>/figures/samples/epoch<NNN>.png` (epochs from 0, as the progress bar counts them) and
    `<run>/evaluations/<time>-predict/figures/samples/predict.png`, and to the loggers.

    Args:
        num_samples: How many samples.
        every_n_epochs: Draw at the end of every n-th validation epoch (and the last).
        per_row: Samples per row.
        seed: Seed of the noise.
    """

    key = "samples"
    draws_at_predict = True  # a `predict` with this callback has something to send to the loggers
    needs_data = False  # draws what the model was fed or made, in [0, 1] through the DataModule's denormalize
    requires = (GenerativeModel,)
    what = "a generative model with a prior to sample from"

    def __init__(self, num_samples: int = 64, every_n_epochs: int = 1, per_row: int = 8, seed: int = 0) -> None:
        super().__init__(every_n_epochs)
        if num_samples < 1 or per_row < 1:
            raise CnnlabError(f"SampleGrid got num_samples={num_samples}, per_row={per_row}; both must be >= 1.")
        self.num_samples, self.per_row, self.seed = num_samples, per_row, seed

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and (not self.fitting(trainer) or self.due(trainer)):
            self._draw(trainer, pl_module, tag=None if self.fitting(trainer) else "validate")

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, tag="predict")

    def _draw(self, trainer: Trainer, pl_module: LightningModule, tag: str | None) -> None:
        if not self.draws(trainer):
            return
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            with self.evaluating(trainer, pl_module):
                samples = pl_module.sample(self.num_samples)
        grid = make_grid(self.display(trainer, samples), nrow=self.per_row, padding=2, pad_value=1.0)
        self.draw_image(trainer, self.key, grid, tag=tag)

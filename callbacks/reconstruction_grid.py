"""Inputs next to their reconstructions: a fixed set of validation images at validation epoch end (every
N epochs, and after the last), and the first predict images at the end of `predict`, as one grid image
per occasion."""

import torch
from lightning.pytorch import LightningModule, Trainer
from torchvision.utils import make_grid
from typing_extensions import override

from callbacks.figure import FigureCallback
from cnnlab.errors import CnnlabError
from cnnlab.protocol import LatentModel


class ReconstructionGrid(FigureCallback):
    """Rows of inputs, each followed by a row of their reconstructions `decode(encode(x))`
    (protocol: LatentModel).

    The images are the first `num_images` of the first validation batch (validation is never
    shuffled, so the same images every epoch) and of the first predict batch, as the model saw them.
    Files go to `<run>/figures/reconstructions/epoch<NNN>.png` (epochs from 0, as the progress bar) and
    `<run>/evaluations/<time>-predict/figures/reconstructions/predict.png`, and to the loggers.

    Args:
        num_images: How many inputs to show.
        every_n_epochs: Draw at the end of every n-th validation epoch (and the last).
        per_row: Images per row.
    """

    key = "reconstructions"
    draws_at_predict = True  # a `predict` with this callback has something to send to the loggers
    needs_data = False  # draws what the model was fed or made, in [0, 1] through the DataModule's denormalize
    requires = (LatentModel,)
    what = "a model that encodes and decodes"

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1, per_row: int = 8) -> None:
        super().__init__(every_n_epochs)
        if num_images < 1 or per_row < 1:
            raise CnnlabError(f"ReconstructionGrid got num_images={num_images}, per_row={per_row}; both must be >= 1.")
        self.num_images, self.per_row = num_images, per_row
        self._images: dict[str, torch.Tensor] = {}

    def _keep(self, stage: str, batch, batch_idx: int, dataloader_idx: int) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and stage not in self._images:
            self._images[stage] = batch[0][: self.num_images].detach().clone()

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._keep("val", batch, batch_idx, dataloader_idx)

    @override
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        self._keep("predict", batch, batch_idx, dataloader_idx)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and (not self.fitting(trainer) or self.due(trainer)):
            self._draw(trainer, pl_module, "val", tag=None if self.fitting(trainer) else "validate")

    @override
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._draw(trainer, pl_module, "predict", tag="predict")
        self._images.pop("predict", None)

    def _draw(self, trainer: Trainer, pl_module: LightningModule, stage: str, tag: str | None) -> None:
        images = self._images.get(stage)
        if images is None or not self.draws(trainer):
            return
        with self.evaluating(trainer, pl_module):
            images = images.to(pl_module.device)
            reconstructions = pl_module.decode(pl_module.encode(images))
        inputs, outputs = self.display(trainer, images), self.display(trainer, reconstructions)
        pairs = zip(inputs.split(self.per_row), outputs.split(self.per_row), strict=True)
        rows = [part for pair in pairs for part in pair]  # a row of inputs, then their reconstructions
        grid = make_grid(torch.cat(rows), nrow=self.per_row, padding=2, pad_value=1.0)
        self.draw_image(trainer, self.key, grid, tag=tag)

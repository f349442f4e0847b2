"""Inputs next to their reconstructions: a fixed set of validation images at validation epoch end (every
N epochs), and the first predict images at the end of `predict`, as one grid image per occasion."""

import torch
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torchvision.utils import make_grid
from typing_extensions import override

from callbacks import media
from callbacks.eval_mode import eval_mode


def for_display(trainer, images: torch.Tensor) -> torch.Tensor:
    """Model-space images -> [0, 1] through the DataModule's `denormalize` where it has one."""
    denormalize = getattr(trainer.datamodule, "denormalize", None)
    return denormalize(images) if denormalize is not None else images.clamp(0, 1)


class ReconstructionGrid(Callback):
    """Rows of inputs, each followed by a row of their reconstructions `decode(encode(x))`.

    The images are the first `num_images` of the first validation batch (validation is never
    shuffled, so the same images every epoch) and of the first predict batch. Files go to
    `<run>/figures/reconstructions/epoch<NNN>.png` and `<run>/predict/figures/reconstructions/predict.png`,
    and to the loggers through callbacks/media.py. Models need `encode` and `decode` (DESIGN.md).

    Args:
        num_images: How many inputs to show.
        every_n_epochs: Draw at the end of every n-th validation epoch.
        per_row: Images per row.
    """

    key = "reconstructions"

    def __init__(self, num_images: int = 16, every_n_epochs: int = 1, per_row: int = 8) -> None:
        self.num_images, self.every_n_epochs, self.per_row = num_images, every_n_epochs, per_row
        self._images: dict[str, torch.Tensor] = {}
        self._warned = False

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
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._draw(trainer, pl_module, "val", tag=None)

    @override
    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self._draw(trainer, pl_module, "predict", tag="predict")
        self._images.pop("predict", None)

    def _draw(self, trainer, pl_module, stage: str, tag: str | None) -> None:
        images = self._images.get(stage)
        if images is None or not trainer.is_global_zero:
            return
        if not (hasattr(pl_module, "encode") and hasattr(pl_module, "decode")):
            if not self._warned:
                rank_zero_warn(f"ReconstructionGrid: {type(pl_module).__name__} has no encode/decode; no grid drawn.")
                self._warned = True
            return
        with eval_mode(pl_module):
            images = images.to(pl_module.device)
            reconstructions = pl_module.decode(pl_module.encode(images))
        inputs, outputs = for_display(trainer, images.float()), for_display(trainer, reconstructions.float())
        pairs = zip(inputs.split(self.per_row), outputs.split(self.per_row), strict=True)
        rows = [part for pair in pairs for part in pair]  # a row of inputs, then their reconstructions
        grid = make_grid(torch.cat(rows), nrow=self.per_row, padding=2, pad_value=1.0)
        media.log_image(trainer, self.key, grid, tag=tag)

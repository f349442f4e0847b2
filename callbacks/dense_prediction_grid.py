"""Figures of per-pixel predictions on a fixed set of images: input | predicted mask | true mask with
a colour per class (segmentation), or noisy | denoised | clean with each image's PSNR (denoising).

It draws what the model's `predict_step` returns (protocol: DensePredictor): a `mask` (and `target`)
or a `denoised` image, for the first images of the validation split at the end of each validation
epoch (every N epochs, and after the last) and for the first images of `predict`.
"""

import torch
from lightning.pytorch import LightningModule, Trainer
from typing_extensions import override

from callbacks.figure import FigureCallback
from callbacks.mask_palette import palette
from callbacks.media import pyplot
from cnnlab.errors import CnnlabError
from cnnlab.protocol import DensePredictor


class DensePredictionGrid(FigureCallback):
    """Args:
    num_samples: Images shown: the first ones of the validation (or predict) split, the same every time.
    every_n_epochs: Draw at every n-th validation epoch (and the last).
    """

    requires = (DensePredictor,)
    draws_at_predict = True  # a `predict` with this callback has something to send to the loggers
    needs_data = False  # class names where the DataModule has them, else the class indices
    what = "a per-pixel model (segmentation or denoising)"

    def __init__(self, num_samples: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__(every_n_epochs)
        if num_samples < 1:
            raise CnnlabError(f"DensePredictionGrid num_samples must be at least 1, got {num_samples}.")
        self.num_samples = num_samples
        self._batches: dict[str, list[tuple[torch.Tensor, ...]]] = {}

    def _keep(self, stage: str, *tensors: torch.Tensor) -> None:
        """Collect the first num_samples items of the stage's (unshuffled) batches, as the model saw them."""
        kept = self._batches.setdefault(stage, [])
        have = sum(len(part[0]) for part in kept)
        if have < self.num_samples:
            kept.append(tuple(t[: self.num_samples - have].detach() for t in tensors))

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches.pop("val", None)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if dataloader_idx == 0 and self.draws(trainer):
            self._keep("val", *batch)

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.draws(trainer) or not self._batches.get("val"):
            return
        if self.fitting(trainer) and not self.due(trainer):
            return
        inputs, targets = (torch.cat(items) for items in zip(*self._batches["val"], strict=True))
        with self.evaluating(trainer, pl_module):
            output = pl_module.predict_step((inputs, targets), 0)
        self._draw(
            trainer, pl_module, "val", inputs, targets, output, tag=None if self.fitting(trainer) else "validate"
        )

    @override
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._batches.pop("predict", None)

    @override
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0):
        if dataloader_idx == 0 and self.draws(trainer) and isinstance(outputs, dict):
            keys = sorted(k for k, v in outputs.items() if isinstance(v, torch.Tensor))
            self._keep("predict", *batch, *(outputs[k] for k in keys))
            self._predict_keys = keys

    @override
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.draws(trainer) and self._batches.get("predict"):
            inputs, targets, *values = (torch.cat(items) for items in zip(*self._batches["predict"], strict=True))
            output = dict(zip(self._predict_keys, values, strict=True))
            self._draw(trainer, pl_module, "predict", inputs, targets, output, tag="predict")

    def _draw(self, trainer, pl_module, stage: str, inputs, targets, output, tag: str | None) -> None:
        if pl_module.task == "segmentation":
            figure = self._segmentation_figure(
                self.display(trainer, inputs), output["mask"], targets, pl_module.num_classes, self.class_names(trainer)
            )
        else:
            figure = self._denoise_figure(inputs.float().cpu(), output, targets.float().cpu())
        self.draw_figure(trainer, f"{stage}/predictions", figure, tag=tag)

    @staticmethod
    def _segmentation_figure(images, predicted, true, num_classes: int, names: list[str]):
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        plt = pyplot()
        if len(names) != num_classes:
            names = [str(k) for k in range(num_classes)]
        colours = palette(num_classes) / 255
        cmap = ListedColormap(colours)
        rows = (("input", images), ("predicted", predicted), ("true", true))
        figure, axes = plt.subplots(3, len(images), figsize=(1.3 * len(images) + 1.1, 4.0), squeeze=False)
        for r, (title, tensors) in enumerate(rows):
            for c, item in enumerate(tensors):
                axis = axes[r, c]
                if r == 0:
                    _show_image(axis, item)
                else:
                    axis.imshow(item.cpu().numpy(), cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
                axis.set_xticks([]), axis.set_yticks([])
            axes[r, 0].set_ylabel(title)
        right = 1 - 1.1 / figure.get_figwidth()  # room for the legend
        figure.subplots_adjust(left=0.04, right=right, wspace=0.05, hspace=0.08)
        handles = [Patch(color=colours[k], label=names[k]) for k in range(num_classes)]
        figure.legend(handles=handles, loc="center left", bbox_to_anchor=(right, 0.5), fontsize=7, frameon=False)
        return figure

    @staticmethod
    def _denoise_figure(noisy, output, clean):
        plt = pyplot()
        denoised = output["denoised"].float() / 255
        rows = (
            ("noisy", noisy, output.get("psnr_noisy")),
            ("denoised", denoised, output.get("psnr")),
            ("clean", clean, None),
        )
        figure, axes = plt.subplots(3, len(noisy), figsize=(1.3 * len(noisy), 4.4), squeeze=False)
        for r, (title, images, psnr) in enumerate(rows):
            for c, image in enumerate(images):
                axis = axes[r, c]
                _show_image(axis, image)
                axis.set_xticks([]), axis.set_yticks([])
                if psnr is not None:
                    axis.set_xlabel(f"{float(psnr[c]):.1f} dB", fontsize=7, labelpad=1)
            axes[r, 0].set_ylabel(title)
        figure.subplots_adjust(left=0.04, right=0.99, wspace=0.05, hspace=0.25)
        return figure


def _show_image(axis, image: torch.Tensor) -> None:
    """A [C, H, W] image in [0, 1]: grey for one channel, colour for three."""
    pixels = image.detach().float().clamp(0, 1).cpu()
    if pixels.shape[0] == 1:
        axis.imshow(pixels[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        axis.imshow(pixels.permute(1, 2, 0).numpy(), interpolation="nearest")

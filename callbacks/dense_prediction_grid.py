"""Figures of per-pixel predictions on a fixed set of images: input | predicted mask | true mask with
a colour per class (segmentation), or noisy | denoised | clean with each image's PSNR (denoising).

It draws what the model's `predict_step` returns for a batch: a `mask` (and `target`) or a
`denoised` image, at the end of each validation epoch and of `predict`.
"""

import torch
from lightning.pytorch import Callback
from typing_extensions import override

from callbacks import media
from callbacks.mask_palette import palette


class DensePredictionGrid(Callback):
    """Args:
    num_samples: Images shown: the first ones of the validation (or predict) split, the same every time.
    every_n_epochs: Draw at every n-th validation epoch.
    """

    def __init__(self, num_samples: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs
        self._batches: dict[str, tuple[torch.Tensor, ...]] = {}

    @override
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._draw(trainer, pl_module, "val", trainer.val_dataloaders, tag=None)

    @override
    def on_predict_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._draw(trainer, pl_module, "predict", trainer.predict_dataloaders, tag="predict")

    def _fixed_batch(self, stage: str, loaders) -> tuple[torch.Tensor, ...] | None:
        """The first num_samples items of the (unshuffled) loader, as the loader gives them; kept."""
        if stage not in self._batches:
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            if loader is None:
                return None
            parts, count = [], 0
            for batch in loader:
                parts.append(batch)
                count += len(batch[0])
                if count >= self.num_samples:
                    break
            if not parts:
                return None
            self._batches[stage] = tuple(torch.cat(items)[: self.num_samples] for items in zip(*parts, strict=True))
        return self._batches[stage]

    def _draw(self, trainer, pl_module, stage: str, loaders, tag: str | None) -> None:
        batch = self._fixed_batch(stage, loaders)
        if batch is None:
            return
        # The same way to the model as any batch: to its device, then the DataModule's transforms
        # (normalisation; for denoising the noise, fixed per image outside training).
        batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
        datamodule = trainer.datamodule
        hook = datamodule.on_after_batch_transfer if datamodule is not None else pl_module.on_after_batch_transfer
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode():
                batch = hook(batch, 0)
                output = pl_module.predict_step(batch, 0)
        finally:
            pl_module.train(was_training)
        denormalize = getattr(datamodule, "denormalize", lambda x: x.clamp(0, 1))
        inputs, targets = batch
        if "mask" in output:
            figure = self._segmentation_figure(
                denormalize(inputs.float()), output["mask"], targets, pl_module, datamodule
            )
        elif "denoised" in output:
            figure = self._denoise_figure(inputs.float(), output, targets.float())
        else:
            return
        media.log_figure(trainer, f"{stage}/predictions", figure, tag=tag)

    @staticmethod
    def _segmentation_figure(images, predicted, true, pl_module, datamodule):
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        num_classes = int(pl_module.hparams.get("num_classes") or int(max(predicted.max(), true.max())) + 1)
        names = list(getattr(datamodule, "class_names", ()) or ())
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
        import matplotlib.pyplot as plt

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

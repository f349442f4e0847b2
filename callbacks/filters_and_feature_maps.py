"""FilterAndFeatureMaps: the CNN workshop's first two exercises as figures of a run. Sobel
operators and random kernels applied to a few input images, with the arithmetic of the output
shape; then the first conv layer's learned kernels and feature maps beside the Sobel responses.

"The first conv layer" is the one the model names (protocol: FeatureMaps, `feature_layer()`); its
input and output are caught by a forward hook while the model computes `per_sample_loss` on the
images, so the callback needs no knowledge of the model beyond the protocol.
"""

import copy

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from callbacks.figure import FigureCallback, fixed_subset
from callbacks.mosaic import Mosaic, colorize
from cnnlab.errors import CnnlabError
from cnnlab.protocol import FeatureMaps, PerSampleLoss
from networks.kernels import SOBEL_X, SOBEL_Y, apply_kernels, conv_output_size, random_kernels, sobel


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    """The layer's attribute path in the model, for the figure's title (not to find it)."""
    return next((name for name, module in model.named_modules() if module is layer), type(layer).__name__)


def shape_text(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def output_formula(size: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> str:
    """'⌊(28 + 2·1 - 3)/1⌋ + 1 = 28', the arithmetic a reader can check."""
    span = f"{dilation}·({kernel} - 1) - 1" if dilation > 1 else f"{kernel}"
    out = conv_output_size(size, kernel, stride, padding, dilation)
    return f"⌊({size} + 2·{padding} - {span})/{stride}⌋ + 1 = {out}"


class FilterAndFeatureMaps(FigureCallback):
    """Sobel and random-kernel figures once per run, learned kernels and feature maps as training goes.

    Figures (keys): `filters/sobel` (Gx, Gy, magnitude, direction per image), `filters/random_kernels`
    (random kernels under each stride/padding setting, outputs drawn to scale), `filters/first_conv`
    (before training, every n epochs, and at validate/test: the first Conv2d's kernels and feature
    maps beside the Sobel kernels and responses, with input and output shapes). Protocol:
    PerSampleLoss and FeatureMaps; a model whose `feature_layer()` is None (the MLP) gets the Sobel and
    random-kernel figures only.

    Args:
        num_images: Validation (or test) images shown, one class after another, chosen once.
        num_random_kernels: Random kernels in `filters/random_kernels`.
        kernel_size: Size of the random kernels.
        conv_settings: [stride, padding] pairs the random kernels are applied with.
        max_filters: Learned kernels (and their feature maps) shown.
        every_n_epochs: Draw `filters/first_conv` after every n-th training epoch (and the last).
        seed: Chooses the images and the random kernels.
    """

    requires = (PerSampleLoss, FeatureMaps)
    what = "a model that names its first convolution (feature_layer)"

    def __init__(
        self,
        num_images: int = 4,
        num_random_kernels: int = 4,
        kernel_size: int = 5,
        conv_settings: list[tuple[int, int]] | None = None,
        max_filters: int = 8,
        every_n_epochs: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs)
        conv_settings = [(1, 0), (1, 2), (2, 2)] if conv_settings is None else [tuple(s) for s in conv_settings]
        if min(num_images, num_random_kernels, kernel_size, max_filters) < 1:
            raise CnnlabError(
                f"FilterAndFeatureMaps got num_images={num_images}, num_random_kernels={num_random_kernels}, "
                f"kernel_size={kernel_size}, max_filters={max_filters}; each must be at least 1."
            )
        if not conv_settings or any(len(s) != 2 or s[0] < 1 or s[1] < 0 for s in conv_settings):
            raise CnnlabError(
                f"FilterAndFeatureMaps conv_settings must be [stride, padding] pairs with stride >= 1 and "
                f"padding >= 0, e.g. [[1, 0], [1, 2], [2, 2]]; got {conv_settings}."
            )
        self.num_images, self.num_random_kernels, self.kernel_size = num_images, num_random_kernels, kernel_size
        self.conv_settings, self.max_filters, self.seed = conv_settings, max_filters, seed
        self._intro_done = False
        self._said_no_conv = False

    # -- when ------------------------------------------------------------------------------------

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if pl_module.feature_layer() is None:
            self._say_no_conv(pl_module)  # before the progress bar, not in the middle of it

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Drawn at the end of the first epoch (FigureCallback.later): the intro needs no model, and
        # the untrained filters are caught now, before the first step changes them.
        if self.draws(trainer):
            self.later(lambda: self.intro(trainer, "val"))
            if self.fresh_start(trainer):
                result = self.feature_maps(trainer, pl_module, "val")
                self.later(
                    lambda: self.draw_learned(trainer, pl_module, result, "before-training", "before training", 0)
                )

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.due(trainer) and self.draws(trainer):
            self.learned(trainer, pl_module, "val", tag=None, title=self.epoch_title(trainer))

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.fitting(trainer) and self.draws(trainer):
            self.intro(trainer, "val")
            self.learned(trainer, pl_module, "val", tag="validate", title="validate")

    @override
    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.draws(trainer):
            self.intro(trainer, "test")
            self.learned(trainer, pl_module, "test", tag="test", title="test")

    # -- what ------------------------------------------------------------------------------------

    def images(self, trainer: Trainer, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.samples(trainer, split)
        index = fixed_subset(labels, self.num_images, self.seed)
        return images[index], labels[index]

    def intro(self, trainer: Trainer, split: str) -> None:
        """The two exercises that need no model: Sobel, and random kernels under strides/paddings."""
        if self._intro_done:
            return
        self._intro_done = True
        images, _ = self.images(trainer, split)
        shown = self.display(trainer, trainer.datamodule.model_input(images))
        self.draw_figure(trainer, "filters/sobel", sobel_figure(shown), tag="sobel")
        kernels = random_kernels(self.num_random_kernels, self.kernel_size, seed=self.seed)
        figure = random_kernels_figure(shown[0], kernels, self.conv_settings)
        self.draw_figure(trainer, "filters/random_kernels", figure, tag="random-kernels")

    def feature_maps(self, trainer: Trainer, pl_module: LightningModule, split: str):
        """The model's feature layer (name, layer) and what it received and produced for the fixed
        images while the module computed `per_sample_loss`, plus the images for display; None if the
        model names no layer or does not use it."""
        conv = pl_module.feature_layer()
        if conv is None:
            return None
        name = layer_name(pl_module, conv)
        images, labels = self.images(trainer, split)
        caught: dict[str, torch.Tensor] = {}

        def catch(module, inputs, output) -> None:
            caught.setdefault("input", inputs[0].detach().float().cpu())
            caught.setdefault("output", output.detach().float().cpu())

        handle = conv.register_forward_hook(catch)
        try:
            with self.evaluating(trainer, pl_module):
                x = self.model_input(trainer, pl_module, images)
                pl_module.per_sample_loss((x, labels.to(pl_module.device)))
        finally:
            handle.remove()
        if "output" not in caught:
            return None
        # a copy of the layer as it is now: the figure may be drawn after training has changed it
        return name, copy.deepcopy(conv).cpu(), caught["input"], caught["output"], self.display(trainer, x)

    def _say_no_conv(self, pl_module: LightningModule) -> None:
        if not self._said_no_conv:
            self._said_no_conv = True
            rank_zero_info(
                f"FilterAndFeatureMaps: {type(pl_module).__name__} names no convolution to draw (its "
                "feature_layer() is None or per_sample_loss does not use it); drawing the Sobel and "
                "random-kernel figures only."
            )

    def learned(self, trainer: Trainer, pl_module: LightningModule, split: str, tag: str | None, title: str) -> None:
        self.draw_learned(trainer, pl_module, self.feature_maps(trainer, pl_module, split), tag, title)

    def draw_learned(
        self, trainer: Trainer, pl_module: LightningModule, result, tag: str | None, title: str, step: int | None = None
    ) -> None:
        if result is None:
            self._say_no_conv(pl_module)
            return
        name, conv, conv_input, conv_output, shown = result
        figure = first_conv_figure(shown, conv_input, conv_output, conv, name, self.max_filters, title)
        self.draw_figure(trainer, "filters/first_conv", figure, tag=tag, step=step)


# -- figures -------------------------------------------------------------------------------------


def sobel_figure(images: torch.Tensor):
    """Per image: input, Gx, Gy, magnitude, direction (shown only where there is an edge)."""
    response = sobel(images)
    n, c, h, w = images.shape
    mosaic = Mosaic(n, 5, h, w)
    titles = ["input" + (" (grey)" if c > 1 else ""), "Gx (d/dx)", "Gy (d/dy)", "magnitude", "direction"]
    for row in range(n):
        magnitude = response.magnitude[row, 0]
        # The angle of a flat region's noise means nothing: direction only where there is an edge.
        direction = response.direction[row, 0].masked_fill(magnitude < 0.1 * magnitude.max(), float("nan"))
        panels = [
            colorize(images[row]),
            colorize(response.gx[row, 0], "signed"),
            colorize(response.gy[row, 0], "signed"),
            colorize(magnitude, "magnitude"),
            colorize(direction, "angle"),
        ]
        for col, panel in enumerate(panels):
            mosaic.put(row, col, panel, titles[col] if row == 0 else "")
    out = shape_text(response.gx.shape[1:])
    return mosaic.figure(
        "Sobel: Gx = [[-1,0,1],[-2,0,2],[-1,0,1]], Gy = its transpose; magnitude sqrt(Gx^2+Gy^2), direction "
        f"atan2(Gy, Gx)\n3x3 kernels, stride 1, padding 1: {shape_text((c, h, w))} -> {out} per operator, "
        f"H' = {output_formula(h, 3, 1, 1)}",
        inches_per_cell=1.3,
    )


def random_kernels_figure(image: torch.Tensor, kernels: torch.Tensor, settings: list[tuple[int, int]]):
    """One input, each random kernel under each (stride, padding): outputs drawn to scale, so the
    reader sees how the shape follows from kernel, stride and padding."""
    k = kernels.shape[-1]
    _, h, w = image.shape
    outputs = [[apply_kernels(image[None], kernel[None], s, p)[0, 0] for s, p in settings] for kernel in kernels]
    cell_h = max([h] + [o.shape[0] for row in outputs for o in row])
    cell_w = max([w] + [o.shape[1] for row in outputs for o in row])
    mosaic = Mosaic(len(kernels) + 1, len(settings) + 1, cell_h, cell_w, title_px=12)
    mosaic.put(0, 0, colorize(image), f"input {shape_text(image.shape)}")
    for col, (stride, padding) in enumerate(settings, start=1):
        mosaic.note(
            0,
            col,
            f"stride {stride}, padding {padding}\nH' = {output_formula(h, k, stride, padding)}\n"
            f"W' = {output_formula(w, k, stride, padding)}",
        )
    for row, kernel in enumerate(kernels, start=1):
        mosaic.put(row, 0, colorize(kernel, "signed"), f"random kernel {row}", fill=True)
        if k <= 3:
            mosaic.numbers(row, 0, kernel)
        for col, out in enumerate(outputs[row - 1], start=1):
            mosaic.put(row, col, colorize(out, "signed"), f"-> {shape_text(out.shape)}")
    return mosaic.figure(
        f"random {k}x{k} kernels (normal entries, unit norm) on a {shape_text(image.shape)} input, outputs to scale:\n"
        "output size = floor((n + 2*padding - kernel) / stride) + 1",
        inches_per_cell=1.5,
    )


def first_conv_figure(
    images: torch.Tensor,
    conv_input: torch.Tensor,
    feature_maps: torch.Tensor,
    conv: nn.Conv2d,
    name: str,
    max_filters: int,
    title: str,
):
    """Row 0: the Sobel kernels and the first learned kernels; then per image: input, Gx, Gy,
    magnitude and the learned feature maps (the conv's own output, before BN or activation)."""
    nf = min(max_filters, conv.out_channels)
    kernels = conv.weight.detach().float().cpu()
    response = sobel(images)
    n, _, h, w = images.shape
    mosaic = Mosaic(n + 1, 4 + nf, h, w)
    mosaic.note(0, 0, "kernels")
    for col, (label, sobel_kernel) in enumerate((("Sobel Gx", SOBEL_X), ("Sobel Gy", SOBEL_Y)), start=1):
        mosaic.put(0, col, colorize(sobel_kernel, "signed"), label, fill=True)
        mosaic.numbers(0, col, sobel_kernel)
    for f in range(nf):
        kernel = kernels[f]
        panel = colorize(kernel, "rgb-kernel") if kernel.shape[0] == 3 else colorize(kernel.mean(0), "signed")
        mosaic.put(0, 4 + f, panel, f"learned {f}", fill=True)
    for row in range(n):
        panels = [
            colorize(images[row]),
            colorize(response.gx[row, 0], "signed"),
            colorize(response.gy[row, 0], "signed"),
            colorize(response.magnitude[row, 0], "magnitude"),
        ] + [colorize(feature_maps[row, f], "signed") for f in range(nf)]
        labels = ["input", "Gx", "Gy", "|G|"] + [f"map {f}" for f in range(nf)]
        for col, panel in enumerate(panels):
            # A strided conv's smaller maps are stretched to the cell; the title states their size.
            mosaic.put(row + 1, col, panel, labels[col] if row == 0 else "", fill=True)
    kh, kw = conv.kernel_size
    stride, dilation = conv.stride[0], conv.dilation[0]
    padding = conv.padding if isinstance(conv.padding, str) else conv.padding[0]
    arithmetic = ""
    if not isinstance(padding, str):
        arithmetic = f", H' = {output_formula(conv_input.shape[2], kh, stride, padding, dilation)}"
    return mosaic.figure(
        f"{title}: first conv layer '{name}' = Conv2d({conv.in_channels}->{conv.out_channels}, kernel {kh}x{kw}, "
        f"stride {stride}, padding {padding}{f', dilation {dilation}' if dilation > 1 else ''})\n"
        f"{shape_text(conv_input.shape[1:])} -> {shape_text(feature_maps.shape[1:])}{arithmetic}; "
        f"{nf} of {conv.out_channels} kernels and their {shape_text(feature_maps.shape[2:])} maps (before "
        "BN/activation), Sobel beside them",
        inches_per_cell=1.0,
    )

"""LatentInterpolationGIF: walk the latent space between images of chosen classes (a 9 to a 4,
a 1 to a 7), linearly and along the great circle, decode every step, and write an animated GIF
and a still strip."""

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from callbacks.figure import FigureCallback, first_of_class
from callbacks.mosaic import Mosaic, colorize
from cnnlab.errors import CnnlabError
from cnnlab.protocol import LatentModel

Method = Literal["linear", "slerp"]


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points on the straight line from a to b [D] at fractions t [T]: [T, D]."""
    t = t.view(-1, 1).to(a)
    return (1 - t) * a + t * b


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for generative models): along the great
    circle through a and b, so intermediate codes keep the norm a Gaussian prior makes typical
    instead of passing near the origin. Falls back to a straight line for (anti)parallel codes."""
    t = t.view(-1, 1).to(a)
    a64, b64 = a.double(), b.double()
    cos = (a64 @ b64) / (a64.norm() * b64.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-4 or (torch.pi - omega).abs() < 1e-4:
        return lerp(a, b, t)
    t64 = t.double()
    out = (torch.sin((1 - t64) * omega) * a64 + torch.sin(t64 * omega) * b64) / torch.sin(omega)
    return out.to(a.dtype)


INTERPOLATE = {"linear": lerp, "slerp": slerp}


class LatentInterpolationGIF(FigureCallback):
    """Decode interpolations between the codes of validation images of chosen classes.

    One image per class of each pair is chosen once (reproducibly from `seed`). Each frame of
    the GIF shows every pair (rows) with every method (columns) at the same step; the strip shows
    the input images at both ends and all steps in between. Protocol: LatentModel.

    Args:
        pairs: Class pairs [from, to], e.g. [[9, 4], [1, 7]].
        methods: 'linear' and/or 'slerp'.
        steps: Frames from one end to the other, both ends included.
        bounce: Play forwards then backwards (2 * steps - 2 frames), so the loop has no jump.
        fps: GIF frames per second.
        scale: Pixel upscaling of the GIF (nearest neighbour): a 28 px digit is tiny on a slide.
        every_n_epochs: After every n-th training epoch (and after the last).
        seed: Which image of each class is used.
    """

    requires = (LatentModel,)
    what = "a model that encodes and decodes"

    def __init__(
        self,
        pairs: list[tuple[int, int]] | None = None,
        methods: list[Method] | None = None,
        steps: int = 12,
        bounce: bool = True,
        fps: int = 8,
        scale: int = 3,
        every_n_epochs: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_epochs)
        pairs = [(9, 4), (1, 7)] if pairs is None else [tuple(p) for p in pairs]
        methods = ["linear", "slerp"] if methods is None else list(methods)
        if not pairs or any(len(p) != 2 for p in pairs):
            raise CnnlabError(f"LatentInterpolationGIF pairs must be class pairs like [[9, 4], [1, 7]], got {pairs}.")
        if not methods or not set(methods) <= set(INTERPOLATE):
            raise CnnlabError(f"LatentInterpolationGIF methods must be from {sorted(INTERPOLATE)}, got {methods}.")
        if steps < 2 or fps < 1 or scale < 1:
            raise CnnlabError(
                f"LatentInterpolationGIF got steps={steps}, fps={fps}, scale={scale}; expected steps >= 2 and "
                "the others >= 1."
            )
        self.pairs, self.methods, self.steps, self.bounce = pairs, methods, steps, bounce
        self.fps, self.scale, self.seed = fps, scale, seed
        self._skipped_said = False

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        num_classes = trainer.datamodule.num_classes
        bad = [p for p in self.pairs if num_classes and not all(0 <= c < num_classes for c in p)]
        if bad:
            raise CnnlabError(
                f"LatentInterpolationGIF pairs {bad} name classes outside 0..{num_classes - 1} of this dataset. "
                "Choose pairs of class indices, e.g. [[9, 4], [1, 7]]."
            )
        split = {"fit": "val", "test": "test"}.get(stage)
        if split is not None and self.drawing and trainer.is_global_zero:
            self.endpoints(trainer, split)  # names pairs the split cannot serve now, before the progress bar

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.due(trainer) and self.draws(trainer):
            self.draw(trainer, pl_module, "val")

    @override
    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.draws(trainer):
            self.draw(trainer, pl_module, "test", tag="test")

    def endpoints(self, trainer: Trainer, split: str) -> tuple[list[tuple[int, int]], torch.Tensor]:
        """The pairs the split can serve and their two images each, uint8 [P, 2, C, H, W]."""
        stored, labels = self.samples(trainer, split)
        pairs, images, missing = [], [], set()
        for a, b in self.pairs:
            ia, ib = first_of_class(labels, a, self.seed), first_of_class(labels, b, self.seed)
            if ia is None or ib is None:
                missing |= {c for c, i in ((a, ia), (b, ib)) if i is None}
                continue
            pairs.append((a, b))
            images.append(stored[[ia, ib]])
        if missing and not self._skipped_said:
            self._skipped_said = True
            rank_zero_info(
                f"LatentInterpolationGIF: the {split} split has no images of class {sorted(missing)} (normal_classes "
                "restricts it?), so the pairs with them are skipped."
            )
        return pairs, torch.stack(images) if images else torch.empty(0)

    def frames(self, trainer: Trainer, pl_module: LightningModule, split: str):
        """Decoded walks [P, M, steps, C, H, W] in [0, 1], the endpoint inputs [P, 2, C, H, W], the pairs."""
        pairs, images = self.endpoints(trainer, split)
        if not pairs:
            return None
        t = torch.linspace(0, 1, self.steps)
        walks = []
        with self.evaluating(trainer, pl_module):
            x = self.model_input(trainer, pl_module, images.flatten(0, 1))
            codes = pl_module.encode(x).float()
            for p in range(len(pairs)):
                a, b = codes[2 * p], codes[2 * p + 1]
                z = torch.cat([INTERPOLATE[m](a, b, t) for m in self.methods])
                walks.append(self.display(trainer, pl_module.decode(z.to(x.dtype))))
        shown = self.display(trainer, x)
        frames = torch.stack(walks).unflatten(1, (len(self.methods), self.steps))
        return frames, shown.unflatten(0, (len(pairs), 2)), pairs

    def draw(self, trainer: Trainer, pl_module: LightningModule, split: str, tag: str | None = None) -> None:
        result = self.frames(trainer, pl_module, split)
        if result is None:
            return
        frames, inputs, pairs = result
        labels = [f"{self.class_name(trainer, a)}→{self.class_name(trainer, b)}" for a, b in pairs]
        moment = f"{split} split" if tag else self.epoch_title(trainer)  # as the file is named
        self.draw_animation(trainer, "latent/interpolation", self.animation(frames), fps=self.fps, tag=tag)
        self.draw_figure(trainer, "latent/interpolation_strip", self.strip(frames, inputs, labels, moment), tag=tag)

    def animation(self, frames: torch.Tensor) -> torch.Tensor:
        """[P, M, T, C, H, W] -> GIF frames [T', C, H', W']: pairs as rows, methods as columns."""
        from torchvision.utils import make_grid

        m, t = frames.shape[1:3]
        tiles = [make_grid(frames[:, :, step].flatten(0, 1), nrow=m, padding=2, pad_value=0.5) for step in range(t)]
        video = torch.stack(tiles)
        if self.scale > 1:
            video = F.interpolate(video, scale_factor=self.scale, mode="nearest")
        if self.bounce:
            video = torch.cat([video, video.flip(0)[1:-1]])
        return video

    def strip(self, frames: torch.Tensor, inputs: torch.Tensor, pair_names: list[str], moment: str = ""):
        """One row per pair and method: input a | decoded steps | input b."""
        p, m, t, _, h, w = frames.shape
        mosaic = Mosaic(p * m, t + 2, h, w)
        steps = torch.linspace(0, 1, t).tolist()
        for i in range(p):
            for j in range(m):
                row = i * m + j
                first = row == 0
                mosaic.put(row, 0, colorize(inputs[i, 0]), "input" if first else "")
                for step in range(t):
                    mosaic.put(row, step + 1, colorize(frames[i, j, step]), f"t={steps[step]:.2f}" if first else "")
                mosaic.put(row, t + 1, colorize(inputs[i, 1]), "input" if first else "")
                mosaic.row_label(row, f"{pair_names[i]} {self.methods[j]}")
        title = "latent interpolation: input | decoded steps | input" + (f", {moment}" if moment else "")
        return mosaic.figure(title, inches_per_cell=0.8)

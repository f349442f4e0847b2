"""Segmentation scenes made of MNIST digits: 1-4 digits at random positions and scales on a black
canvas, with a per-pixel mask (0 = background, digit class + 1), drawn once from data_seed.

Train and validation scenes are made of training digits (validation from the `val_size` digits
held out of them), test scenes of the official test digits, so no test digit is ever trained on.
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from datamodules.base import ImageDataModule, InMemoryImages
from datamodules.mnist import MNISTDataModule

MNIST_SIDE = 28
CLUTTER_SIDE = 8
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # each split its own random stream of data_seed


@dataclass(frozen=True)
class SceneLayout:
    """Where each digit of a set of scenes goes, in drawing order (later digits drawn over earlier
    ones): arrays of length M, one entry per placed digit."""

    scene: np.ndarray  # which scene
    source: np.ndarray  # index of the digit in the pool
    size: np.ndarray  # side in pixels of the scaled (square) digit
    top: np.ndarray
    left: np.ndarray


def sample_layout(
    rng: np.random.Generator,
    n_scenes: int,
    pool_size: int,
    canvas: int,
    digits: tuple[int, int],
    sizes: tuple[int, int],
) -> SceneLayout:
    """`digits[0]..digits[1]` digits per scene, each drawn from the pool with replacement, scaled to a
    side of `sizes[0]..sizes[1]` pixels and placed wholly inside the canvas."""
    counts = rng.integers(digits[0], digits[1] + 1, size=n_scenes)
    m = int(counts.sum())
    size = rng.integers(sizes[0], sizes[1] + 1, size=m)
    room = canvas - size + 1
    return SceneLayout(
        scene=np.repeat(np.arange(n_scenes), counts),
        source=rng.integers(0, pool_size, size=m),
        size=size,
        top=(rng.random(m) * room).astype(np.int64),
        left=(rng.random(m) * room).astype(np.int64),
    )


def scale_digits(digits: torch.Tensor, sizes: np.ndarray) -> list[np.ndarray]:
    """Each uint8 digit [28, 28] resized to its side (bilinear, antialiased when shrinking), as uint8;
    digits of one size are resized in one call."""
    out: list[np.ndarray] = [np.empty(0, np.uint8)] * len(sizes)
    for side in np.unique(sizes):
        which = np.flatnonzero(sizes == side)
        batch = digits[torch.from_numpy(which)].float().unsqueeze(1)
        if side != MNIST_SIDE:
            batch = F.interpolate(batch, size=(int(side), int(side)), mode="bilinear", antialias=True)
        batch = batch.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
        for j, scaled in zip(which, batch, strict=True):
            out[j] = scaled
    return out


def render_scenes(
    digits: torch.Tensor, labels: torch.Tensor, layout: SceneLayout, n_scenes: int, canvas: int, threshold: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw scenes: (images uint8 [S, canvas, canvas], masks uint8 [S, canvas, canvas]).

    The image is the pixel-wise maximum of the scaled digits (ink on black: overlapping strokes stay
    visible). A digit's mask is every pixel where its scaled image is at least `threshold`, with
    value label + 1; where masks overlap, the digit drawn later wins. So without noise or clutter a
    pixel is foreground exactly where the scene image is at least `threshold`.
    """
    images = np.zeros((n_scenes, canvas, canvas), np.uint8)
    masks = np.zeros((n_scenes, canvas, canvas), np.uint8)
    scaled = scale_digits(digits[torch.from_numpy(layout.source)], layout.size)
    classes = labels[torch.from_numpy(layout.source)].numpy() + 1
    for j, digit in enumerate(scaled):
        rows = slice(layout.top[j], layout.top[j] + layout.size[j])
        cols = slice(layout.left[j], layout.left[j] + layout.size[j])
        region = images[layout.scene[j], rows, cols]
        np.maximum(region, digit, out=region)
        masks[layout.scene[j], rows, cols][digit >= threshold] = classes[j]
    return images, masks


def add_clutter(rng: np.random.Generator, images: np.ndarray, digits: torch.Tensor, per_scene: int) -> None:
    """Scatter `per_scene` unlabelled 8x8 pieces cut from random digits over each scene (in place,
    pixel-wise maximum): ink that is not a whole digit, so the mask cannot be read off brightness."""
    n, canvas = len(images), images.shape[-1]
    m = n * per_scene
    source = rng.integers(0, len(digits), size=m)
    # cut from the digit's middle, where the strokes are
    cut = rng.integers(4, MNIST_SIDE - 4 - CLUTTER_SIDE + 1, size=(m, 2))
    where = rng.integers(0, canvas - CLUTTER_SIDE + 1, size=(m, 2))
    pieces = digits.numpy()
    side = CLUTTER_SIDE
    for j in range(m):
        piece = pieces[source[j], cut[j, 0] : cut[j, 0] + side, cut[j, 1] : cut[j, 1] + side]
        region = images[j // per_scene, where[j, 0] : where[j, 0] + side, where[j, 1] : where[j, 1] + side]
        np.maximum(region, piece, out=region)


class MNISTScenesDataModule(ImageDataModule):
    """Digit scenes for semantic segmentation: batches are (images [B, 1, H, W], masks int64 [B, H, W]).

    Args:
        canvas_size: Side of the square scene in pixels.
        min_digits: Fewest digits in a scene.
        max_digits: Most digits in a scene (they may overlap).
        min_scale: Smallest digit, as a fraction of MNIST's 28 pixels (0.75 -> 21 px).
        max_scale: Largest digit (1.25 -> 35 px); must fit the canvas.
        mask_threshold: A digit's mask is where its scaled image is at least this (0-255).
        train_scenes: Scenes made of the training digits.
        val_scenes: Scenes made of the `val_size` held-out training digits.
        test_scenes: Scenes made of the official test digits.
        clutter: Unlabelled 8x8 digit fragments scattered over each scene (0 = none).
        scene_noise: Std of Gaussian noise baked into the scenes, in [0, 1] units (masks stay clean).
        (the rest: see ImageDataModule; max_train_samples / max_eval_samples cap the scene counts,
        `augment` has no effect: each scene is drawn once, and more scenes is the way to variety;
        normalize true maps pixels to [-1, 1], as a scene's statistics depend on these settings)
    """

    name = "MNIST scenes"
    num_classes = 11
    class_names = ("background", *(str(d) for d in range(10)))
    mean = (0.5,)
    std = (0.5,)

    def __init__(
        self,
        *args,
        canvas_size: int = 64,
        min_digits: int = 1,
        max_digits: int = 4,
        min_scale: float = 0.75,
        max_scale: float = 1.25,
        mask_threshold: int = 128,
        train_scenes: int = 10000,
        val_scenes: int = 1000,
        test_scenes: int = 2000,
        clutter: int = 0,
        scene_noise: float = 0.0,
        normalize: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, normalize=normalize, **kwargs)
        self.sizes = (round(MNIST_SIDE * min_scale), round(MNIST_SIDE * max_scale))
        problems = []
        if not 1 <= min_digits <= max_digits:
            problems.append(f"min_digits={min_digits}, max_digits={max_digits} (need 1 <= min <= max)")
        if not 1 <= self.sizes[0] <= self.sizes[1] <= canvas_size:
            problems.append(
                f"min_scale={min_scale}, max_scale={max_scale} make digits of {self.sizes[0]}..{self.sizes[1]} px "
                f"(need 0 < min <= max and the largest within canvas_size={canvas_size})"
            )
        if not 0 < mask_threshold <= 255:
            problems.append(f"mask_threshold={mask_threshold} (need 1..255)")
        if min(train_scenes, val_scenes, test_scenes) < 1 or clutter < 0 or scene_noise < 0:
            problems.append(
                f"train/val/test_scenes={train_scenes}/{val_scenes}/{test_scenes}, clutter={clutter}, "
                f"scene_noise={scene_noise} (need at least 1 scene per split, clutter and noise 0 or more)"
            )
        if self.normal_classes is not None:
            problems.append("normal_classes is set, but a scene has many digits and no single class")
        if problems:
            raise CnnlabError(
                f"MNISTScenesDataModule cannot build scenes with {'; '.join(problems)}. Fix these data.* settings."
            )
        self.image_shape = (1, canvas_size, canvas_size)
        self.canvas_size = canvas_size
        self.digit_counts = (min_digits, max_digits)
        self.mask_threshold = mask_threshold
        self.scene_counts = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self.clutter = clutter
        self.scene_noise = scene_noise
        # The digits are read through MNISTDataModule: its files, download and error messages.
        self.source = MNISTDataModule(data_dir=self.data_dir, download=self.download)

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """MNIST's own split: digits uint8 [N, 1, 28, 28] and labels [N]."""
        return self.source.load_split(train)

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and "train" not in self.splits:
            digits, labels = self.load_split(train=True)
            if self.val_size >= len(labels):
                raise CnnlabError(
                    f"data.val_size is {self.val_size}, but MNIST's training split has only {len(labels)} "
                    f"digits to make scenes of. Choose a val_size below {len(labels)}."
                )
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.data_seed))
            val_pool, train_pool = order[: self.val_size].sort().values, order[self.val_size :].sort().values
            self.splits["train"] = self.make_scenes(digits[train_pool], labels[train_pool], "train")
            self.splits["val"] = self.make_scenes(digits[val_pool], labels[val_pool], "val")
        if stage in ("test", "predict", None) and "test" not in self.splits:
            digits, labels = self.load_split(train=False)
            self.splits["test"] = self.make_scenes(digits, labels, "test")
        if stage == "predict" and self.predict_split != "test":
            self.setup("fit")

    def make_scenes(self, digits: torch.Tensor, labels: torch.Tensor, split: str) -> InMemoryImages:
        """A split's scenes from its digit pool, the same for the same data_seed and settings."""
        cap = self.max_train_samples if split == "train" else self.max_eval_samples
        n = min(self.scene_counts[split], cap or self.scene_counts[split])
        rng = np.random.default_rng([self.data_seed, SPLIT_STREAMS[split]])
        layout = sample_layout(rng, n, len(labels), self.canvas_size, self.digit_counts, self.sizes)
        digits = digits[:, 0]
        images, masks = render_scenes(digits, labels, layout, n, self.canvas_size, self.mask_threshold)
        if self.clutter:
            add_clutter(rng, images, digits, self.clutter)
        if self.scene_noise:
            noisy = images + rng.normal(0, self.scene_noise * 255, size=images.shape)
            images = noisy.round().clip(0, 255).astype(np.uint8)
        return InMemoryImages(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks))

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        inputs, targets = super().on_after_batch_transfer(batch, dataloader_idx)
        # Masks travel as uint8 (an eighth of the bytes) and become class indices on the device.
        return (inputs, targets.long()) if self.noise is None else (inputs, targets)

"""Segmentation scenes made of MNIST digits: 1-4 digits at random positions and scales on a black
canvas, with a per-pixel mask (0 = background, digit class + 1).

Train and validation scenes are made of training digits (validation from the `val_size` digits
held out of them), test scenes of the official test digits, so no test digit is ever trained on.
Validation and test scenes are drawn once from data_seed; training scenes too, or, with augment on
(the default), drawn anew every epoch (`FreshScenes`).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from cnnlab.errors import CnnlabError
from datamodules.base import SPLIT_STREAMS, ImageDataModule, InMemoryImages
from datamodules.mnist import MNISTDataModule

MNIST_SIDE = 28
CLUTTER_SIDE = 8


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


def concat_layouts(layouts: list[SceneLayout]) -> SceneLayout:
    """One layout of the scenes of several layouts, in their order (scene k of the result is the
    only scene of layouts[k])."""
    return SceneLayout(
        scene=np.concatenate([np.full(len(lay.scene), k) for k, lay in enumerate(layouts)]),
        source=np.concatenate([lay.source for lay in layouts]),
        size=np.concatenate([lay.size for lay in layouts]),
        top=np.concatenate([lay.top for lay in layouts]),
        left=np.concatenate([lay.left for lay in layouts]),
    )


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


@dataclass(frozen=True)
class SceneSpec:
    """How scenes are drawn: canvas side, digits per scene (min, max), digit sides in pixels (min,
    max), mask threshold, clutter pieces per scene and baked-in noise std in [0, 1] units."""

    canvas: int
    digits: tuple[int, int]
    sizes: tuple[int, int]
    threshold: int
    clutter: int = 0
    noise: float = 0.0

    def draw(self, digits: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator, n: int):
        """`n` scenes from a pool of uint8 digits [N, 28, 28] and their labels, all from one random
        stream: (images uint8 [n, canvas, canvas], masks uint8 [n, canvas, canvas])."""
        layout = sample_layout(rng, n, len(labels), self.canvas, self.digits, self.sizes)
        images, masks = render_scenes(digits, labels, layout, n, self.canvas, self.threshold)
        return self.finish(rng, images, digits), masks

    def finish(self, rng: np.random.Generator, images: np.ndarray, digits: torch.Tensor) -> np.ndarray:
        """Clutter and baked-in noise over rendered scenes (the masks stay clean)."""
        if self.clutter:
            add_clutter(rng, images, digits, self.clutter)
        if self.noise:
            noisy = images + rng.normal(0, self.noise * 255, size=images.shape)
            images = noisy.round().clip(0, 255).astype(np.uint8)
        return images


class FreshScenes(Dataset):
    """Training scenes drawn anew every epoch from a digit pool: `n_scenes` per epoch, in batches
    of (images uint8 [B, 1, H, W], masks uint8 [B, H, W]).

    Index `epoch * n_scenes + i` (what `EpochSampler` yields) is scene i of that epoch, drawn from
    its own random stream (seed, epoch, i): the same scene whichever worker, rank or batch renders
    it, and different in every epoch. A batch's digits are scaled and pasted together.
    """

    def __init__(self, spec: SceneSpec, digits: torch.Tensor, labels: torch.Tensor, n_scenes: int, seed: int):
        self.spec, self.digits, self.labels = spec, digits, labels
        self.n_scenes, self.seed = n_scenes, seed

    def __len__(self) -> int:
        return self.n_scenes

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = self.__getitems__([index])
        return images[0], masks[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.spec
        rngs = [np.random.default_rng([self.seed, *divmod(int(index), self.n_scenes)]) for index in indices]
        layout = concat_layouts(
            [sample_layout(rng, 1, len(self.labels), spec.canvas, spec.digits, spec.sizes) for rng in rngs]
        )
        images, masks = render_scenes(self.digits, self.labels, layout, len(rngs), spec.canvas, spec.threshold)
        if spec.clutter or spec.noise:
            images = np.stack([spec.finish(rng, images[k : k + 1], self.digits)[0] for k, rng in enumerate(rngs)])
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks)


class EpochSampler(DistributedSampler):
    """Indices of `FreshScenes` for the epoch that Lightning sets (`set_epoch`, before each epoch):
    `epoch * n + i`, in order (the scenes are random already). Under DDP each rank takes every
    `num_replicas`-th scene from its rank on, the last ones repeated so all ranks step together; a
    DistributedSampler, so Lightning keeps it instead of putting its own in its place."""

    def __init__(self, dataset: FreshScenes, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)

    def __iter__(self):
        n = len(self.dataset)
        return iter(self.epoch * n + i % n for i in range(self.rank, self.total_size, self.num_replicas))


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
        augment: true draws `train_scenes` new training scenes every epoch (from the model seed;
        the digit pool stays fixed by data_seed), false draws them once, from data_seed, and
        trains on them every epoch; validation and test scenes are always drawn once;
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
        sizes = (round(MNIST_SIDE * min_scale), round(MNIST_SIDE * max_scale))
        problems = []
        if not 1 <= min_digits <= max_digits:
            problems.append(f"min_digits={min_digits}, max_digits={max_digits} (need 1 <= min <= max)")
        if not 1 <= sizes[0] <= sizes[1] <= canvas_size:
            problems.append(
                f"min_scale={min_scale}, max_scale={max_scale} make digits of {sizes[0]}..{sizes[1]} px "
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
        self.scene_counts = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
        self.spec = SceneSpec(canvas_size, (min_digits, max_digits), sizes, mask_threshold, clutter, scene_noise)
        # augment: training scenes drawn anew each epoch (a denoising run keeps its fixed scenes)
        self.fresh_scenes = self.augment and self.noise is None
        # The digits are read through MNISTDataModule: its files, download and error messages.
        self.source = MNISTDataModule(data_dir=self.data_dir, download=self.download)

    def prepare_data(self) -> None:
        self.source.prepare_files(self.sources_needed())  # the source has no trainer: this stage's splits

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """MNIST's own split: digits uint8 [N, 1, 28, 28] and labels [N], checked as MNIST's are."""
        return self.source.checked_split(train)

    def split_files(self, train: bool) -> str:
        return self.source.split_files(train)

    def source_shape(self) -> tuple[int, ...]:
        return self.source.image_shape

    def source_classes(self) -> int:
        return self.source.num_classes

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and "train" not in self.splits:
            digits, labels = self.checked_split(train=True)
            val_pool, train_pool = (index.sort().values for index in self.held_out(labels))
            self._train_pool = (digits[train_pool, 0], labels[train_pool])
            self.splits["train"] = self.make_scenes(digits[train_pool], labels[train_pool], "train")
            self.splits["val"] = self.make_scenes(digits[val_pool], labels[val_pool], "val")
        if stage in ("test", "predict", None) and "test" not in self.splits:
            digits, labels = self.checked_split(train=False)
            self.splits["test"] = self.make_scenes(digits, labels, "test")
        if stage == "predict" and self.predict_split != "test":
            self.setup("fit")

    def make_scenes(self, digits: torch.Tensor, labels: torch.Tensor, split: str) -> InMemoryImages:
        """A split's scenes from its digit pool, the same for the same data_seed and settings."""
        cap = self.max_train_samples if split == "train" else self.max_eval_samples
        n = min(self.scene_counts[split], cap or self.scene_counts[split])
        rng = np.random.default_rng([self.data_seed, SPLIT_STREAMS[split]])
        images, masks = self.spec.draw(digits[:, 0], labels, rng, n)
        return InMemoryImages(torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks))

    def train_dataloader(self) -> DataLoader:
        if not self.fresh_scenes:
            return super().train_dataloader()
        # Each run draws its own scenes: the seed comes from the model seed (seed_everything), as
        # the other DataModules' augmentation does; data_seed keeps the digit pool and eval scenes.
        seed = int(torch.randint(0, 2**62, ()))
        cap = self.max_train_samples or self.scene_counts["train"]
        train = FreshScenes(self.spec, *self._train_pool, min(self.scene_counts["train"], cap), seed)
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        sampler = EpochSampler(train, num_replicas=world, rank=rank)
        # a last batch of one would break BatchNorm's training statistics
        return self._loader(train, self.batch_size, drop_last=len(sampler) > self.batch_size, sampler=sampler)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        inputs, targets = super().on_after_batch_transfer(batch, dataloader_idx)
        # Masks travel as uint8 (an eighth of the bytes) and become class indices on the device.
        return (inputs, targets.long()) if self.noise is None else (inputs, targets)

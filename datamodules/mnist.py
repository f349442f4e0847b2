"""MNIST handwritten digits (28x28 grey, 10 classes), read once with torchvision's IDX readers and held
as uint8; a split needs only its own two files.

Augmentation: random rotations, translations and size changes, batched on the device. Never a flip:
a mirrored 2, 6 or 7 is not a digit. `binarize` gives the literature's dynamically binarised MNIST.
"""

import gzip
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST
from torchvision.datasets.mnist import read_image_file, read_label_file, read_sn3_pascalvincent_tensor

from cnnlab.errors import CnnlabError
from datamodules.base import ImageDataModule


def split_file_names(train: bool) -> tuple[str, str]:
    """The raw files (images, labels) of MNIST's official training or test split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


RAW_FILES = (*split_file_names(True), *split_file_names(False))


def random_affine(
    images: torch.Tensor, max_degrees: float, max_shift_px: float, max_scale: float = 0.0
) -> torch.Tensor:
    """Rotate each image by up to +-max_degrees, scale it by a factor in [1 - max_scale, 1 + max_scale]
    and shift it by up to +-max_shift_px, in one grid_sample for the whole batch. Randomness comes
    from torch's RNG on the batch's device."""
    n, _, h, w = images.shape
    rand = torch.rand(4, n, device=images.device) * 2 - 1
    angle = rand[0] * math.radians(max_degrees)
    # the grid maps output to input coordinates: a digit drawn s times larger samples at 1 / s
    zoom = 1 / (1 + rand[3] * max_scale)
    cos, sin = angle.cos() * zoom, angle.sin() * zoom
    # affine_grid works in [-1, 1] coordinates: one pixel is 2 / size.
    tx, ty = rand[1] * max_shift_px * 2 / w, rand[2] * max_shift_px * 2 / h
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MNISTDataModule(ImageDataModule):
    """MNIST: train/val from the official training digits, test on the official 10,000.

    Args:
        max_rotation: Largest random rotation of a training digit, in degrees.
        max_shift: Largest random translation of a training digit, in pixels.
        max_scale: Largest random change of a training digit's size, as a fraction (0.1: 90-110%).
        binarize: Dynamically binarised MNIST (as VAE papers report, e.g. Burda et al. 2015): each
            pixel is 1 with probability its grey level, drawn afresh for every training batch on the
            device; validation and test images are drawn once, from data_seed, so their numbers
            are reproducible.
        (the rest: see ImageDataModule)
    """

    name = "MNIST"
    num_classes = 10
    image_shape = (1, 28, 28)
    class_names = tuple(str(d) for d in range(10))
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(
        self,
        *args,
        max_rotation: float = 10.0,
        max_shift: float = 2.0,
        max_scale: float = 0.0,
        binarize: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if max_rotation < 0 or max_shift < 0 or not 0 <= max_scale < 1:
            raise CnnlabError(
                f"MNIST augmentation out of range: max_rotation {max_rotation}, max_shift {max_shift}, max_scale "
                f"{max_scale}. Rotation and shift are 0 or more; max_scale is a fraction in [0, 1), e.g. 0.1."
            )
        self.max_rotation = max_rotation
        self.max_shift = max_shift
        self.max_scale = max_scale
        self.binarize = binarize

    @property
    def raw_folder(self) -> Path:
        return Path(self.data_dir) / "MNIST" / "raw"

    def prepare_data(self) -> None:
        self.prepare_files(self.sources_needed())

    def prepare_files(self, sources: tuple[bool, ...]) -> None:
        """Unpack (or, with download on, download) the files of the official splits `sources`
        (`load_split`'s train flags): a test of a checkpoint needs the two t10k files only."""
        self._unpack_gzipped()
        missing = self._missing(sources)
        if not missing:
            return
        if not self.download:
            raise self._missing_error(missing, "they could not be downloaded: download is off (data.download: false)")
        try:
            # torchvision fetches all four files; the test split is the cheaper one to read back
            MNIST(self.data_dir, train=False, download=True)
        except (RuntimeError, OSError) as err:
            still = self._missing(sources)
            if still:  # with every file there, load_split names the one that is corrupt
                reason = str(err).splitlines()[-1].strip() if str(err).strip() else type(err).__name__
                raise self._missing_error(still, f"they could not be downloaded: {reason}") from None

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Read with torchvision's IDX readers rather than its MNIST class, which refuses to read
        # either split unless all four files are there.
        missing = self._missing((train,))
        if missing:
            raise self._missing_error(
                missing, "they were not there when the split was read (prepare_data unpacks and downloads them)"
            )
        images_file, labels_file = (str(self.raw_folder / name) for name in split_file_names(train))
        try:
            images, labels = read_image_file(images_file), read_label_file(labels_file)
        except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as err:
            raise self._corrupt_error(train, err) from None
        if len(images) != len(labels):
            raise self._corrupt_error(train, f"{len(images)} images but {len(labels)} labels")
        return images.unsqueeze(1).contiguous(), labels.long()

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        return random_affine(images, self.max_rotation, self.max_shift, self.max_scale)

    def split_files(self, train: bool) -> str:
        prefix = "train" if train else "t10k"
        return f"{self.raw_folder}/{prefix}-images-idx3-ubyte and {prefix}-labels-idx1-ubyte"

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if not self.binarize:
            return
        for offset, split in enumerate(("val", "test"), start=1):
            data = self.splits.get(split)
            if data is not None and not getattr(data, "binarized", False):
                generator = torch.Generator().manual_seed(self.data_seed + offset)
                data.images = (torch.bernoulli(data.images / 255.0, generator=generator) * 255).to(torch.uint8)
                data.binarized = True

    def transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        if not self.binarize:
            return super().transform(images, train)
        x = images.float().div_(255)
        if train and self.augment:
            x = self.augment_batch(x)
        # Fresh draws for training batches; validation and test pixels are already 0 or 1 (drawn once
        # in setup), and a Bernoulli draw of 0 or 1 is itself, so they stay fixed.
        x = torch.bernoulli(x.clamp_(0, 1))  # interpolation may round a hair above 1
        if self.normalize:
            mean, std = self._mean_std(x.device)
            x = (x - mean) / std
        return x

    def _unpack_gzipped(self) -> None:
        """Unpack `<name>.gz` lying where torchvision expects `<name>` (as its download would)."""
        for name in RAW_FILES:
            target, packed = self.raw_folder / name, self.raw_folder / f"{name}.gz"
            if target.is_file() or not packed.is_file():
                continue
            # A part file of this call's own: seed workers or DDP ranks may unpack the same folder at
            # once; each one that finishes puts a whole file in place (os.replace is atomic), so no
            # reader ever sees a partial one.
            with tempfile.NamedTemporaryFile(
                dir=self.raw_folder, prefix=f"{name}.", suffix=".part", delete=False
            ) as dst:
                part = Path(dst.name)
                try:
                    with gzip.open(packed, "rb") as src:
                        shutil.copyfileobj(src, dst)
                except (OSError, EOFError) as err:
                    dst.close()
                    part.unlink(missing_ok=True)
                    raise CnnlabError(
                        f"{packed} is corrupt or truncated ({err}). Replace it with a good copy of MNIST's "
                        f"{packed.name}, or delete it to let torchvision download it."
                    ) from None
            os.replace(part, target)

    def _missing(self, sources: tuple[bool, ...]) -> list[str]:
        """The raw files of the splits `sources` that are not in raw_folder (unpacked)."""
        names = [name for train in sources for name in split_file_names(train)]
        return [name for name in names if not (self.raw_folder / name).is_file()]

    def _missing_error(self, missing: list[str], reason: str) -> CnnlabError:
        readers = []
        if any(name.startswith("train") for name in missing):
            readers.append("the training split (train and val are cut from it)")
        if any(name.startswith("t10k") for name in missing):
            readers.append("the test split (test and predict read it)")
        return CnnlabError(
            f"MNIST was not found in {self.raw_folder}/: missing {', '.join(missing)} (looked for each "
            f"unpacked and with .gz), the files of {' and '.join(readers)}; {reason}. On a machine with "
            "internet access run again with data.download true and torchvision fetches them there. "
            "Offline, copy those files (.gz or unpacked) into "
            f"{self.raw_folder}/, or point --data.data_dir at a folder that holds MNIST/raw/ with them."
        )

    def _corrupt_error(self, train: bool, err: object) -> CnnlabError:
        prefix = "train" if train else "t10k"
        culprit = f"{self.raw_folder}/{prefix}-images-idx3-ubyte or {prefix}-labels-idx1-ubyte"
        for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
            try:
                read_sn3_pascalvincent_tensor(str(self.raw_folder / name), strict=True)
            except Exception:  # any failure names this file as the bad one
                culprit = str(self.raw_folder / name)
                break
        return CnnlabError(
            f"{culprit} is corrupt or truncated ({err}). Delete it (and its .gz, if any) and run again "
            "to download it, or replace it with a good copy of the MNIST file of that name."
        )

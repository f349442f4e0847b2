"""CIFAR-10 (32x32 colour, 10 classes), read through torchvision once (with its MD5 checks) and
held as uint8.

Augmentation: random crop with 4-pixel zero padding and random horizontal flip, the standard
CIFAR recipe (He et al. 2016), batched on the device as airbench does it.
"""

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10

from cnnlab.errors import CnnlabError
from datamodules.base import ImageDataModule


def random_crop(images: torch.Tensor, padding: int) -> torch.Tensor:
    """Zero-pad by `padding` and cut a random window of the original size from each image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding,) * 4)
    dy, dx = torch.randint(0, 2 * padding + 1, (2, n, 1), device=images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, :, None]  # [n, h, 1]
    cols = (dx + torch.arange(w, device=images.device))[:, None, :]  # [n, 1, w]
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10: train/val from the 50,000 training images, test on the official 10,000.

    Args:
        crop_padding: Zero padding of the random crop, in pixels.
        flip: Random horizontal flips in augmentation.
        (the rest: see ImageDataModule)
    """

    name = "CIFAR-10"
    num_classes = 10
    image_shape = (3, 32, 32)
    class_names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(self, *args, crop_padding: int = 4, flip: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.crop_padding = crop_padding
        self.flip = flip

    @property
    def folder(self) -> Path:
        return Path(self.data_dir) / CIFAR10.base_folder

    def prepare_data(self) -> None:
        files = [name for name, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
        if all((self.folder / name).is_file() for name in files):
            return
        if not self.download:
            raise self._missing_error("download is off (data.download: false)")
        try:
            CIFAR10(self.data_dir, train=True, download=True)
        except (RuntimeError, OSError) as err:
            raise self._missing_error(str(err).splitlines()[-1].strip() or type(err).__name__) from None

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            dataset = CIFAR10(self.data_dir, train=train, download=False)
        except RuntimeError:
            raise self._diagnose() from None
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(dataset.targets, dtype=torch.long)

    def split_files(self, train: bool) -> str:
        names = [name for name, _ in (CIFAR10.train_list if train else CIFAR10.test_list)]
        return f"{self.folder}/ ({', '.join(names)})"

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop_padding > 0:
            images = random_crop(images, self.crop_padding)
        return random_flip(images) if self.flip else images

    def _diagnose(self) -> CnnlabError:
        """torchvision said 'not found or corrupted': say which file, and which of the two."""
        missing = []
        for name, md5 in CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], CIFAR10.meta["md5"])]:
            path = self.folder / name
            if not path.is_file():
                missing.append(name)
            elif hashlib.md5(path.read_bytes()).hexdigest() != md5:
                return CnnlabError(
                    f"{path} is corrupt or truncated (its MD5 is not that of CIFAR-10's {name}). Delete "
                    f"{self.folder}/ and run again to download it, or replace the file with a good copy."
                )
        return self._missing_error(f"missing {', '.join(missing)}")

    def _missing_error(self, reason: str) -> CnnlabError:
        return CnnlabError(
            f"CIFAR-10 was not found in {self.folder}/ (torchvision's python version: data_batch_1..5, "
            f"test_batch, batches.meta) and could not be downloaded: {reason}. On a machine with internet "
            "access run again with data.download true and torchvision fetches it there. Offline, unpack "
            f"cifar-10-python.tar.gz into {self.data_dir}/ (or put the .tar.gz there), or point "
            "--data.data_dir at a folder that holds cifar-10-batches-py/."
        )

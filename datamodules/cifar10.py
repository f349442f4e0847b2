"""CIFAR-10 (32x32 colour, 10 classes), read once as torchvision reads it (its MD5 table, its pickled
batches) and held as uint8; a split needs only its own files.

Augmentation: random crop with 4-pixel zero padding and random horizontal flip, the standard
CIFAR recipe (He et al. 2016), batched on the device as airbench does it.
"""

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

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
        sources = self.sources_needed()
        missing = self._missing(sources)
        if not missing:
            return
        if not self.download:
            raise self._missing_error(missing, "they could not be downloaded: download is off (data.download: false)")
        try:
            CIFAR10(self.data_dir, train=False, download=True)  # the whole archive; the test split is read back
        except (RuntimeError, OSError) as err:
            still = self._missing(sources)
            if still:  # with every file there, load_split names the one that is corrupt
                reason = str(err).splitlines()[-1].strip() if str(err).strip() else type(err).__name__
                raise self._missing_error(still, f"they could not be downloaded: {reason}") from None

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Read as torchvision's CIFAR10 does (its MD5 table, its pickle layout), but one split's files
        # only: its class refuses to read either split unless every batch of both is there.
        missing = self._missing((train,))
        if missing:
            raise self._missing_error(
                missing, "they were not there when the split was read (prepare_data downloads them)"
            )
        images, labels = [], []
        for name, md5 in CIFAR10.train_list if train else CIFAR10.test_list:
            path = self.folder / name
            try:
                if not check_integrity(str(path), md5):
                    raise ValueError(f"its MD5 is not that of CIFAR-10's {name}")
                with open(path, "rb") as handle:
                    entry = pickle.load(handle, encoding="latin1")
                images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            except (OSError, ValueError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
                raise CnnlabError(
                    f"{path} is corrupt or truncated ({err}). Delete {self.folder}/ and run again to download "
                    "it, or replace the file with a good copy."
                ) from None
        return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.long)

    def split_files(self, train: bool) -> str:
        names = [name for name, _ in (CIFAR10.train_list if train else CIFAR10.test_list)]
        return f"{self.folder}/ ({', '.join(names)})"

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.crop_padding > 0:
            images = random_crop(images, self.crop_padding)
        return random_flip(images) if self.flip else images

    def _missing(self, sources: tuple[bool, ...]) -> list[str]:
        """The files of the splits `sources` (`load_split`'s train flags) that are not in the folder."""
        names = [name for train in sources for name, _ in (CIFAR10.train_list if train else CIFAR10.test_list)]
        return [name for name in names if not (self.folder / name).is_file()]

    def _missing_error(self, missing: list[str], reason: str) -> CnnlabError:
        readers = []
        if any(name.startswith("data_batch") for name in missing):
            readers.append("the training split (train and val are cut from it)")
        if "test_batch" in missing:
            readers.append("the test split (test and predict read it)")
        return CnnlabError(
            f"CIFAR-10 was not found in {self.folder}/: missing {', '.join(missing)} (torchvision's python "
            f"version), the files of {' and '.join(readers)}; {reason}. On a machine with internet access run "
            "again with data.download true and torchvision fetches them there. Offline, unpack "
            f"cifar-10-python.tar.gz into {self.data_dir}/, or point --data.data_dir at a folder that holds "
            "cifar-10-batches-py/ with them."
        )

"""The shared base of cnnlab's image DataModules: whole splits held as uint8 tensors, batches
as index slices, normalisation and augmentation batched on the device.

A subclass says how to get its files (`prepare_data`), how to read a split through
torchvision (`load_split`) and how to augment a float batch in [0, 1] (`augment_batch`).
"""

from typing import Literal

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.errors import CnnlabError
from cnnlab.lightning_internals import UnrepeatedDistributedSampler
from datamodules.noise import Noise, add_noise, fixed_noisy_copy

Split = Literal["train", "val", "test"]
SPLIT_STREAMS = {"train": 0, "val": 1, "test": 2}  # each split its own random stream of data_seed


class InMemoryImages(Dataset):
    """A split as tensors: uint8 images, labels, and the batches' targets (the labels, or for a
    denoising evaluation split the clean images). `__getitems__` lets the DataLoader fetch a whole
    batch with one index operation instead of one `__getitem__` and a collate per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        self.images, self.labels = images, labels
        self.targets = labels if targets is None else targets

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices)
        return self.images[index], self.targets[index]


def keep_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for `InMemoryImages`: the batch is already stacked."""
    return batch


def check_normal_classes(normal_classes: list[int] | None, name: str, num_classes: int) -> None:
    """Refuse normal classes an anomaly run cannot use: none at all (an empty list would quietly
    train on every class), indices outside the dataset's, or every class (a test split without
    anomalies, on which AUROC is undefined)."""
    if normal_classes is None:
        return
    classes = f"{name} classes are 0..{num_classes - 1}"
    if not normal_classes:
        raise CnnlabError(
            f"data.normal_classes is [], which names no normal class; an anomaly run trains on the normal "
            f"classes only and calls the rest anomalies ({classes}). List the normal ones, e.g. [0] or [1, 7], "
            "or set data.normal_classes null for a run on every class without an anomaly report."
        )
    bad = sorted({c for c in normal_classes if not 0 <= c < num_classes})
    if bad:
        raise CnnlabError(
            f"data.normal_classes has {bad}, but {classes}. List the class indices that count as normal, "
            "e.g. [0] or [1, 7]."
        )
    if len(set(normal_classes)) == num_classes:
        raise CnnlabError(
            f"data.normal_classes lists every {name} class (0..{num_classes - 1}), so no test sample is an "
            "anomaly and the run could not be evaluated (AUROC needs normal and anomalous samples). Leave "
            "the anomalous classes out of the list, e.g. [0] or [1, 7], or set data.normal_classes null for "
            "a run on every class without an anomaly report."
        )


class ImageDataModule(LightningDataModule):
    """Base for labelled image datasets held in memory.

    Args:
        data_dir: Root folder of torchvision's on-disk layout (e.g. `data/MNIST/raw/`).
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size (defaults to 2 x batch_size).
        val_size: Training images held out for validation, chosen at random from `data_seed`.
        data_seed: Seed of the train/val split and of the sample caps; a seed study keeps it fixed.
        augment: Random augmentation of training batches (never of validation or test).
        normalize: Standardise with the dataset's mean/std; off keeps pixels in [0, 1] (BCE targets).
        normal_classes: Anomaly runs: train keeps only these classes; val (held-out training images)
            and test keep every class, the others being the anomalies (docs/anomaly.md).
        max_train_samples: Cap the training images (quick runs); None keeps all.
        max_eval_samples: Cap the validation and test images each; None keeps all.
        predict_split: Which split `predict` runs over.
        noise: Denoising runs: batches become (noisy, clean) float images in [0, 1] (needs normalize
            false). gaussian adds N(0, noise_level**2); salt_and_pepper turns a fraction noise_level
            of pixels black or white. Training noise is fresh every batch (the model seed);
            validation/test/predict images get theirs once, from data_seed, so their metrics are
            reproducible.
        noise_level: Std of the Gaussian noise, or fraction of salt-and-pepper pixels.
        download: Let torchvision download missing files.
        num_workers: DataLoader workers; 0 is fastest for in-memory tensors.
    """

    name: str = ""
    num_classes: int = 0
    image_shape: tuple[int, int, int] = (0, 0, 0)
    class_names: tuple[str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        data_seed: int = 0,
        augment: bool = True,
        normalize: bool = True,
        normal_classes: list[int] | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        predict_split: Split = "test",
        noise: Noise | None = None,
        noise_level: float = 0.3,
        download: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise CnnlabError(f"data.batch_size must be at least 1, got {batch_size} / {eval_batch_size}.")
        if val_size < 1:
            raise CnnlabError(
                f"data.val_size is {val_size}, but validation needs at least one image (checkpoints "
                "select on validation metrics). Set data.val_size to a positive count, e.g. 5000."
            )
        check_normal_classes(normal_classes, self.name, self.num_classes)
        if noise is not None and normalize:
            raise CnnlabError(
                f"data.noise is {noise} with data.normalize true. A denoising run compares images in [0, 1] "
                "(noise, targets, PSNR), so standardised pixels would mislead its metrics. Set "
                "data.normalize false."
            )
        if noise is not None and not (noise_level >= 0 and (noise != "salt_and_pepper" or noise_level <= 1)):
            raise CnnlabError(
                f"data.noise_level is {noise_level}; it is the Gaussian noise's std (0 or more, e.g. 0.3) or "
                "the fraction of salt-and-pepper pixels (between 0 and 1, e.g. 0.2)."
            )
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.val_size = val_size
        self.data_seed = data_seed
        self.augment = augment
        self.normalize = normalize
        self.normal_classes = sorted(set(normal_classes)) if normal_classes else None
        self.max_train_samples = max_train_samples
        self.max_eval_samples = max_eval_samples
        self.predict_split = predict_split
        self.noise = noise
        self.noise_level = noise_level
        self.download = download
        self.num_workers = num_workers
        self.splits: dict[str, InMemoryImages] = {}
        self._noisy: dict[str, InMemoryImages] = {}  # denoising: each evaluation split with its fixed noise
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- what a subclass provides ------------------------------------------------------------

    def load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the official train or test split as (uint8 images [N, C, H, W], int64 labels [N])."""
        raise NotImplementedError

    def split_files(self, train: bool) -> str:
        """The files a split is read from, for error messages."""
        return str(self.data_dir)

    def sources_needed(self) -> tuple[bool, ...]:
        """The official splits this run reads, as `load_split`'s `train` flags, so that
        `prepare_data` asks only for their files: fit and validate read the training split (train
        and val are cut from it), test the test split, predict the split it predicts on. Without a
        trainer (a DataModule used by hand) both."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        if stage in ("fit", "validate"):
            return (True,)
        if stage == "test" or (stage == "predict" and self.predict_split == "test"):
            return (False,)
        return (True, False)

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Augment a float batch in [0, 1] on its device (training batches only)."""
        return images

    # -- what callbacks may ask (cnnlab/protocol.py's ImageData) ----------------------------------

    def samples(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The loaded split as stored: uint8 images [N, C, H, W] and labels [N]."""
        if split not in self.splits:
            raise CnnlabError(
                f"The {split} split is not loaded in this run (loaded: {sorted(self.splits) or 'none'}). Figures "
                "read validation images during fit and validate, and test images during test; check the "
                "callback's split setting."
            )
        data = self.splits[split]
        return data.images, data.labels

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """Stored uint8 images -> the model's evaluation input: normalised, never augmented."""
        return self.transform(images, train=False)

    def is_anomaly(self, labels: torch.Tensor) -> torch.Tensor:
        """True where a label is not a normal class (all False when no normal_classes are set)."""
        if self.normal_classes is None:
            return torch.zeros_like(labels, dtype=torch.bool)
        return ~torch.isin(labels, torch.tensor(self.normal_classes, device=labels.device))

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Undo `normalize` for display: model-space images back to [0, 1]."""
        if self.normalize:
            mean, std = self._mean_std(images.device)
            images = images * std + mean
        return images.clamp(0, 1)

    # -- Lightning hooks -------------------------------------------------------------------------

    def checked_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """`load_split`, refusing content that would fail later or silently mislead: labels outside
        the classes, images of another shape than the dataset's, counts that disagree."""
        images, labels = self.load_split(train)
        which = "training" if train else "test"
        problems = []
        if len(images) != len(labels):
            problems.append(f"{len(images)} images but {len(labels)} labels")
        if tuple(images.shape[1:]) != tuple(self.source_shape()):
            problems.append(f"images of shape {tuple(images.shape[1:])}, not {tuple(self.source_shape())}")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.source_classes()):
            found = sorted({int(v) for v in labels.unique() if not 0 <= int(v) < self.source_classes()})
            problems.append(
                f"labels outside 0..{self.source_classes() - 1} ({', '.join(map(str, found[:8]))}"
                f"{' ...' if len(found) > 8 else ''})"
            )
        if problems:
            raise CnnlabError(
                f"The {self.name} {which} split in {self.split_files(train)} is corrupt: {'; '.join(problems)}. "
                f"Replace the files with good copies of {self.name} (or delete them to download them again)."
            )
        return images, labels

    def source_shape(self) -> tuple[int, ...]:
        """The shape of one stored image of the files (the dataset's image_shape)."""
        return self.image_shape

    def source_classes(self) -> int:
        """How many classes the files' labels may name."""
        return self.num_classes

    def held_out(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(validation, training) positions in the official training split: `val_size` of them held out
        at random from `data_seed`, the same in every run with that seed."""
        if self.val_size >= len(labels):
            raise CnnlabError(
                f"data.val_size is {self.val_size}, but the {self.name} training split has only {len(labels)} "
                f"images. Choose a val_size below {len(labels)}."
            )
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.data_seed))
        return order[: self.val_size], order[self.val_size :]

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and "train" not in self.splits:
            images, labels = self.checked_split(train=True)
            val_index, train_index = self.held_out(labels)
            train_index = self._select(train_index, labels, self.max_train_samples, normal_only=True)
            # An anomaly run validates on held-out training images of every class, normal and anomalous in
            # the proportions of the test split (one normal digit of ten: about 10% / 90%), none trained on.
            val_index = self._select(val_index, labels, self.max_eval_samples, normal_only=False)
            self.splits["train"] = InMemoryImages(images[train_index], labels[train_index])
            self.splits["val"] = InMemoryImages(images[val_index], labels[val_index])
        if stage in ("test", "predict", None) and "test" not in self.splits:
            images, labels = self.checked_split(train=False)
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.data_seed))
            test_index = self._select(order, labels, self.max_eval_samples, normal_only=False)
            self.splits["test"] = InMemoryImages(images[test_index], labels[test_index])
        if stage == "predict" and self.predict_split != "test":
            self.setup("fit")

    def train_dataloader(self) -> DataLoader:
        train = self.splits["train"]
        # A last batch of one image would break BatchNorm's training statistics.
        return self._loader(train, self.batch_size, shuffle=True, drop_last=len(train) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._evaluation_split("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._evaluation_split("test"), self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self._evaluation_split(self.predict_split), self.eval_batch_size)

    def on_after_batch_transfer(self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int):
        images, targets = batch
        training = self.trainer is not None and self.trainer.training
        inputs = self.transform(images, train=training)
        if self.noise is None:
            return inputs, targets
        if training:  # fresh noise every batch, after augmentation
            return add_noise(inputs, self.noise, self.noise_level), inputs
        # an evaluation split of a denoising run: (noisy, clean) uint8 images, the noise fixed in setup
        return inputs, self.transform(targets, train=False)

    def transform(self, images: torch.Tensor, train: bool) -> torch.Tensor:
        """uint8 batch -> float model input: to [0, 1], augmented when `train`, normalised."""
        x = images.float().div_(255)
        if train and self.augment:
            x = self.augment_batch(x)
        if self.normalize:
            mean, std = self._mean_std(x.device)
            x = (x - mean) / std
        return x

    # -- helpers -----------------------------------------------------------------------------

    def _evaluation_split(self, split: str) -> InMemoryImages:
        """The dataset evaluation loaders read: the split, or in a denoising run the split's images with
        their noise, drawn once from data_seed (the same in every epoch and on any device)."""
        data = self.splits[split]
        if self.noise is None:
            return data
        if split not in self._noisy:
            seed = 10 * self.data_seed + SPLIT_STREAMS[split]
            noisy = fixed_noisy_copy(data.images, self.noise, self.noise_level, seed)
            self._noisy[split] = InMemoryImages(noisy, data.labels, targets=data.images)
        return self._noisy[split]

    def _select(self, index: torch.Tensor, labels: torch.Tensor, cap: int | None, normal_only: bool) -> torch.Tensor:
        if normal_only and self.normal_classes is not None:
            index = index[torch.isin(labels[index], torch.tensor(self.normal_classes))]
        if cap is not None:
            index = index[:cap]
        return index.sort().values

    def _loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        sampler: Sampler | None = None,
    ) -> DataLoader:
        if sampler is None and not shuffle and self.trainer is not None and self.trainer.world_size > 1:
            # Evaluation under DDP: each rank a strided shard, no padding. Lightning's default
            # DistributedSampler would pad with duplicates that skew metrics and per-sample figures.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False, **self.trainer.distributed_sampler_kwargs)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=keep_batch,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._stats:
            shape = (1, len(self.mean), 1, 1)
            self._stats[device] = (
                torch.tensor(self.mean, device=device).view(shape),
                torch.tensor(self.std, device=device).view(shape),
            )
        return self._stats[device]

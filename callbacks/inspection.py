"""What the figure callbacks share: when they are due, a fixed subset of a split chosen once, the
protocol check, and running the module in eval mode under inference_mode with its state restored.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

from cnnlab.errors import CnnlabError


def due(trainer: Trainer, every_n_epochs: int) -> bool:
    """For the current training epoch (at its validation or its end): every n-th, and always the last."""
    epoch = trainer.current_epoch + 1
    last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
    return epoch % every_n_epochs == 0 or last or trainer.should_stop


def fresh_start(trainer: Trainer) -> bool:
    """True when fit starts from scratch (not resumed), so a figure may be called 'before training'."""
    return trainer.state.fn == TrainerFn.FITTING and trainer.global_step == 0 and trainer.current_epoch == 0


def require(pl_module: LightningModule, names: Sequence[str], who: str, what: str) -> None:
    """Raise CnnlabError when the module lacks a protocol method the callback needs."""
    missing = [name for name in names if not callable(getattr(pl_module, name, None))]
    if missing:
        raise CnnlabError(
            f"{who} needs {what} ({', '.join(f'{n}()' for n in names)}), but {type(pl_module).__name__} has no "
            f"{', '.join(missing)}. Use it with a model that has them (e.g. the AutoEncoder or VAE), or remove "
            f"{who} from trainer.callbacks in the config."
        )


def split_dataset(trainer: Trainer, split: str):
    """The in-memory split ('train', 'val' or 'test') of the run's DataModule."""
    datamodule = trainer.datamodule
    splits = getattr(datamodule, "splits", {})
    if split not in splits:
        raise CnnlabError(
            f"The {split} split is not loaded in this run (the DataModule has {sorted(splits) or 'none'}). "
            "Figure callbacks read validation images during fit and test images during test; check the "
            "callback's split setting."
        )
    return splits[split]


def fixed_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n indices of a split, the same every time for the same labels and seed, classes taken in
    turn (one of each, then a second of each...) so every class shows even in a small subset and
    no class is drawn entirely on top of another."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    # rank of each sample within its class in the random order: take rank 0 of every class, then 1...
    shuffled = labels[order]
    rank = torch.zeros_like(order)
    for cls in shuffled.unique():
        members = (shuffled == cls).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    return order[torch.argsort(rank * (int(labels.max()) + 1) + shuffled, stable=True)][:n]


def first_of_class(labels: torch.Tensor, cls: int, seed: int) -> int | None:
    """One index of class `cls` chosen reproducibly from the seed, or None if the split has none."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    hits = order[labels[order] == cls]
    return int(hits[0]) if len(hits) else None


def model_input(trainer: Trainer, pl_module: LightningModule, images: torch.Tensor) -> torch.Tensor:
    """Stored uint8 images -> what the model is fed at evaluation: on its device, normalised,
    never augmented (whatever stage the trainer is in)."""
    return trainer.datamodule.transform(images.to(pl_module.device), train=False)


def display(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
    """Model-space images -> float32 [0, 1] on the CPU, for pictures."""
    return trainer.datamodule.denormalize(images.detach().float()).cpu()


@contextmanager
def evaluating(trainer: Trainer, pl_module: LightningModule) -> Iterator[None]:
    """Eval mode, inference_mode and the trainer's precision context (autocast under AMP); every
    submodule's own train/eval flag is put back afterwards (a frozen BatchNorm stays frozen)."""
    modes = [(module, module.training) for module in pl_module.modules()]
    pl_module.eval()
    try:
        with torch.inference_mode(), trainer.precision_plugin.forward_context():
            yield
    finally:
        for module, training in modes:
            module.training = training


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: figures are files, never
    windows, and train.py's start-up does not pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

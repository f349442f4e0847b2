"""The base of every figure callback: *when* it draws (every n epochs and always after the last, on
rank zero), *how* it runs the model (evaluation mode, no autograd, the trainer's precision, each
submodule's own mode put back; model space converted for display), and *where* the picture goes
(a file under the run and every logger that shows pictures, through callbacks/media.py).

A figure callback names the protocol capabilities it needs (cnnlab/protocol.py) in `requires`; they
are checked once at setup, and a model without them stops the run with one paragraph.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from callbacks import media
from cnnlab.environment import FIGURES_ENV
from cnnlab.errors import CnnlabError
from cnnlab.protocol import ImageData, require


class FigureCallback(Callback):
    """Subclasses set `requires` (protocol classes the model must satisfy) and `what` (how a user
    would say it: "a model with a latent space"), and draw through `self.draw_*` helpers."""

    requires: Sequence[type] = ()
    what: str = "the methods listed"
    needs_data = True  # reads stored samples or class names of a cnnlab DataModule (protocol: ImageData)

    def __init__(self, every_n_epochs: int = 1) -> None:
        super().__init__()
        if every_n_epochs < 1:
            raise CnnlabError(f"{type(self).__name__} every_n_epochs must be at least 1, got {every_n_epochs}.")
        self.every_n_epochs = every_n_epochs
        self.drawing = True
        self._later: list = []

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        who = type(self).__name__
        require(pl_module, self.requires, who, self.what)
        if self.needs_data:
            require(trainer.datamodule, (ImageData,), who, "a cnnlab DataModule (images, class names, display)")
        # CNNLAB_FIGURES=0 (cnnlab-seeds, for the seeds after the first): nothing is drawn. The metrics
        # are the model's own (an anomaly run's AUROC included), so they do not depend on it.
        self.drawing = os.environ.get(FIGURES_ENV, "1") != "0"

    # -- when ------------------------------------------------------------------------------------

    def draws(self, trainer: Trainer) -> bool:
        """Whether this process draws now: rank zero, with figures on."""
        return self.drawing and trainer.is_global_zero

    def due(self, trainer: Trainer) -> bool:
        """For the current training epoch (at its validation or its end): every n-th, and always the
        last (the planned last epoch, or one where the run is told to stop)."""
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last or trainer.should_stop

    @staticmethod
    def epoch_title(trainer: Trainer) -> str:
        """'end of epoch 3': the moment a figure drawn during fit shows, in its title. Epochs count from
        0, as in Lightning's progress bar ('Epoch 3'), metrics.csv's `epoch` and the figure's file name
        (`epoch003.png`, callbacks/media.py's `file_for`), so title, file and bar name the same epoch."""
        return f"end of epoch {trainer.current_epoch}"

    @staticmethod
    def fresh_start(trainer: Trainer) -> bool:
        """Fit starts from scratch (not resumed), so a figure may be called 'before training'."""
        return trainer.state.fn == TrainerFn.FITTING and trainer.global_step == 0 and trainer.current_epoch == 0

    @staticmethod
    def fitting(trainer: Trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING

    # -- how -------------------------------------------------------------------------------------

    @staticmethod
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

    @staticmethod
    def samples(trainer: Trainer, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A loaded split as stored: uint8 images and labels (the DataModule's `samples`)."""
        return trainer.datamodule.samples(split)

    @staticmethod
    def model_input(trainer: Trainer, pl_module: LightningModule, images: torch.Tensor) -> torch.Tensor:
        """Stored uint8 images -> what the model is fed at evaluation, on its device."""
        return trainer.datamodule.model_input(images.to(pl_module.device))

    @staticmethod
    def display(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
        """Model-space images -> float32 [0, 1] on the CPU, for pictures (the DataModule's
        `denormalize`; without a DataModule the images are taken to be in [0, 1] already)."""
        images = images.detach().float()
        denormalize = getattr(trainer.datamodule, "denormalize", None)
        return (denormalize(images) if denormalize is not None else images).clamp(0, 1).cpu()

    @staticmethod
    def class_names(trainer: Trainer) -> list[str]:
        return [str(c) for c in getattr(trainer.datamodule, "class_names", None) or ()]

    @classmethod
    def class_name(cls, trainer: Trainer, label: int) -> str:
        names = cls.class_names(trainer)
        return names[label] if 0 <= label < len(names) else str(label)

    def later(self, job) -> None:
        """Make a picture at the end of the first training epoch instead of now. What it shows is
        computed now (the job closes over tensors: the untrained filters, the codes before training);
        only the drawing (matplotlib, seconds) waits, so it does not stand between the command and its
        first training step."""
        self._later.append(job)

    def draw_later(self) -> None:
        jobs, self._later = self._later, []
        for job in jobs:
            job()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw_later()

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.draw_later()  # a run stopped before its first epoch ended

    # -- where -----------------------------------------------------------------------------------

    @staticmethod
    def draw_figure(trainer: Trainer, key: str, figure: Any, tag: str | None = None, step: int | None = None) -> None:
        media.log_figure(trainer, key, figure, tag, step)

    @staticmethod
    def draw_image(trainer: Trainer, key: str, image: torch.Tensor, tag: str | None = None) -> None:
        media.log_image(trainer, key, image, tag)

    @staticmethod
    def draw_animation(trainer: Trainer, key: str, frames: torch.Tensor, fps: int, tag: str | None = None) -> None:
        media.log_animation(trainer, key, frames, fps=fps, tag=tag)


# -- fixed subsets of a split -------------------------------------------------------------------------


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

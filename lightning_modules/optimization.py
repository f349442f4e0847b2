"""Optimizer and LR scheduler from the CLI (`OptimizerCallable`, `LRSchedulerCallable`), shared
by every LightningModule's `configure_optimizers`."""

import functools
import inspect
import math

from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch.optim.lr_scheduler import ReduceLROnPlateau

from cnnlab.errors import CnnlabError


def configure_optimizers(
    module: LightningModule, optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None
):
    """Build the optimizer and, if given, its scheduler.

    A scheduler that plans over the whole run (OneCycleLR's `total_steps`) gets the trainer's
    step count and steps every batch, so a config never repeats max_epochs; ReduceLROnPlateau
    watches `val/loss`; any other scheduler steps once per epoch.
    """
    opt = optimizer(module.parameters())
    if lr_scheduler is None:
        return opt
    target, given = _scheduler_class(lr_scheduler), getattr(lr_scheduler, "keywords", {})
    if target is not None and "total_steps" in inspect.signature(target).parameters:
        if given.get("total_steps") is None and given.get("epochs") is None:
            steps = module.trainer.estimated_stepping_batches
            if not math.isfinite(steps):
                raise unbounded_plan(target.__name__)
            scheduler = lr_scheduler(opt, total_steps=int(steps))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": lr_scheduler(opt), "interval": "step"}}
    scheduler = lr_scheduler(opt)
    config = {"scheduler": scheduler, "interval": "epoch"}
    if isinstance(scheduler, ReduceLROnPlateau):
        config["monitor"] = "val/loss"
    return {"optimizer": opt, "lr_scheduler": config}


def unbounded_plan(scheduler: str) -> CnnlabError:
    """The one refusal of a schedule planned over a run that has no end: raised by the CLI before
    anything is written, and here for a plain Trainer."""
    return CnnlabError(
        f"trainer.max_epochs is -1 (train without end) with no max_steps, but {scheduler} plans the learning-rate "
        "schedule over the whole run and needs its length. Give a number of epochs (--trainer.max_epochs 10) or "
        "of steps (--trainer.max_steps 5000)."
    )


def _scheduler_class(lr_scheduler: LRSchedulerCallable) -> type | None:
    """The scheduler class behind a callable: jsonargparse hands over a partial whose positional
    arguments hold the class (after its instantiator); Python users may pass partial(cls, ...)
    or the class itself."""
    if inspect.isclass(lr_scheduler):
        return lr_scheduler
    if isinstance(lr_scheduler, functools.partial):
        for candidate in (lr_scheduler.func, *lr_scheduler.args):
            if inspect.isclass(candidate):
                return candidate
    return None


def keep_loadable_hparams(module: LightningModule, names: tuple[str, ...] = ("optimizer", "lr_scheduler")) -> None:
    """Drop optimizer/scheduler hparams that are Python callables (a class, a partial, a lambda).

    From the CLI they are YAML (class_path + init_args) and stay; from Python they would be pickled
    into the checkpoint, and `load_from_checkpoint(path)` (torch.load with weights_only) refuses to
    unpickle them. The model rebuilds with its default optimizer, which inference never uses.
    `CnnlabModule.save_hyperparameters` calls it every time it records arguments.
    """
    for name in names:
        if callable(module.hparams.get(name)):
            del module.hparams[name]

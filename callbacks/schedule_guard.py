"""Refuse to resume a run whose planned LR schedule is shorter than the training now asked for."""

from lightning.pytorch import Callback
from typing_extensions import override

from cnnlab.errors import CnnlabError


class ScheduleLengthGuard(Callback):
    """A one-cycle schedule restored from a checkpoint keeps the step count it was planned for;
    resuming with a larger max_epochs would crash mid-run with torch's "Tried to step N times".
    Say so before the first step instead."""

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        planned_now = int(trainer.estimated_stepping_batches)
        for config in trainer.lr_scheduler_configs:
            total = getattr(config.scheduler, "total_steps", None)
            if total is not None and total < planned_now:
                raise CnnlabError(
                    f"The learning-rate schedule ({type(config.scheduler).__name__}) restored from the "
                    f"checkpoint was planned for {total} steps, but this run asks for {planned_now} (was "
                    "trainer.max_epochs or the data changed?). Resume with the settings the run started with, "
                    "or start a new run for the longer budget."
                )

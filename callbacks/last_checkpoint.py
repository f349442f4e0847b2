"""`last.ckpt` holds the last epoch, always: what a resume after a kill continues from."""

from pathlib import Path

from lightning.pytorch import Callback
from typing_extensions import override


class LastCheckpoint(Callback):
    """Writes `last.ckpt` at the end of a training epoch in which no checkpoint was saved. Lightning
    2.6's ModelCheckpoint writes `last` only at a step where it also saved a top-k checkpoint, so with
    `save_top_k: 1` an epoch that did not improve the monitored value left `last.ckpt` at the best
    epoch, and `fit --ckpt_path last` after a kill went back to it (found by a fault pass: 5 epochs
    trained, `last.ckpt` at epoch 1). Runs after NonFiniteLossGuard, which stops a non-finite state
    before it is saved."""

    def __init__(self) -> None:
        self._saved_at = -1

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saved_at = trainer.global_step

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        callback = trainer.checkpoint_callback
        if callback is None or not callback.save_last or not callback.dirpath or self._saved_at == trainer.global_step:
            return
        trainer.save_checkpoint(Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")

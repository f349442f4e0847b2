"""`last.ckpt` holds the last epoch, always: what a resume after a kill continues from."""

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint (the CLI's `checkpoint.*` settings), which also writes `last` at the
    end of a training epoch in which it saved nothing. Lightning 2.6 writes `last` only at a step where
    it also saved a top-k checkpoint, so with `save_top_k: 1` an epoch that did not improve the
    monitored value left `last.ckpt` at the best epoch, and `fit --ckpt_path last` after a kill went
    back to it (found by a fault pass: 5 epochs trained, `last.ckpt` at epoch 1). Checkpoint callbacks
    run after the others, so NonFiniteLossGuard has stopped a non-finite state before it is saved."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._saved_at = -1

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saved_at = trainer.global_step  # any save (top-k or last) at this step
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if not self.save_last or not self.dirpath or trainer.fast_dev_run or self._saved_at == trainer.global_step:
            return
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        # weights_only as ModelCheckpoint's own saves (False: a full checkpoint to resume from); left
        # out, Lightning logs "`weights_only` was not set, defaulting to `False`." at every such save.
        trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        self.last_model_path = str(path)  # ModelCheckpoint's own: its next `last` replaces this file

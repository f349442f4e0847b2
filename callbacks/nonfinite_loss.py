"""Stop a run at the first non-finite training loss, before a bad checkpoint can be written."""

from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch import Callback
from typing_extensions import override

from cnnlab.errors import CnnlabError


class NonFiniteLossGuard(Callback):
    """Raise CnnlabError (step, value, last good checkpoint) when the training loss is NaN or inf.

    Raising skips every later checkpoint save, so `last.ckpt` stays the last good state. Under
    DDP the ranks agree first, so all of them stop together instead of one hanging the others.
    """

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        checkpoint = trainer.checkpoint_callback
        last = Path(checkpoint.dirpath or "", "last.ckpt") if checkpoint is not None else None
        kept = (
            f"The last good checkpoint is {last}; resume from it with --ckpt_path last"
            if last is not None and last.is_file()
            else "No checkpoint had been written yet"
        )
        raise CnnlabError(
            f"The training loss became {loss.detach().float().item()} at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {batch_idx}), so the run stopped. {kept}. Lower the "
            "learning rate, add gradient clipping (--trainer.gradient_clip_val 1.0), or check the data "
            "for bad values."
        )

"""Stop a run at the first non-finite training loss or model state (weights, BatchNorm statistics),
before a checkpoint of it can be written: every checkpoint a run keeps is finite, and resuming from the
last one with a lower learning rate goes on from a state that can still train."""

import math
from collections.abc import Mapping
from pathlib import Path

import torch
from lightning.pytorch import Callback
from typing_extensions import override

from cnnlab.errors import CnnlabError

NO_BAD_STEP = -1.0


class NonFiniteLossGuard(Callback):
    """Raise CnnlabError (step, value, last finite checkpoint) when the training loss is NaN or inf, or
    when a checkpoint is about to be written of a model whose parameters or buffers (BatchNorm's
    running mean and variance) are not all finite. A loss can stay finite for a while after the state
    overflowed (a BatchNorm running_var of inf), so the loss alone does not prove a state good.

    Raising skips every later checkpoint save, so `last.ckpt` stays the last finite state.

    On the CPU each step's loss is checked at once. On a GPU, reading the loss back at every step
    would make the CPU wait for the GPU each step, so it could no longer queue the next step while
    the GPU runs this one (on an H200 that wait was a large part of a small CNN's step). There the
    guard notes the first bad step on the device, reads that note back without waiting (a step or
    two later), and waits for it only before a checkpoint is written, before validation and when
    training ends: the run may train a step or two past the bad one, but still stops before any
    checkpoint of it exists. Under DDP the ranks agree at those same points (one collective there,
    none per step), so all of them stop together instead of one hanging the others.

    Args:
        blocking: Check every step at once (True), or as above (False). Default: at once on the CPU,
            as above on any other device.
    """

    def __init__(self, blocking: bool | None = None) -> None:
        self.blocking = blocking
        self._reset()

    def _reset(self) -> None:
        self._first: torch.Tensor | None = None  # on the device: [step, epoch, batch, loss] of the first bad step
        self._host: torch.Tensor | None = None  # its copy on the host (pinned memory under CUDA)
        self._arrived: torch.cuda.Event | None = None  # when the copy in flight has landed (CUDA)
        self._in_flight = False

    @override
    def on_train_start(self, trainer, pl_module) -> None:
        self._reset()

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        blocking = self.blocking if self.blocking is not None else loss.device.type == "cpu"
        if blocking:
            # On the CPU reading the value back costs nothing but the call: a Python float, no tensor op.
            value = float(loss.detach().sum()) if loss.numel() > 1 else float(loss.detach())
            bad = not math.isfinite(value)
            if trainer.world_size > 1:
                bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
            if bad:
                self._raise(trainer, (trainer.global_step, trainer.current_epoch, batch_idx, value))
            return
        # one number, NaN or inf if any element is; float64 keeps step numbers exact (MPS has none)
        value = loss.detach().to(torch.float32 if loss.device.type == "mps" else torch.float64).sum()
        self._note(trainer, value, batch_idx)
        self._poll(trainer)

    # -- the non-blocking check --------------------------------------------------------------

    def _note(self, trainer, value: torch.Tensor, batch_idx: int) -> None:
        """Keep [step, epoch, batch, loss] of the first non-finite loss on the device: only kernels
        are queued here, nothing waits for the GPU."""
        if self._first is None:
            self._first = torch.full((4,), NO_BAD_STEP, dtype=value.dtype, device=value.device)
        fresh = ~torch.isfinite(value) & (self._first[0] == NO_BAD_STEP)
        record = torch.stack(
            [
                torch.full_like(value, trainer.global_step),
                torch.full_like(value, trainer.current_epoch),
                torch.full_like(value, batch_idx),
                value,
            ]
        )
        self._first = torch.where(fresh, record, self._first)

    def _poll(self, trainer) -> None:
        """Read the copy started at an earlier step if it has landed, then start the next one."""
        if self._in_flight:
            if self._arrived is not None and not self._arrived.query():
                return
            self._in_flight = False
            if trainer.world_size == 1 and self._host[0] != NO_BAD_STEP:  # under DDP: at the agreed points only
                self._raise(trainer, tuple(self._host.tolist()))
        if self._host is None:
            cuda = self._first.device.type == "cuda"
            self._host = torch.empty(4, dtype=self._first.dtype, pin_memory=cuda)
            self._arrived = torch.cuda.Event() if cuda else None
        self._host.copy_(self._first, non_blocking=self._arrived is not None)
        if self._arrived is not None:
            self._arrived.record(torch.cuda.current_stream(self._first.device))
        self._in_flight = True

    def _check_now(self, trainer) -> None:
        """Wait for the device's note (and the other ranks'), and raise if any step went bad."""
        if self._first is None:  # checked at every step (or no step yet): the same on every rank
            return
        first = self._first.cpu()
        bad = bool(first[0] != NO_BAD_STEP)
        if trainer.world_size > 1:
            if not trainer.strategy.reduce_boolean_decision(bad, all=False):
                return
        elif not bad:
            return
        self._raise(trainer, tuple(first.tolist()) if bad else None)

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        # Called while the checkpoint is put together, before it is written: raising here writes nothing.
        if trainer.state.fn == "fit":
            self._check_now(trainer)
            self._check_state(trainer, pl_module)

    def _check_state(self, trainer, pl_module) -> None:
        """Every floating-point parameter and buffer finite (one read-back for the whole model)."""
        tensors = [
            (n, t) for n, t in (*pl_module.named_parameters(), *pl_module.named_buffers()) if t.is_floating_point()
        ]
        if not tensors:
            return
        finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
        bad = not bool(finite.all())
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            names = [n for (n, _), ok in zip(tensors, finite.tolist(), strict=True) if not ok][:3]
            self._raise(trainer, None, state=names or ["(on another process)"])

    @override
    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == "fit":
            self._check_now(trainer)

    @override
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check_now(trainer)

    @override
    def on_train_end(self, trainer, pl_module) -> None:
        self._check_now(trainer)

    # -- the error -----------------------------------------------------------------------------

    @staticmethod
    def _raise(trainer, first: tuple[float, float, float, float] | None, state: list[str] | None = None) -> None:
        checkpoint = trainer.checkpoint_callback
        last = Path(checkpoint.dirpath or "", "last.ckpt") if checkpoint is not None else None
        if last is not None and last.is_file():
            step = torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step")
            kept = (
                f"The last finite checkpoint is {last} (step {step}). Resume from it with a lower learning rate: "
                "add --ckpt_path last and the lower rate (--model.optimizer.init_args.lr, and "
                "--model.lr_scheduler.init_args.max_lr for a one-cycle schedule) to the command; settings given "
                "beside --ckpt_path apply from the step it resumes at"
            )
        else:
            kept = "No checkpoint had been written yet; start again with a lower learning rate"
        if state is not None:
            what = f"The model's state became non-finite by step {trainer.global_step} ({', '.join(state)})"
        elif first is not None:
            step, epoch, batch, value = int(first[0]), int(first[1]), int(first[2]), first[3]
            what = f"The training loss became {value} at step {step} (epoch {epoch}, batch {batch})"
        else:
            what = f"The training loss became non-finite on another process by step {trainer.global_step}"
        raise CnnlabError(
            f"{what}, so the run stopped before saving it. {kept}. Gradient clipping (--trainer.gradient_clip_val "
            "1.0) also helps; if the loss is non-finite from the first step, check the data for bad values."
        )

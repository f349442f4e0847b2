"""What every cnnlab LightningModule shares (cnnlab/protocol.py): evaluation steps that return their
per-sample scores to callbacks (`EvalOutput`), so no callback runs a second forward pass; the scores
of the last validation kept with the weights, the yardstick of thresholds at test; the optimizer and
scheduler from the CLI."""

from collections.abc import Callable

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from typing_extensions import override

from cnnlab.gather import gather_ranks
from cnnlab.protocol import Batch, EvalOutput
from lightning_modules.optimization import configure_optimizers


class ScoreReference(nn.Module):
    """Per-sample scores of one validation epoch of every rank, kept as the module's extra state, so
    they travel in the checkpoint with the weights that produced them."""

    def __init__(self) -> None:
        super().__init__()
        self._parts: dict[str, list[torch.Tensor]] = {}
        self.scores: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self._parts = {}

    def update(self, scores: dict[str, torch.Tensor]) -> None:
        for name, values in scores.items():
            self._parts.setdefault(name, []).append(values.detach().float().flatten())

    def finish(self, final: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
        """Gather this epoch's scores over the ranks (every rank must call it) and keep them;
        `final` may recompute them from the whole epoch (scores relative to an epoch-end fit)."""
        local = {name: torch.cat(parts) for name, parts in sorted(self._parts.items())}
        self._parts = {}
        if final is not None:
            local = final(local)
        self.scores = {name: gather_ranks(values).cpu() for name, values in local.items()}

    def get_extra_state(self) -> dict[str, torch.Tensor]:
        return dict(self.scores)

    def set_extra_state(self, state: dict[str, torch.Tensor]) -> None:
        self.scores = dict(state or {})


class CnnlabModule(LightningModule):
    """Base of cnnlab's LightningModules. A subclass provides `per_sample_loss`, `_shared_step(batch,
    stage)` returning the `EvalOutput` of the batch (its mean loss and per-sample scores), and calls
    `save_hyperparameters()` and `keep_loadable_hparams(self)` in its own `__init__`."""

    primary_score = "loss"

    def __init__(self, optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None) -> None:
        super().__init__()
        # hparams hold the YAML of these two (for checkpoints); the callables themselves stay here.
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.validation_reference = ScoreReference()

    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        raise NotImplementedError

    # -- the protocol ------------------------------------------------------------------------

    def reference_scores(self) -> dict[str, torch.Tensor]:
        return self.validation_reference.scores

    def final_reference(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's validation scores at epoch end, after the module's own epoch-end fits; a
        module whose scores depend on such a fit recomputes them here."""
        return scores

    # -- steps ---------------------------------------------------------------------------------

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")["loss"]

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> EvalOutput:
        return self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> EvalOutput:
        return self._shared_step(batch, "test")

    @override
    def on_validation_epoch_start(self) -> None:
        self.validation_reference.reset()

    @override
    def on_validation_batch_end(self, outputs: EvalOutput, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_reference.update(outputs["scores"])

    @override
    def on_validation_epoch_end(self) -> None:
        self.validation_reference.finish(self.final_reference)

    @override
    def configure_optimizers(self):
        return configure_optimizers(self, self.optimizer, self.lr_scheduler)

"""What every cnnlab LightningModule shares (cnnlab/protocol.py): evaluation steps that return their
per-sample scores to callbacks (`EvalOutput`), so no callback runs a second forward pass; the scores
of the last validation kept with the weights, the yardstick of thresholds at test; metrics handed to
Lightning only when they are written (training values at the logging interval, epoch metrics once an
epoch); the optimizer and scheduler from the CLI, kept out of checkpoints when they are Python
callables; a default `predict_step` of per-sample scores."""

import inspect
from collections.abc import Callable, Iterator

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import Metric
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.gather import gather_ranks
from cnnlab.protocol import Batch, EvalOutput, ImageData, missing
from lightning_modules.optimization import configure_optimizers, keep_loadable_hparams


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
    `save_hyperparameters()` in its own `__init__` (after `super().__init__`, in every subclass)."""

    primary_score = "loss"
    prog_bar = ("loss", "acc", "miou", "psnr")  # epoch metrics shown in the progress bar

    def __init__(self, optimizer: OptimizerCallable, lr_scheduler: LRSchedulerCallable | None) -> None:
        super().__init__()
        # hparams hold the YAML of these two (for checkpoints); the callables themselves stay here.
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.validation_reference = ScoreReference()

    @override
    def save_hyperparameters(self, *args, ignore=None, frame=None, logger: bool = True) -> None:
        """Lightning's, minus an optimizer or scheduler given as a Python callable (`keep_loadable_hparams`),
        at every call: a subclass's own call records its parents' arguments again, and a partial among
        them would make `load_from_checkpoint(path)` fail to unpickle the checkpoint."""
        frame = frame or inspect.currentframe().f_back  # the caller's __init__, whose arguments are recorded
        super().save_hyperparameters(*args, ignore=ignore, frame=frame, logger=logger)
        keep_loadable_hparams(self)

    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        raise NotImplementedError

    def epoch_metrics(self, stage: str) -> dict[str, Metric]:
        """The torchmetrics objects a stage updates in its steps, by name: logged as `<stage>/<name>`
        once at the end of the stage's epoch, then reset."""
        return {}

    def running_trainer(self) -> Trainer | None:
        """The Trainer this module runs in, or None (built by hand, or loaded from a checkpoint and not
        yet fitted): `LightningModule.trainer` raises when none is attached."""
        try:
            return self.trainer
        except RuntimeError:
            return None

    # -- logging ---------------------------------------------------------------------------------

    def log_step(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """A training-step value, handed to Lightning only on the steps its loggers write (every
        `log_every_n_steps`, and an epoch's last): each `self.log` call costs Lightning about a
        millisecond of bookkeeping on the CPU (measured: benchmarks/trainer_overhead.py), as much as a
        small model's whole step, and values logged in between were never written anyway."""
        trainer = self.running_trainer()
        if trainer is not None and trainer.training:
            every = max(1, int(trainer.log_every_n_steps or 1))
            if (self.global_step + 1) % every and not trainer.is_last_batch:
                return
        self.log(name, value, prog_bar=prog_bar)

    def log_epoch(self, stage: str) -> None:
        for name, metric in self.epoch_metrics(stage).items():
            if metric.update_called:
                self.log(f"{stage}/{name}", metric.compute(), prog_bar=name in self.prog_bar)
            # Outside inference mode: states reset inside it would be inference tensors, which a later
            # update outside it (fit's validation after a `validate`) may not change in place.
            with torch.inference_mode(False):
                metric.reset()

    # -- the protocol ------------------------------------------------------------------------

    def reference_scores(self) -> dict[str, torch.Tensor]:
        return self.validation_reference.scores

    def final_reference(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This rank's validation scores at epoch end, after the module's own epoch-end fits; a
        module whose scores depend on such a fit recomputes them here."""
        return scores

    def reads_training_images(self, score: str) -> bool:
        """Whether this run's DataModule hands over the training images (ImageData), which the
        scores fitted to the normal training set need. A model trained without one (a plain Trainer
        on bare DataLoaders) goes on without those scores, with one warning naming `score`."""
        data = getattr(self.running_trainer(), "datamodule", None)
        if data is not None and not missing(data, ImageData):
            return True
        if not getattr(self, "_warned_no_training_images", False):
            self._warned_no_training_images = True
            rank_zero_warn(
                f"{type(self).__name__}: the {score} anomaly score is fitted to the normal training images, which it "
                "reads from a cnnlab DataModule (ImageData in cnnlab/protocol.py); this run has none, so that score "
                "is left out. Train with a DataModule from datamodules/ to have it."
            )
        return False

    def training_images(
        self, indices: Callable[[int], torch.Tensor] | None = None, batch_size: int = 500
    ) -> Iterator[torch.Tensor]:
        """The training split as the model sees it at evaluation (normal samples only in an anomaly
        run; never augmented), in chunks on the model's device, read through the DataModule's
        `ImageData.samples` and `model_input`: the one way a model reads data outside its batches,
        for what it fits to the normal training set (a k-NN bank, a Deep SVDD centre). `indices(n)`
        picks which of the n images (default: all)."""
        data = getattr(self.running_trainer(), "datamodule", None)
        if data is None or missing(data, ImageData):
            raise CnnlabError(
                f"{type(self).__name__} fits its anomaly scores to the normal training images, which it reads from "
                "a cnnlab DataModule (ImageData in cnnlab/protocol.py); this run has "
                f"{type(data).__name__ if data is not None else 'no DataModule'}. Train it with a DataModule from "
                "datamodules/ (data.class_path in the config)."
            )
        images, _ = data.samples("train")
        chosen = torch.arange(len(images)) if indices is None else indices(len(images))
        for part in chosen.split(batch_size):
            yield data.model_input(images[part].to(self.device))

    @torch.no_grad()
    def over_training_images(
        self, compute: Callable[[torch.Tensor], torch.Tensor], indices: Callable[[int], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`compute` (e.g. `encode`) over `training_images`, in eval mode and under the run's precision
        (the autocast its evaluation steps run in), concatenated as float32."""
        training = self.training
        self.eval()
        try:
            with self.trainer.precision_plugin.forward_context():
                return torch.cat([compute(images).float() for images in self.training_images(indices)])
        finally:
            self.train(training)

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
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Per-sample results of the batch (protocol: Predictions): `score_<name>` for each of the
        model's `anomaly_scores` (without them: `score_loss`, its `per_sample_loss`), float32 [B], and
        `label` where the targets are class labels [B]. A model adds what it predicts (a classifier's
        `probs` and `pred`, a latent model's `latent`)."""
        anomaly_scores = getattr(self, "anomaly_scores", None)
        scores = anomaly_scores(batch) if callable(anomaly_scores) else {"loss": self.per_sample_loss(batch)}
        targets = batch[1]
        labels = {"label": targets} if targets.dim() == 1 and not targets.is_floating_point() else {}
        return labels | {f"score_{name}": values.float() for name, values in scores.items()}

    @override
    def on_train_epoch_end(self) -> None:
        self.log_epoch("train")

    @override
    def on_validation_epoch_start(self) -> None:
        self.validation_reference.reset()

    @override
    def on_validation_batch_end(self, outputs: EvalOutput, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_reference.update(outputs["scores"])

    @override
    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")
        self.validation_reference.finish(self.final_reference)

    @override
    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    @override
    def configure_optimizers(self):
        return configure_optimizers(self, self.optimizer, self.lr_scheduler)

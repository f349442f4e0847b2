"""What every cnnlab LightningModule shares (cnnlab/protocol.py): evaluation steps that return their
per-sample scores to callbacks (`EvalOutput`), so no callback runs a second forward pass; the scores
of the last validation kept with the weights; in an anomaly run, the anomaly metrics of every score
(AUROC, AUPRC, best F1 and its threshold: cnnlab/anomaly_metrics.py) at every validation and test,
whatever callbacks run, and the thresholds chosen on validation kept in the checkpoint; metrics handed to
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

from cnnlab.anomaly_metrics import anomaly_report
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


class AnomalyEvaluation:
    """The scores and anomaly labels of one evaluation epoch, batch by batch on each rank; `finish`
    gathers every rank's share (each sample once: cnnlab's evaluation samplers never pad)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._scores: dict[str, list[torch.Tensor]] = {}
        self._anomalous: list[torch.Tensor] = []

    @property
    def active(self) -> bool:
        return bool(self._anomalous)

    def update(self, scores: dict[str, torch.Tensor], is_anomaly: torch.Tensor) -> None:
        for name, values in scores.items():
            self._scores.setdefault(name, []).append(values.detach().float().flatten())
        self._anomalous.append(is_anomaly.detach().bool().flatten())

    def finish(self, trainer: Trainer) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(every score [N], is_anomaly [N]) of all ranks; every rank must call it."""
        names = sorted(self._scores)
        if trainer.world_size > 1:  # every rank gathers the same names, or the gathers would hang
            names = trainer.strategy.broadcast(names, src=0)
        device = trainer.strategy.root_device
        anomalous = torch.cat(self._anomalous) if self._anomalous else torch.zeros(0, dtype=torch.bool)
        anomalous = gather_ranks(anomalous.to(device)).cpu()
        scores = {}
        for name in names:
            parts = self._scores.get(name, [])
            local = torch.cat(parts) if parts else torch.zeros(0)
            scores[name] = gather_ranks(local.to(device)).cpu()
        self.reset()
        return scores, anomalous


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
        self.anomaly_evaluation = AnomalyEvaluation()
        # Per score, the threshold of the best F1 on the last validation: the operating point a test
        # reports precision, recall and F1 at (saved in the checkpoint by on_save_checkpoint).
        self.anomaly_thresholds: dict[str, float] = {}
        self.anomaly_results: dict[str, dict[str, float]] = {}  # stage -> the metrics of its last epoch
        self._said_undefined = False

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
        trainer = self.running_trainer()
        for name, metric in self.epoch_metrics(stage).items():
            updated = metric.update_called
            if trainer is not None and trainer.world_size > 1:
                # A rank may have seen no sample that counts (no normal image in its share, in an anomaly
                # run): every rank computes where any updated, or those that do would wait in its sync.
                updated = trainer.strategy.reduce_boolean_decision(updated, all=False)
            if updated:
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

    # -- anomaly runs ------------------------------------------------------------------------------

    def anomaly_run(self) -> bool:
        """Whether this run's data has anomaly labels (a DataModule with `normal_classes`): then its
        validation and test report the anomaly metrics of every score the steps return (an
        AnomalyModel's `anomaly_scores`; any other model's per-sample loss, which ranks samples too)."""
        data = getattr(self.running_trainer(), "datamodule", None)
        return getattr(data, "normal_classes", None) is not None and callable(getattr(data, "is_anomaly", None))

    def normal_mask(self, targets: torch.Tensor) -> torch.Tensor | None:
        """Which samples of an evaluation batch are normal, in a run whose data has normal classes
        (validation and test hold anomalies there); None elsewhere (every sample counts)."""
        data = getattr(self.running_trainer(), "datamodule", None)
        if getattr(data, "normal_classes", None) is None or targets.dim() != 1 or targets.is_floating_point():
            return None
        return ~data.is_anomaly(targets)

    def update_on_normal(self, metric: Metric, per_sample: torch.Tensor, targets: torch.Tensor) -> None:
        """A mean metric of an evaluation stage (`<stage>/loss`) over the batch's normal samples only in
        an anomaly run (the loss the model is trained to lower; anomalies are judged by the anomaly
        metrics), over all of them otherwise. `per_sample` is [B], or a scalar for the whole batch."""
        keep = self.normal_mask(targets)
        if per_sample.dim() == 0:
            count = len(targets) if keep is None else int(keep.sum())
            if count:
                metric.update(per_sample, weight=count)
            return
        values = per_sample if keep is None else per_sample[keep]
        if len(values):
            metric.update(values.mean(), weight=len(values))

    def _report_anomalies(self, stage: str) -> None:
        """Every score's AUROC, AUPRC, best F1 and its threshold over the whole split (all ranks, each
        sample once), logged as `<stage>/<score>_<metric>`, the primary score's again as `<stage>/auroc`,
        `auprc`, `best_f1`; a test also logs `<stage>/<score>_precision`, `_recall`, `_f1` at the
        threshold chosen on validation, and `<stage>/f1` for the primary score. A validation keeps
        its best-F1 thresholds for the test."""
        if not self.anomaly_evaluation.active and not self.anomaly_run():
            return
        trainer = self.trainer
        scores, anomalous = self.anomaly_evaluation.finish(trainer)
        if not scores:
            return
        if anomalous.all() or not anomalous.any():
            self._say_undefined(stage, anomalous)
        metrics: dict[str, float] = {}
        for name, values in scores.items():
            threshold = self.anomaly_thresholds.get(name) if stage == "test" else None
            report = anomaly_report(values, anomalous, threshold)
            metrics |= {f"{stage}/{name}_{key}": value for key, value in report.items()}
        primary = getattr(self, "primary_score", "loss")
        for key in ("auroc", "auprc", "best_f1", "f1"):
            if f"{stage}/{primary}_{key}" in metrics:
                metrics[f"{stage}/{key}"] = metrics[f"{stage}/{primary}_{key}"]
        if stage == "val" and not trainer.sanity_checking:
            self.anomaly_thresholds = {
                name: metrics[f"val/{name}_best_f1_threshold"]
                for name in scores
                if metrics[f"val/{name}_best_f1_threshold"] == metrics[f"val/{name}_best_f1_threshold"]  # not NaN
            }
        self.anomaly_results[stage] = metrics
        # Every rank computed the same values from the gathered scores; 'max' keeps them exact where
        # Lightning syncs (a mean of equal floats may round).
        for name, value in metrics.items():
            self.log(name, value, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")

    def _say_undefined(self, stage: str, anomalous: torch.Tensor) -> None:
        if self._said_undefined:
            return
        self._said_undefined = True
        kind = "anomalous" if len(anomalous) and bool(anomalous.all()) else "normal"
        rank_zero_warn(
            f"{type(self).__name__}: AUROC is undefined: the {stage} split's {len(anomalous)} samples are all {kind}, "
            "and AUROC, AUPRC and F1 need both normal and anomalous samples. They are logged as NaN "
            f"({stage}/auroc and each score's). Evaluate on a split that holds both: more samples "
            "(data.max_eval_samples) or normal_classes that leave some classes out."
        )

    @override
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["anomaly_thresholds"] = dict(self.anomaly_thresholds)

    @override
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.anomaly_thresholds = dict(checkpoint.get("anomaly_thresholds", {}))

    def reads_training_images(self, score: str) -> bool:
        """Whether this run's DataModule hands over the training images (ImageData), which the
        scores fitted to the normal training set need. A model trained without one (a plain Trainer
        on bare DataLoaders) goes on without those fits (a k-NN score is left out, a fitted yardstick
        keeps its unfitted default), with one warning naming `score`."""
        data = getattr(self.running_trainer(), "datamodule", None)
        if data is not None and not missing(data, ImageData):
            return True
        if not getattr(self, "_warned_no_training_images", False):
            self._warned_no_training_images = True
            rank_zero_warn(
                f"{type(self).__name__}: the {score} anomaly score is fitted to the normal training images, which it "
                "reads from a cnnlab DataModule (ImageData in cnnlab/protocol.py); this run has none, so the scores "
                "fitted there go without the fit (a k-NN score is left out, a Gaussian or Dirichlet keeps its "
                "unfitted default). Train with a DataModule from datamodules/ to have them."
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
        self.anomaly_evaluation.reset()

    @override
    def on_test_epoch_start(self) -> None:
        self.anomaly_evaluation.reset()

    def _collect_anomalies(self, outputs: EvalOutput, batch: Batch) -> None:
        normal = self.normal_mask(batch[1])  # None unless the data has normal classes and labels
        if normal is not None and outputs.get("scores"):
            self.anomaly_evaluation.update(outputs["scores"], ~normal)

    @override
    def on_validation_batch_end(self, outputs: EvalOutput, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validation_reference.update(outputs["scores"])
        self._collect_anomalies(outputs, batch)

    @override
    def on_test_batch_end(self, outputs: EvalOutput, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect_anomalies(outputs, batch)

    @override
    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")
        self.validation_reference.finish(self.final_reference)
        self._report_anomalies("val")

    @override
    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")
        self._report_anomalies("test")

    @override
    def configure_optimizers(self):
        return configure_optimizers(self, self.optimizer, self.lr_scheduler)

"""ImageClassifier: trains a classifier backbone (networks/classifiers.py) with cross-entropy."""

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from cnnlab.protocol import Batch, EvalOutput
from lightning_modules.base import CnnlabModule
from networks.classifiers import Backbone, build_backbone


class ImageClassifier(CnnlabModule):
    """An image classifier with a selectable backbone.

    Args:
        backbone: mlp (fully connected baseline), lenet5 (LeCun et al. 1998), alexnet (AlexNet
            scaled to 28-32 px), cnn (small conv-BN-ReLU net for MNIST), plain (three conv-BN-ReLU-pool
            stages), resnet (residual CNN).
        image_shape: (channels, height, width); linked from the DataModule.
        num_classes: Linked from the DataModule.
        width: Channels (or hidden units) of the first layer; None keeps the backbone's default.
        dropout: Dropout before the classifier head; None keeps the backbone's default.
        label_smoothing: Cross-entropy label smoothing (Szegedy et al. 2016) of the training loss.
        optimizer: Optimizer factory (class_path + init_args in YAML).
        lr_scheduler: Scheduler factory; OneCycleLR gets total_steps from the trainer.
    """

    def __init__(
        self,
        backbone: Backbone = "cnn",
        image_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        width: int | None = None,
        dropout: float | None = None,
        label_smoothing: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.save_hyperparameters()
        self.net = build_backbone(backbone, image_shape, num_classes, width, dropout)
        # NHWC is what oneDNN (CPU) and tensor cores (GPU) convolve fastest: the SmallCNN trains in about
        # 0.8x the time of NCHW on 2 CPU cores (benchmarks/README.md, Seeds per hour: the plain reference).
        self.to(memory_format=torch.channels_last)
        for stage in ("val", "test"):
            # validate_args off: its per-batch input checks cost ~2% of a small CNN's CPU step.
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro", validate_args=False))
        # Training accuracy as two running counts on the device: a torchmetrics update costs ~0.1 ms a
        # step on the CPU, as much as a small model's step (benchmarks/trainer_overhead.py).
        # Plain attributes, not buffers: DDP would copy rank zero's buffers over the others' every step.
        self._train_hits: torch.Tensor | None = None
        self._train_seen = 0
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_acc_best = MaxMetric()

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=torch.channels_last))

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """Cross-entropy of each sample (no label smoothing), float32: [B]."""
        images, labels = batch
        return F.cross_entropy(self(images).float(), labels, reduction="none")

    def feature_layer(self) -> nn.Conv2d | None:
        return self.net.input_layer()

    def epoch_metrics(self, stage: str) -> dict:
        return (
            {} if stage == "train" else {"acc": getattr(self, f"{stage}_acc"), "loss": getattr(self, f"{stage}_loss")}
        )

    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        images, labels = batch
        logits = self(images)
        if stage == "train":  # the per-step curve; epoch means are for val/test
            hits = (logits.detach().argmax(1) == labels).sum()
            self._train_hits = hits if self._train_hits is None else self._train_hits + hits
            self._train_seen += len(labels)
            # float32 cross-entropy: logits may be fp16/bf16 under autocast.
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=self.hparams.label_smoothing)
            self.log_step("train/loss", loss, prog_bar=True)
            return {"loss": loss}
        # The epoch's accuracy and loss, logged at its end, over the normal images only in an anomaly run
        # (the classes the model was trained on); MeanMetric weighs by samples, exact across ranks.
        normal = self.normal_mask(labels)
        accuracy = getattr(self, f"{stage}_acc")
        if normal is None:
            accuracy.update(logits, labels)
        elif normal.any():
            accuracy.update(logits[normal], labels[normal])
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
        self.update_on_normal(getattr(self, f"{stage}_loss"), per_sample, labels)
        return {"loss": per_sample.mean(), "scores": {"loss": per_sample}}

    @override
    def on_train_epoch_end(self) -> None:
        if self._train_seen:
            # the mean of the ranks' accuracies: exact, as every rank trains on as many images
            accuracy = self._train_hits.float() / self._train_seen
            self.log("train/acc", accuracy, prog_bar=True, sync_dist=self.trainer.world_size > 1)
        self._train_hits, self._train_seen = None, 0
        super().on_train_epoch_end()

    @override
    def on_train_start(self) -> None:
        # The sanity check fills val metrics with an untrained model's numbers; forget them.
        self.val_acc_best.reset()

    @override
    def on_validation_epoch_end(self) -> None:
        if self.val_acc.update_called:
            self.val_acc_best(self.val_acc.compute())
            self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True)
        super().on_validation_epoch_end()

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities `probs` [B, K], the predicted class `pred`, the `label` and the
        per-sample cross-entropy `score_loss` (= per_sample_loss) of the batch."""
        images, labels = batch
        logits = self(images).float()
        probs = logits.softmax(dim=1)
        loss = F.cross_entropy(logits, labels, reduction="none")
        return {"probs": probs, "pred": probs.argmax(dim=1), "label": labels, "score_loss": loss}

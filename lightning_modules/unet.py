"""UNetModule: trains networks/unet.py's UNet for semantic segmentation (a class per pixel) or for
denoising (noisy image in, clean image out)."""

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MaxMetric, MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.protocol import Batch, EvalOutput
from lightning_modules.base import CnnlabModule
from networks.blocks import Upsampling
from networks.unet import UNet

Task = Literal["segmentation", "denoise"]
STAGES = ("train", "val", "test")


def iou_and_dice(confmat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) from a confusion matrix
    [true, predicted] of pixel counts; NaN for a class neither present nor predicted."""
    confmat = confmat.double()
    tp = confmat.diag()
    wrong = confmat.sum(0) + confmat.sum(1) - 2 * tp  # FP + FN
    nan = torch.tensor(float("nan"), dtype=confmat.dtype, device=confmat.device)
    seen = (tp + wrong) > 0
    iou = torch.where(seen, tp / (tp + wrong).clamp(min=1), nan)
    dice = torch.where(seen, 2 * tp / (2 * tp + wrong).clamp(min=1), nan)
    return iou.float(), dice.float()


def soft_dice(probs: torch.Tensor, masks: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice of each sample (Milletari et al. 2016), averaged over the foreground classes: [B].
    `smooth` makes a class absent from both target and prediction score 1, not 0/0."""
    target = F.one_hot(masks, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    overlap = (probs * target).sum((2, 3))
    total = probs.sum((2, 3)) + target.sum((2, 3))
    return ((2 * overlap + smooth) / (total + smooth))[:, 1:].mean(1)


class UNetModule(CnnlabModule):
    """A UNet trained for segmentation or denoising; `task` says which, and what a batch holds.

    Batches are (inputs, targets):
        segmentation: images [B, C, H, W] and int64 masks [B, H, W] (0 = background, class k > 0),
            e.g. from MNISTScenesDataModule. Metrics: IoU and Dice per class from the pixels of the
            whole split (not averaged per image), their means over the foreground classes
            (`<stage>/miou`, `<stage>/dice`), and `<stage>/iou_<class>`, `<stage>/dice_<class>`.
        denoise: noisy and clean images [B, C, H, W] in [0, 1], from any DataModule with data.noise
            set. Metrics: PSNR (mean over images) and SSIM of the output, and `<stage>/psnr_noisy`,
            the noisy input's PSNR, for reference.

    Args:
        task: segmentation or denoise.
        image_shape: (channels, height, width); linked from the DataModule.
        num_classes: Segmentation classes, background included; linked from the DataModule (unused
            by denoise).
        class_names: Names of the classes (per-class metric names); linked from the DataModule.
        depth: Downsamplings of the UNet (4 in the paper; 3 covers a 28-35 px digit at 64x64).
        base_channels: Channels of the first level (64 in the paper).
        upsample: bilinear or nearest (+ 1x1 conv), or transposed (the paper's learned 2x2 transposed conv).
        dice_weight: Segmentation loss = cross-entropy + dice_weight * (1 - soft Dice over the
            foreground classes); Dice counters the background's majority of pixels.
        residual: Denoise: the UNet predicts the correction added to the noisy input (residual
            learning, as DnCNN, Zhang et al. 2017) instead of the clean image itself.
        optimizer: Optimizer factory (class_path + init_args in YAML).
        lr_scheduler: Scheduler factory; OneCycleLR gets total_steps from the trainer.
    """

    def __init__(
        self,
        task: Task = "segmentation",
        image_shape: tuple[int, int, int] = (1, 64, 64),
        num_classes: int = 11,
        class_names: tuple[str, ...] | None = None,
        depth: int = 3,
        base_channels: int = 16,
        upsample: Upsampling = "bilinear",
        dice_weight: float = 0.0,
        residual: bool = True,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.save_hyperparameters()
        if task not in ("segmentation", "denoise"):
            raise CnnlabError(f"model.task is '{task}'; choose 'segmentation' or 'denoise'.")
        if task == "segmentation" and num_classes < 2:
            raise CnnlabError(
                f"model.num_classes is {num_classes}, but segmentation needs background and at least one "
                "class. It is linked from the DataModule: use one whose targets are masks (MNISTScenesDataModule)."
            )
        self.task, self.num_classes = task, num_classes
        channels = image_shape[0]
        self.net = UNet(channels, num_classes if task == "segmentation" else channels, depth, base_channels, upsample)
        for stage in STAGES:
            if task == "segmentation":
                setattr(self, f"{stage}_confmat", MulticlassConfusionMatrix(num_classes, validate_args=False))
            else:
                # dim: PSNR of each image, then the mean over images (the denoising literature's figure)
                setattr(self, f"{stage}_psnr", PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)))
                if stage != "train":
                    setattr(self, f"{stage}_psnr_noisy", PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)))
                    setattr(self, f"{stage}_ssim", StructuralSimilarityIndexMeasure(data_range=1.0))
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_best = MaxMetric()  # of val/miou or val/psnr

    @override
    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Segmentation: logits [B, classes, H, W]; denoise: the clean estimate [B, C, H, W]."""
        out = self.net(inputs)
        return inputs + out if self.task == "denoise" and self.hparams.residual else out

    def _losses(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # float32: outputs may be fp16/bf16 under autocast, and sums over 4096 pixels overflow fp16.
        outputs = outputs.float()
        if self.task == "denoise":
            return (outputs - targets.float()).square().mean((1, 2, 3))
        losses = F.cross_entropy(outputs, targets, reduction="none").mean((1, 2))
        if self.hparams.dice_weight:
            losses = losses + self.hparams.dice_weight * (1 - soft_dice(outputs.softmax(1), targets))
        return losses

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """The training loss of each sample (cross-entropy (+ Dice) or MSE), float32: [B]."""
        inputs, targets = batch
        return self._losses(self(inputs), targets)

    def feature_layer(self) -> nn.Conv2d:
        return self.net.input_layer()

    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        inputs, targets = batch
        outputs = self(inputs)
        losses = self._losses(outputs, targets)
        loss = losses.mean()
        if self.task == "segmentation":
            getattr(self, f"{stage}_confmat").update(outputs.argmax(1), targets)
        else:
            denoised = outputs.detach().float().clamp(0, 1)
            getattr(self, f"{stage}_psnr").update(denoised, targets)
            if stage != "train":
                getattr(self, f"{stage}_psnr_noisy").update(inputs.float(), targets)
                getattr(self, f"{stage}_ssim").update(denoised, targets.float())
        if stage == "train":
            self.log_step("train/loss", loss, prog_bar=True)
            return {"loss": loss}
        # MeanMetric weighs by samples, exact across ranks and a short last batch
        getattr(self, f"{stage}_loss").update(loss, weight=len(inputs))
        return {"loss": loss, "scores": {"loss": losses.detach()}}

    def epoch_metrics(self, stage: str) -> dict:
        return {} if stage == "train" else {"loss": getattr(self, f"{stage}_loss")}

    def _log_epoch_metrics(self, stage: str) -> torch.Tensor:
        """Compute, log and reset the stage's image metrics; return its headline figure."""
        if self.task == "denoise":
            psnr = getattr(self, f"{stage}_psnr")
            headline = psnr.compute()
            self.log(f"{stage}/psnr", headline, prog_bar=True)
            psnr.reset()
            if stage != "train":
                for name in ("psnr_noisy", "ssim"):
                    metric = getattr(self, f"{stage}_{name}")
                    self.log(f"{stage}/{name}", metric.compute())
                    metric.reset()
            return headline
        confmat = getattr(self, f"{stage}_confmat")
        iou, dice = iou_and_dice(confmat.compute())
        confmat.reset()
        headline = iou[1:].nanmean()  # the foreground classes
        self.log(f"{stage}/miou", headline, prog_bar=True)
        self.log(f"{stage}/dice", dice[1:].nanmean())
        if stage != "train":
            for k, name in enumerate(self._class_names()):
                if k > 0 and not iou[k].isnan():
                    self.log(f"{stage}/iou_{name}", iou[k])
                    self.log(f"{stage}/dice_{name}", dice[k])
        return headline

    def _class_names(self) -> list[str]:
        """The DataModule's class names (linked; scenes: background, 0..9), else indices."""
        names = list(self.hparams.get("class_names") or ())
        if len(names) != self.num_classes:
            names = [f"class{k}" for k in range(self.num_classes)]
        return [str(name).replace(" ", "_") for name in names]

    @override
    def on_train_start(self) -> None:
        # The sanity check fills val metrics with an untrained model's numbers; forget them.
        self.val_best.reset()

    @override
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._log_epoch_metrics("train")

    @override
    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        headline = self._log_epoch_metrics("val")
        self.val_best(headline)
        self.log(f"val/{'miou' if self.task == 'segmentation' else 'psnr'}_best", self.val_best.compute())

    @override
    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self._log_epoch_metrics("test")

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """Segmentation: {mask, target} uint8 [B, H, W] and each scene's foreground mean IoU `miou`
        (NaN for a scene with no foreground in either). Denoise: {denoised} uint8 [B, C, H, W] and
        each image's `psnr` and `psnr_noisy` in dB."""
        inputs, targets = batch
        outputs = self(inputs).float()
        if self.task == "segmentation":
            pred = outputs.argmax(1)
            k = self.num_classes
            pred_hot, true_hot = F.one_hot(pred, k)[..., 1:], F.one_hot(targets, k)[..., 1:]
            inter = (pred_hot & true_hot).sum((1, 2)).float()
            union = (pred_hot | true_hot).sum((1, 2)).float()
            miou = (inter / union).nanmean(1)  # classes in neither are 0/0 = NaN and skipped
            return {"mask": pred.to(torch.uint8), "target": targets.to(torch.uint8), "miou": miou}
        denoised = outputs.clamp(0, 1)
        targets = targets.float()
        psnr = {
            name: peak_signal_noise_ratio(images.float(), targets, data_range=1.0, reduction="none", dim=(1, 2, 3))
            for name, images in (("psnr", denoised), ("psnr_noisy", inputs))
        }
        return {"denoised": (denoised * 255).round().to(torch.uint8), **psnr}

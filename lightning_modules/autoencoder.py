"""AutoEncoder: a convolutional encoder to a latent code and a decoder back (networks/autoencoder.py),
trained on the reconstruction error of each image; its anomaly scores are that error, the code's
distance to the codes of (normal) validation images, and the two combined."""

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from typing_extensions import override

from cnnlab.errors import CnnlabError
from lightning_modules.gaussian_fit import GaussianFit
from lightning_modules.optimization import configure_optimizers, keep_loadable_hparams
from networks.autoencoder import ConvDecoder, ConvEncoder
from networks.blocks import Upsampling

ReconstructionLoss = Literal["bce", "mse"]
Batch = tuple[torch.Tensor, torch.Tensor]


class AutoEncoder(LightningModule):
    """A deterministic convolutional autoencoder.

    Args:
        image_shape: (channels, height, width); linked from the DataModule.
        latent_dim: Size of the code.
        channels: Channels of the encoder layers, one layer each (each halves height and width);
            the decoder mirrors them.
        upsample: How the decoder upsamples: nearest or bilinear interpolation then a conv, or a
            transposed convolution.
        reconstruction_loss: bce (Bernoulli likelihood on pixels in [0, 1], summed over pixels: nats
            per image; needs data.normalize false) or mse (squared error summed over pixels).
        optimizer: Optimizer factory (class_path + init_args in YAML).
        lr_scheduler: Scheduler factory; OneCycleLR gets total_steps from the trainer.
    """

    latent_heads = 1  # encoder outputs per latent dimension (the VAE has two: mean and log-variance)

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 16,
        channels: tuple[int, ...] = (32, 64, 128),
        upsample: Upsampling = "nearest",
        reconstruction_loss: ReconstructionLoss = "bce",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        keep_loadable_hparams(self)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        if latent_dim < 1 or not channels:
            raise CnnlabError(
                f"model.latent_dim is {latent_dim} and model.channels is {list(channels)}, but the code needs at "
                "least one dimension and the encoder at least one layer. Use e.g. latent_dim 16, channels "
                "[32, 64, 128]."
            )
        self.latent_dim = latent_dim
        self.reconstruction_loss = reconstruction_loss
        self.encoder = ConvEncoder(image_shape, channels, latent_dim * self.latent_heads)
        self.decoder = ConvDecoder(image_shape, channels, latent_dim, upsample)
        # NHWC is what oneDNN (CPU) and tensor cores (GPU) convolve fastest: 1.1-1.5x less CPU time per
        # training step here (benchmarks/autoencoder_speed.py).
        self.to(memory_format=torch.channels_last)
        # Fitted at each validation epoch end to the validation images (normal ones in an anomaly run):
        # the yardsticks of the latent_distance and combined anomaly scores.
        self.latent_gaussian = GaussianFit(latent_dim)
        self.loss_gaussian = GaussianFit(1)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    # -- the protocol of DESIGN.md -----------------------------------------------------------

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """The code of each image: [B, latent_dim]."""
        return self.encoder(images.contiguous(memory_format=torch.channels_last))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in the data range the model was trained on (probabilities for bce)."""
        out = self.decoder(z)
        return torch.sigmoid(out) if self.reconstruction_loss == "bce" else out

    @override
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction of each image, in data range."""
        return self.decode(self.encode(images))

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """Reconstruction error of each image (summed over pixels), float32: [B]."""
        images, _ = batch
        return self.reconstruction_error(self.decoder(self.encode(images)), images)

    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-image anomaly scores, float32 [B] each, larger = more anomalous.

        loss: the reconstruction error (= per_sample_loss). latent_distance: squared Mahalanobis
        distance of the code to a Gaussian fitted to the codes of the validation images at the last
        validation (in an anomaly run those are normal images only). combined: both in units of
        their spread on those validation images, summed (see `combine_scores`).
        """
        images, _ = batch
        z = self.encode(images)
        loss = self.reconstruction_error(self.decoder(z), images)
        return self.combine_scores({"loss": loss, "latent_distance": self.latent_gaussian.distance(z)})

    def combine_scores(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add `combined`: the loss standardised with its validation mean and std, plus the latent
        distance standardised as a chi-square with latent_dim degrees of freedom (mean D, variance 2D,
        what it is for codes that follow the fitted Gaussian). Anomalies can stand out in either
        space or in both, and the sum counts both."""
        dim = self.latent_dim
        distance = (scores["latent_distance"] - dim) / (2 * dim) ** 0.5
        return {**scores, "combined": self.loss_gaussian.standardize(scores["loss"]) + distance}

    # -- training ------------------------------------------------------------------------------

    def reconstruction_error(self, output: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Per-image error of the decoder's raw output (logits for bce), summed over pixels.

        float32 on purpose: under fp16 autocast the logits are half precision, and a sum of 784-3072
        terms of up to ~10 nats each would lose digits (or overflow, for a poor model's MSE).
        """
        output, images = output.float(), images.float()
        if self.reconstruction_loss == "bce":
            error = F.binary_cross_entropy_with_logits(output, images, reduction="none")
        else:
            error = (output - images).square()
        return error.flatten(1).sum(1)

    def _shared_step(self, batch: Batch, stage: str) -> torch.Tensor:
        images, _ = batch
        z = self.encode(images)
        errors = self.reconstruction_error(self.decoder(z), images)
        loss = errors.mean()
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True)
            return loss
        if stage == "val":
            self.latent_gaussian.update(z)
            self.loss_gaussian.update(errors[:, None])
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss(loss, weight=len(images))
        self.log(f"{stage}/loss", mean_loss, prog_bar=True)
        return loss

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def on_validation_epoch_start(self) -> None:
        self.latent_gaussian.reset()
        self.loss_gaussian.reset()

    @override
    def on_validation_epoch_end(self) -> None:
        # Refit on this epoch's validation images, before ModelCheckpoint saves (on_validation_end),
        # so a checkpoint's yardsticks always match its weights.
        for gaussian in (self.latent_gaussian, self.loss_gaussian):
            gaussian.fit(reduce=lambda t: self.trainer.strategy.reduce(t, reduce_op="sum"))
            gaussian.reset()

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images, labels = batch
        out = {"latent": self.encode(images).float(), "label": labels}
        out |= {f"score_{name}": score for name, score in self.anomaly_scores(batch).items()}
        datamodule = self._datamodule()
        if getattr(datamodule, "normal_classes", None) is not None:
            out["is_anomaly"] = datamodule.is_anomaly(labels)
        return out

    @override
    def setup(self, stage: str) -> None:
        datamodule = self._datamodule()
        if self.reconstruction_loss == "bce" and getattr(datamodule, "normalize", False):
            raise CnnlabError(
                f"{type(self).__name__} uses reconstruction_loss 'bce', a Bernoulli likelihood whose targets must "
                "be pixels in [0, 1], but the DataModule standardises them (data.normalize is true). Set "
                "--data.normalize false (as configs/mnist_ae.yaml and mnist_vae.yaml do), or use "
                "--model.reconstruction_loss mse for standardised data."
            )

    @override
    def configure_optimizers(self):
        return configure_optimizers(self, self.optimizer, self.lr_scheduler)

    def _datamodule(self):
        trainer = self._trainer
        return getattr(trainer, "datamodule", None) if trainer is not None else None

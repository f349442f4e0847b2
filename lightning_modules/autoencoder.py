"""AutoEncoder: a convolutional encoder to a latent code and a decoder back (networks/autoencoder.py),
trained on the reconstruction error of each image; its anomaly scores are that error, the code's
distance to a Gaussian fitted to the codes of the normal training images, the two combined, and, with
knn_k above 0, the k-NN distance to those codes (latent_scores.py, nearest_neighbours.py)."""

from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.protocol import Batch, EvalOutput
from lightning_modules.base import CnnlabModule
from lightning_modules.latent_scores import LatentScores
from lightning_modules.nearest_neighbours import Metric
from networks.autoencoder import ConvDecoder, ConvEncoder
from networks.blocks import Upsampling

ReconstructionLoss = Literal["bce", "mse"]


class AutoEncoder(CnnlabModule):
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
        knn_k: Neighbours of the `knn` anomaly score: the mean distance of a code to its knn_k nearest
            codes of the (normal) training images, refitted at each validation; 0 (the default) turns it
            off, as a run on every class has no use for it (the anomaly configs set 5).
        knn_metric: euclidean or cosine distance between codes for `knn`.
        optimizer: Optimizer factory (class_path + init_args in YAML).
        lr_scheduler: Scheduler factory; OneCycleLR gets total_steps from the trainer.
    """

    primary_score = "combined"
    # The Gaussians behind latent_distance and combined are fitted; a subclass whose scores use neither
    # (Deep SVDD) says False and skips their pass over the training images.
    uses_latent_gaussians = True

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (1, 28, 28),
        latent_dim: int = 16,
        channels: tuple[int, ...] = (32, 64, 128),
        upsample: Upsampling = "nearest",
        reconstruction_loss: ReconstructionLoss = "bce",
        knn_k: int = 0,
        knn_metric: Metric = "euclidean",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer, lr_scheduler)
        self.save_hyperparameters()
        if latent_dim < 1 or not channels or min(channels) < 1:
            raise CnnlabError(
                f"model.latent_dim is {latent_dim} and model.channels is {list(channels)}, but the code needs at "
                "least one dimension and the encoder at least one layer of at least one channel. Use e.g. "
                "latent_dim 16, channels [32, 64, 128]."
            )
        self.latent_dim = latent_dim
        self.reconstruction_loss = reconstruction_loss
        # BCE is a likelihood of pixels in [0, 1]: the DataModule must not standardise them (the CLI checks).
        self.needs_unit_pixels = reconstruction_loss == "bce"
        self.encoder = self.build_encoder(image_shape, channels, latent_dim)
        self.decoder = ConvDecoder(image_shape, channels, latent_dim, upsample)
        # NHWC is what oneDNN (CPU) and tensor cores (GPU) convolve fastest: 1.1-1.5x less CPU time per
        # training step here (benchmarks/autoencoder_speed.py).
        self.to(memory_format=torch.channels_last)
        self.latent_scores = LatentScores(latent_dim, knn_k, knn_metric)
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()

    def build_encoder(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], latent_dim: int) -> nn.Module:
        return ConvEncoder(image_shape, channels, latent_dim)

    # -- the protocol (cnnlab/protocol.py) -----------------------------------------------------

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

    def feature_layer(self) -> nn.Conv2d:
        return self.encoder.input_layer()

    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        """Reconstruction error of each image (summed over pixels), float32: [B]."""
        images, _ = batch
        return self.reconstruction_error(self.decoder(self.encode(images)), images)

    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-image anomaly scores, float32 [B] each, larger = more anomalous: `loss` (the
        reconstruction error, = per_sample_loss), `latent_distance`, `combined` and `knn` (LatentScores)."""
        return self.latent_scores.scores(*self.codes_and_losses(batch[0]))

    def score_names(self) -> tuple[str, ...]:
        return self.latent_scores.names()

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

    def codes_and_losses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The code [B, D] and the per-image loss [B] of each image, as `anomaly_scores` sees them."""
        z = self.encode(images)
        return z, self.reconstruction_error(self.decoder(z), images)

    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        images, targets = batch
        z = self.encode(images)
        errors = self.reconstruction_error(self.decoder(z), images)
        loss = errors.mean()
        if stage == "train":
            self.log_step("train/loss", loss, prog_bar=True)
            return {"loss": loss}
        self.update_on_normal(getattr(self, f"{stage}_loss"), errors.detach(), targets)
        return {"loss": loss, "scores": self.latent_scores.scores(z.detach(), errors.detach())}

    def epoch_metrics(self, stage: str) -> dict:
        return {} if stage == "train" else {"loss": getattr(self, f"{stage}_loss")}

    @override
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        fitting = self.trainer.state.fn == "fit"
        neighbours = self.latent_scores.neighbours
        # During fit every validation refits the bank and the Gaussians to the weights it validates (any
        # epoch's checkpoint may become the best); `validate` of a checkpoint keeps what it carries.
        refit = neighbours is not None and (fitting or not neighbours.fitted)
        if refit and self.reads_training_images("knn"):
            neighbours.fit(self.over_training_images(self.encode, neighbours.bank_indices))
        if fitting and self.uses_latent_gaussians and self.reads_training_images("latent_distance"):
            self.fit_latent_gaussians()

    def fit_latent_gaussians(self) -> None:
        """Fit the Gaussians of the codes and of the per-image losses on (up to FIT_IMAGES of) the normal
        training images: the anomaly scores then measure "unexpected" against what the model was
        trained on, not against the validation images (which hold anomalies in an anomaly run)."""
        dim = self.latent_dim

        def packed(images: torch.Tensor) -> torch.Tensor:  # one tensor, as over_training_images concatenates
            codes, losses = self.codes_and_losses(images)
            return torch.cat([codes.float(), losses.float()[:, None]], dim=1)

        # A fixed random stream (the VAE's loss draws z): every rank fits the same Gaussians whatever its
        # own stream has drawn so far, and the run's stream goes on as if the fit had not happened.
        devices = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            values = self.over_training_images(packed, self.latent_scores.fit_indices)
        self.latent_scores.fit(values[:, :dim], values[:, dim])

    @override
    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        """The codes (`latent`), labels and each anomaly score (`score_<name>`) of the batch."""
        return {"latent": self.encode(batch[0]).float()} | super().predict_step(batch, batch_idx)

"""Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018): an encoder trained to map
normal images close to a fixed centre c in code space; the anomaly score of an image is the squared
distance of its code to c.

The encoder is the AutoEncoder's (this module is an AutoEncoder whose encoder has no bias), pretrained
as that AutoEncoder for `pretrain_epochs` on the reconstruction error; then c is fixed as the mean code
of the normal training images and the encoder trains on the SVDD objective."""

from typing import Literal

import torch
from torch import nn
from torchmetrics import MeanMetric
from typing_extensions import override

from cnnlab.errors import CnnlabError
from cnnlab.gather import gather_ranks
from cnnlab.protocol import Batch, EvalOutput
from lightning_modules.autoencoder import AutoEncoder
from networks.autoencoder import ConvEncoder

Objective = Literal["one-class", "soft-boundary"]


class DeepSVDD(AutoEncoder):
    """Deep SVDD, one-class or soft-boundary. It takes the AutoEncoder's arguments too (image_shape,
    latent_dim, channels, upsample, reconstruction_loss, knn_k, knn_metric, optimizer, lr_scheduler):
    they describe the pretraining autoencoder, whose encoder becomes the SVDD network.

    The encoder has no bias terms (convolutions and the linear head without bias, batch-norm without
    its learned shift) and no bounded activation (LeakyReLU), as the paper requires (its Propositions
    2 and 3): with a bias, the network could map every image to c by setting its weights to zero and
    its last bias to c, a perfect objective that says nothing about the image; a bounded activation
    saturated on every input would do the same. Without them, the only way to bring codes close to c
    is to extract what normal images have in common. For the same reason c is not learned and not 0
    in any coordinate (coordinates within `centre_eps` of 0 are pushed out to it): a zero centre
    is what all-zero weights produce.

    Training: epochs [0, pretrain_epochs) minimise the reconstruction error (the AutoEncoder); at the
    first SVDD epoch c is set to the mean code of the normal training images (eval mode, as in the
    authors' code); then
      one-class:     mean over the batch of ||phi(x) - c||^2
      soft-boundary: R^2 + 1/nu * mean(max(0, ||phi(x) - c||^2 - R^2)), with R set after each SVDD
                     epoch (past `radius_warmup_epochs`) to the (1 - nu)-quantile of the training
                     distances, so that about a fraction nu of normal training codes lies outside.
    Weight decay (the paper's regulariser) comes from the optimizer's settings.

    Scores (anomaly_scores, predictions, LossHistogram): `distance` (||phi(x) - c||^2, the primary
    score), `loss` (the per-sample objective), `knn` (mean distance to the k nearest normal training
    codes). Before c is set, `distance` is to the origin and `val/loss` is +inf, so the best
    checkpoint is always one of the SVDD phase.

    Args:
        objective: one-class or soft-boundary.
        nu: soft-boundary: the fraction of normal training codes allowed outside the sphere, in (0, 1].
        pretrain_epochs: Epochs of autoencoder pretraining before c is fixed (0: c from the randomly
            initialised encoder, the paper's "no pretraining" ablation).
        centre_eps: Coordinates of c closer to 0 than this are set to +-centre_eps.
        radius_warmup_epochs: soft-boundary: SVDD epochs before R is first updated (R starts at 0).
        knn_k: As the AutoEncoder's, but on by default (5): Deep SVDD is always an anomaly model.
    """

    primary_score = "distance"
    uses_latent_gaussians = False  # its scores are the distance to c, the objective and knn

    def __init__(
        self,
        *args,
        objective: Objective = "one-class",
        nu: float = 0.1,
        pretrain_epochs: int = 10,
        centre_eps: float = 0.1,
        radius_warmup_epochs: int = 2,
        knn_k: int = 5,
        **kwargs,
    ) -> None:
        super().__init__(*args, knn_k=knn_k, **kwargs)
        self.save_hyperparameters()
        if objective not in ("one-class", "soft-boundary") or not 0 < nu <= 1 or pretrain_epochs < 0:
            raise CnnlabError(
                f"DeepSVDD settings out of range: objective {objective!r}, nu {nu}, pretrain_epochs {pretrain_epochs}. "
                "objective is one-class or soft-boundary, nu in (0, 1] (e.g. 0.1), pretrain_epochs 0 or more."
            )
        if centre_eps < 0 or radius_warmup_epochs < 0:
            raise CnnlabError(
                f"DeepSVDD: centre_eps is {centre_eps} and radius_warmup_epochs {radius_warmup_epochs}; both must "
                "be 0 or more (e.g. 0.1 and 2)."
            )
        self.objective, self.nu, self.pretrain_epochs = objective, nu, pretrain_epochs
        self.centre_eps, self.radius_warmup_epochs = centre_eps, radius_warmup_epochs
        self.register_buffer("centre", torch.zeros(self.latent_dim))
        self.register_buffer("centre_set", torch.tensor(False))
        self.register_buffer("radius", torch.tensor(0.0))  # R of the soft-boundary objective
        self.val_reconstruction, self.test_reconstruction = MeanMetric(), MeanMetric()
        self._train_distances: list[torch.Tensor] = []

    @override
    def build_encoder(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], latent_dim: int) -> nn.Module:
        return ConvEncoder(image_shape, channels, latent_dim, bias=False)

    # -- the SVDD objective -------------------------------------------------------------------------

    @property
    def pretraining(self) -> bool:
        """Until c is set: the autoencoder's reconstruction error is the objective."""
        return not bool(self.centre_set)

    def distance(self, codes: torch.Tensor) -> torch.Tensor:
        """||phi(x) - c||^2 of each code, float32 [B]."""
        return (codes.float() - self.centre).square().sum(1)

    def svdd_loss(self, distance: torch.Tensor) -> torch.Tensor:
        """The per-sample objective, float32 [B]."""
        if self.objective == "one-class":
            return distance
        r2 = self.radius.square()
        return r2 + torch.relu(distance - r2) / self.nu

    @torch.no_grad()
    def set_centre(self) -> None:
        """c = mean code of the normal training images, each coordinate at least centre_eps from 0."""
        centre = self.over_training_images(self.encode).mean(0)
        small = centre.abs() < self.centre_eps
        centre[small & (centre < 0)] = -self.centre_eps
        centre[small & (centre >= 0)] = self.centre_eps
        self.centre.copy_(centre)
        self.centre_set.fill_(True)

    def _scores(self, z: torch.Tensor, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        scores = {"loss": losses.detach().float(), "distance": self.distance(z.detach())}
        neighbours = self.latent_scores.neighbours
        if neighbours is not None and neighbours.fitted:
            scores["knn"] = neighbours.distance(z)
        return scores

    # -- the protocol (cnnlab/protocol.py) ---------------------------------------------------------

    @override
    def per_sample_loss(self, batch: Batch) -> torch.Tensor:
        images, _ = batch
        z = self.encode(images)
        if self.pretraining:
            return self.reconstruction_error(self.decoder(z), images)
        return self.svdd_loss(self.distance(z))

    @override
    def anomaly_scores(self, batch: Batch) -> dict[str, torch.Tensor]:
        """`distance` (||phi(x) - c||^2), `loss` (per-sample objective) and `knn`, float32 [B] each."""
        images, _ = batch
        z = self.encode(images)
        if self.pretraining:
            return self._scores(z, self.reconstruction_error(self.decoder(z), images))
        return self._scores(z, self.svdd_loss(self.distance(z)))

    @override
    def score_names(self) -> tuple[str, ...]:
        return ("loss", "distance") + ("knn",) * (self.latent_scores.neighbours is not None)

    # -- training ----------------------------------------------------------------------------------

    @override
    def _shared_step(self, batch: Batch, stage: str) -> EvalOutput:
        images, targets = batch
        z = self.encode(images)
        if self.pretraining:
            losses = self.reconstruction_error(self.decoder(z), images)
            loss = losses.mean()
            if stage != "train":
                self.update_on_normal(getattr(self, f"{stage}_reconstruction"), losses.detach(), targets)
        else:
            distance = self.distance(z)
            losses = self.svdd_loss(distance)
            loss = losses.mean()
            if stage == "train" and self.objective == "soft-boundary":
                self._train_distances.append(distance.detach())
        if stage == "train":
            self.log_step("train/loss", loss, prog_bar=True)
            return {"loss": loss}
        # No SVDD loss before c is set: +inf, so no pretraining checkpoint is ever the best. Over the
        # normal images only, in an anomaly run (update_on_normal).
        objective = loss.new_tensor(float("inf")) if self.pretraining else losses.detach()
        self.update_on_normal(getattr(self, f"{stage}_loss"), objective, targets)
        return {"loss": loss, "scores": self._scores(z, losses)}

    @override
    def epoch_metrics(self, stage: str) -> dict:
        if stage == "train":
            return {}
        return {"loss": getattr(self, f"{stage}_loss"), "reconstruction": getattr(self, f"{stage}_reconstruction")}

    @override
    def on_fit_start(self) -> None:
        super().on_fit_start()
        epochs = self.trainer.max_epochs
        if (
            self.pretraining
            and not self.trainer.fast_dev_run
            and epochs is not None
            and 0 <= epochs <= self.pretrain_epochs
        ):
            raise CnnlabError(
                f"DeepSVDD pretrains as an AutoEncoder for pretrain_epochs {self.pretrain_epochs}, and this run ends "
                f"after {epochs} epochs, so it would never train its one-class objective (no centre, no distance "
                "score). Give more epochs than pretrain_epochs (--trainer.max_epochs) or fewer pretraining epochs."
            )

    @override
    def on_train_epoch_start(self) -> None:
        if self.pretraining and self.current_epoch >= self.pretrain_epochs:
            self.set_centre()
        self._train_distances = []

    @override
    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        svdd_epochs = self.current_epoch + 1 - self.pretrain_epochs
        if self.objective == "soft-boundary" and not self.pretraining and svdd_epochs > self.radius_warmup_epochs:
            # every rank's distances of the epoch (uneven shares under DDP), the same R everywhere
            local = torch.cat(self._train_distances) if self._train_distances else self.centre.new_zeros(0)
            distances = gather_ranks(local)
            if len(distances):
                self.radius.fill_(float(torch.quantile(distances.sqrt().float(), 1 - self.nu)))
        self._train_distances = []

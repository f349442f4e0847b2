"""A small but real convolutional autoencoder written against cnnlab/protocol.py alone, not the
project's base class (encode, decode, latent_dim, per_sample_loss, anomaly_scores and primary_score,
sample, feature_layer, evaluation steps that return their per-sample scores, reference_scores), so
the figure callbacks are tested against the protocol rather than against the project's AE/VAE."""

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn


class TinyAutoEncoder(LightningModule):
    """Conv encoder (two stride-2 convs) to `latent_dim`, transposed-conv decoder back to the image;
    mean squared error in the space the images are fed in."""

    primary_score = "loss"

    def __init__(self, image_shape: tuple[int, int, int] = (1, 28, 28), latent_dim: int = 8, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._val_scores: list[dict[str, torch.Tensor]] = []
        self.reference: dict[str, torch.Tensor] = {}
        c, h, w = image_shape
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(c, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * (h // 4) * (w // 4), latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 16 * (h // 4) * (w // 4)),
            nn.ReLU(),
            nn.Unflatten(1, (16, h // 4, w // 4)),
            nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(8, c, 4, stride=2, padding=1),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def sample(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, self.latent_dim, device=self.device))

    def per_sample_loss(self, batch) -> torch.Tensor:
        images, _ = batch
        return F.mse_loss(self.decode(self.encode(images)).float(), images.float(), reduction="none").flatten(1).mean(1)

    def anomaly_scores(self, batch) -> dict[str, torch.Tensor]:
        images, _ = batch
        z = self.encode(images)
        error = F.mse_loss(self.decode(z).float(), images.float(), reduction="none").flatten(1).mean(1)
        return {"loss": error, "latent_norm": z.float().norm(dim=1)}

    def feature_layer(self) -> nn.Conv2d:
        return self.encoder[0]

    def reference_scores(self) -> dict[str, torch.Tensor]:
        return self.reference

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.per_sample_loss(batch).mean()
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> dict:
        scores = self.anomaly_scores(batch)
        self._val_scores.append(scores)
        self.log("val/loss", scores["loss"].mean())
        return {"loss": scores["loss"].mean(), "scores": scores}

    def on_validation_epoch_start(self) -> None:
        self._val_scores = []

    def on_validation_epoch_end(self) -> None:
        self.reference = {n: torch.cat([s[n] for s in self._val_scores]).cpu() for n in self._val_scores[0]}

    def test_step(self, batch, batch_idx: int) -> dict:
        scores = self.anomaly_scores(batch)
        self.log("test/loss", scores["loss"].mean())
        return {"loss": scores["loss"].mean(), "scores": scores}

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

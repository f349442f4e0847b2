"""Anomaly scores of a latent model relative to its validation codes (normal images only, in an
anomaly run): how far a code lies from a Gaussian fitted to them, and the reconstruction loss and that
distance standardised and summed. Shared by the AutoEncoder and the VAE."""

from collections.abc import Callable

import torch
from torch import nn

from lightning_modules.gaussian_fit import GaussianFit


class LatentScores(nn.Module):
    """The yardsticks fitted at each validation epoch end: a Gaussian over the codes and one over the
    per-image losses. They are buffers, so a checkpoint's yardsticks always match its weights."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.latent_gaussian = GaussianFit(latent_dim)
        self.loss_gaussian = GaussianFit(1)
        self._codes: list[torch.Tensor] = []

    def reset(self) -> None:
        self.latent_gaussian.reset()
        self.loss_gaussian.reset()
        self._codes = []

    def update(self, codes: torch.Tensor, losses: torch.Tensor) -> None:
        """One validation batch: its codes [B, D] and per-image losses [B]."""
        self.latent_gaussian.update(codes)
        self.loss_gaussian.update(losses[:, None])
        self._codes.append(codes.detach().float())

    def fit(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Refit both Gaussians on the epoch's values (`reduce` sums over ranks under DDP) and return
        this rank's codes of the epoch, [N, D]."""
        for gaussian in (self.latent_gaussian, self.loss_gaussian):
            gaussian.fit(reduce=reduce)
            gaussian.reset()
        codes = (
            torch.cat(self._codes)
            if self._codes
            else torch.zeros(0, self.latent_dim, device=self.loss_gaussian.mean.device)
        )
        self._codes = []
        return codes

    def scores(self, codes: torch.Tensor, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """loss, latent_distance (squared Mahalanobis distance to the fitted Gaussian) and combined:
        the loss standardised with its validation mean and std, plus the distance standardised as a
        chi-square with latent_dim degrees of freedom (mean D, variance 2D, what it is for codes that
        follow the fitted Gaussian). Anomalies can stand out in either space or in both, and the sum
        counts both. Each float32 [B]."""
        distance = self.latent_gaussian.distance(codes)
        dim = self.latent_dim
        combined = self.loss_gaussian.standardize(losses) + (distance - dim) / (2 * dim) ** 0.5
        return {"loss": losses.float(), "latent_distance": distance, "combined": combined}

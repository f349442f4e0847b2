"""Anomaly scores of a latent model relative to the normal training images: how far a code lies from a
Gaussian fitted to the codes of (up to FIT_IMAGES of) the normal training images, the reconstruction
loss and that distance standardised and summed, and the mean distance to the k nearest codes of the
normal training images (nearest_neighbours.py). Shared by the AutoEncoder and the VAE."""

import torch
from torch import nn

from lightning_modules.gaussian_fit import GaussianFit
from lightning_modules.nearest_neighbours import Metric, NearestNeighbours

# Training images the two Gaussians are fitted on: many times the D (D + 1) / 2 entries of the codes'
# covariance (136 at D = 16), and a bounded pass at each validation however large the training set.
FIT_IMAGES = 2000


class LatentScores(nn.Module):
    """The yardsticks: a Gaussian over the codes and one over the per-image losses of the normal
    training images, and the bank of normal training codes of the k-NN score (knn_k 0: none), all
    fitted by the model at each validation start during fit. All travel in the checkpoint, so a
    checkpoint's yardsticks always match its weights."""

    def __init__(self, latent_dim: int, knn_k: int = 0, knn_metric: Metric = "euclidean") -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.latent_gaussian = GaussianFit(latent_dim)
        self.loss_gaussian = GaussianFit(1)
        self.neighbours = NearestNeighbours(knn_k, knn_metric) if knn_k else None

    @staticmethod
    def fit_indices(n: int) -> torch.Tensor:
        """Which of n training images the Gaussians are fitted on: all, or FIT_IMAGES of them drawn with
        a fixed generator (the same on every rank and in every epoch)."""
        if n <= FIT_IMAGES:
            return torch.arange(n)
        return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:FIT_IMAGES].sort().values

    def fit(self, codes: torch.Tensor, losses: torch.Tensor) -> None:
        """Refit both Gaussians to the codes [N, D] and per-image losses [N] of normal training images."""
        self.latent_gaussian.fit_to(codes)
        self.loss_gaussian.fit_to(losses[:, None])

    def names(self) -> tuple[str, ...]:
        """The names `scores` returns once the k-NN bank is fitted."""
        return ("loss", "latent_distance", "combined") + ("knn",) * (self.neighbours is not None)

    def scores(self, codes: torch.Tensor, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """loss, latent_distance (squared Mahalanobis distance to the fitted Gaussian), knn (mean
        distance to the k nearest normal training codes, once the bank is fitted) and combined:
        the loss standardised with its mean and std on the normal training images, plus the distance
        standardised as a chi-square with latent_dim degrees of freedom (mean D, variance 2D, what it
        is for codes that follow the fitted Gaussian). Anomalies can stand out in either space or in
        both, and the sum counts both. Each float32 [B]."""
        distance = self.latent_gaussian.distance(codes)
        dim = self.latent_dim
        combined = self.loss_gaussian.standardize(losses) + (distance - dim) / (2 * dim) ** 0.5
        scores = {"loss": losses.float(), "latent_distance": distance, "combined": combined}
        if self.neighbours is not None and self.neighbours.fitted:
            scores["knn"] = self.neighbours.distance(codes)
        return scores

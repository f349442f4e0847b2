"""Anomaly scores of a latent model relative to normal codes: how far a code lies from a Gaussian
fitted to the validation codes (normal images only, in an anomaly run), the reconstruction loss and
that distance standardised and summed, and the mean distance to the k nearest codes of the normal
training images (nearest_neighbours.py). Shared by the AutoEncoder and the VAE."""

from collections.abc import Callable

import torch
from torch import nn

from lightning_modules.gaussian_fit import GaussianFit
from lightning_modules.nearest_neighbours import Metric, NearestNeighbours


class LatentScores(nn.Module):
    """The yardsticks fitted at each validation epoch end: a Gaussian over the codes and one over the
    per-image losses; and the bank of normal training codes of the k-NN score (knn_k 0: none), fitted
    by the model at each validation start. All travel in the checkpoint, so a checkpoint's yardsticks
    always match its weights."""

    def __init__(self, latent_dim: int, knn_k: int = 5, knn_metric: Metric = "euclidean") -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.latent_gaussian = GaussianFit(latent_dim)
        self.loss_gaussian = GaussianFit(1)
        self.neighbours = NearestNeighbours(knn_k, knn_metric) if knn_k else None
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

    def names(self) -> tuple[str, ...]:
        """The names `scores` returns once the k-NN bank is fitted."""
        return ("loss", "latent_distance", "combined") + ("knn",) * (self.neighbours is not None)

    def scores(self, codes: torch.Tensor, losses: torch.Tensor) -> dict[str, torch.Tensor]:
        """loss, latent_distance (squared Mahalanobis distance to the fitted Gaussian), knn (mean
        distance to the k nearest normal training codes, once the bank is fitted) and combined:
        the loss standardised with its validation mean and std, plus the distance standardised as a
        chi-square with latent_dim degrees of freedom (mean D, variance 2D, what it is for codes that
        follow the fitted Gaussian). Anomalies can stand out in either space or in both, and the sum
        counts both. Each float32 [B]."""
        distance = self.latent_gaussian.distance(codes)
        dim = self.latent_dim
        combined = self.loss_gaussian.standardize(losses) + (distance - dim) / (2 * dim) ** 0.5
        scores = {"loss": losses.float(), "latent_distance": distance, "combined": combined}
        if self.neighbours is not None and self.neighbours.fitted:
            scores["knn"] = self.neighbours.distance(codes)
        return scores

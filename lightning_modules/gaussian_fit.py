"""A Gaussian fitted to values of the normal training images (latent codes, per-image losses, raw
anomaly scores): what the AutoEncoder's, VAE's and GeoTrans's anomaly scores measure "unexpectedly
large" against."""

import torch
from torch import nn


class GaussianFit(nn.Module):
    """Mean and precision of D-dimensional values, refitted from scratch by `fit_to` (or `reset`, then
    `update` chunk by chunk, then `fit`).

    The fitted mean and precision are buffers, so they travel in the checkpoint with the weights
    that produced the values. Before the first fit they describe N(0, I), a VAE's prior.
    """

    def __init__(self, dim: int, shrinkage: float = 1e-3) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.eye(dim))
        # count, sum and sum of outer products of the values minus `_shift` (the first chunk's mean): sums
        # of squares of values far from 0 cancel catastrophically (an untrained GeoTrans's Dirichlet score,
        # 2e9 spread by 100, lost 40% of its variance so even in float64); deviations from a near-mean do not.
        self._sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._shift: torch.Tensor | None = None

    def reset(self) -> None:
        self._sums, self._shift = None, None

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        # float64 because a covariance from sums of squares loses digits in float32 (MPS has no
        # float64, hence plain attributes created on the codes' device rather than buffers).
        if self._sums is None:
            self._sums = self._zeros(z.device)
        count, total, outer = self._sums
        z = z.detach().to(total.dtype)
        if self._shift is None:
            self._shift = z.mean(0) if len(z) else torch.zeros_like(total)
        z = z - self._shift
        count += len(z)
        total += z.sum(0)
        outer += z.T @ z

    @torch.no_grad()
    def fit_to(self, z: torch.Tensor) -> None:
        """Refit to these values [N, D] alone. Every rank fits the same values (the training images
        each reads in full), so nothing is reduced over ranks."""
        self.reset()
        self.update(z)
        self.fit()
        self.reset()

    @torch.no_grad()
    def fit(self) -> None:
        """Set mean and precision from the values seen since `reset`. Nothing changes if fewer than
        two were seen."""
        if self._sums is None:
            return
        count, total, outer = self._sums
        if count < 2:
            return
        centred_mean = total / count
        cov = (outer - count * torch.outer(centred_mean, centred_mean)) / (count - 1)
        mean = self._shift + centred_mean
        # Shrink towards a multiple of I: collapsed or tightly coupled latent dimensions (common in a
        # trained AE) would otherwise make the covariance singular and the distance explode.
        dim = len(mean)
        scale = cov.diagonal().mean().clamp_min(1e-12)
        cov = (1 - self.shrinkage) * cov + self.shrinkage * scale * torch.eye(dim, dtype=cov.dtype, device=cov.device)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.precision.copy_(torch.linalg.inv(cov).to(self.precision.dtype))

    def _zeros(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        dim = len(self.mean)
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape in ((), (dim,), (dim, dim)))

    def distance(self, z: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of each row to the fitted mean, float32: [B]."""
        centred = z.float() - self.mean
        return ((centred @ self.precision) * centred).sum(1)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std of one-dimensional values [B], float32: [B]."""
        return (x.float() - self.mean) * self.precision[0, 0].sqrt()

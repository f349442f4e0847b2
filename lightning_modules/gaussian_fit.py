"""A Gaussian fitted to values seen during validation (latent codes, per-image losses): what the
AutoEncoder's and VAE's anomaly scores measure "unexpectedly large" against."""

import torch
from torch import nn


class GaussianFit(nn.Module):
    """Mean and precision of D-dimensional values, refitted from scratch at each `reset` / `update` / `fit`.

    The fitted mean and precision are buffers, so they travel in the checkpoint with the weights
    that produced the values. Before the first fit they describe N(0, I), a VAE's prior.
    """

    def __init__(self, dim: int, shrinkage: float = 1e-3) -> None:
        super().__init__()
        self.shrinkage = shrinkage
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("precision", torch.eye(dim))
        self._sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # count, sum z, sum z z^T

    def reset(self) -> None:
        self._sums = None

    @torch.no_grad()
    def update(self, z: torch.Tensor) -> None:
        # float64 because a covariance from sums of squares loses digits in float32 (MPS has no
        # float64, hence plain attributes created on the codes' device rather than buffers).
        if self._sums is None:
            self._sums = self._zeros(z.device)
        count, total, outer = self._sums
        z = z.detach().to(total.dtype)
        count += len(z)
        total += z.sum(0)
        outer += z.T @ z

    @torch.no_grad()
    def fit(self, reduce=None) -> None:
        """Set mean and precision from the codes seen since `reset`; `reduce(tensor)` sums the
        running sums over processes under DDP. Nothing changes if fewer than two codes were seen."""
        # Every process reduces, even one that saw no codes, or the others would wait for it.
        sums = self._sums if self._sums is not None else self._zeros(self.mean.device)
        count, total, outer = (t.clone() for t in sums)
        if reduce is not None:
            count, total, outer = reduce(count), reduce(total), reduce(outer)
        if count < 2:
            return
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
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

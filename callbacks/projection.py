"""Latent codes [N, D] -> 2-D points for a scatter plot: PCA (an SVD) and exact t-SNE, both in
plain torch so the scatter needs no scikit-learn."""

import math

import torch


def pca_2d(codes: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The first two principal components [N, 2] and the share of variance each explains.

    Each axis's sign is fixed (its largest loading positive), so the picture does not flip
    between epochs for no reason. D = 1 gives one component and a zero second column.
    """
    x = codes.double() - codes.double().mean(dim=0)
    _, singular, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(2, vh.shape[0])
    axes = vh[:k]
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))
    axes = axes * signs
    points = torch.zeros(len(x), 2, dtype=torch.float64)
    points[:, :k] = x @ axes.T
    variance = singular**2
    share = (variance[:k] / variance.sum().clamp_min(1e-300)).tolist()
    return points.float(), share + [0.0] * (2 - k)


def _affinities(codes: torch.Tensor, perplexity: float) -> torch.Tensor:
    """Symmetric t-SNE input affinities P [N, N]: a Gaussian per point whose width is found by
    bisection so the entropy of its neighbour distribution is log(perplexity)."""
    n = len(codes)
    d = torch.cdist(codes, codes).pow(2)
    d.fill_diagonal_(float("inf"))
    d = d - d.min(dim=1, keepdim=True).values  # shifting a row leaves its distribution unchanged
    beta = torch.ones(n, 1, dtype=d.dtype)
    low, high = torch.zeros_like(beta), torch.full_like(beta, float("inf"))
    target = math.log(perplexity)
    for _ in range(64):
        p = torch.exp(-d * beta)
        total = p.sum(dim=1, keepdim=True)
        entropy = torch.log(total) + beta * (torch.nan_to_num(d * p, nan=0.0, posinf=0.0)).sum(1, keepdim=True) / total
        wide = entropy > target  # too many neighbours: narrow the Gaussian
        low = torch.where(wide, beta, low)
        high = torch.where(wide, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2, (low + high) / 2)
    p = p / total
    return ((p + p.T) / (2 * n)).clamp_min(1e-12)


def tsne_2d(codes: torch.Tensor, perplexity: float = 30.0, iterations: int = 750, seed: int = 0) -> torch.Tensor:
    """Exact t-SNE (van der Maaten & Hinton 2008) to 2-D: [N, 2]. O(N^2) memory and time per
    iteration, fine for the few thousand points a scatter shows.

    Early exaggeration 12 for the first 250 iterations and the learning rate N / 12 follow
    Belkina et al. (2019), whose setting keeps clusters from fragmenting; gains as in the paper.
    """
    n = len(codes)
    if n < 4:
        return pca_2d(codes)[0]
    x = codes.double()
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-12).mean()
    p = _affinities(x, min(perplexity, (n - 1) / 3)).float()
    y = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) * 1e-4
    velocity, gains = torch.zeros_like(y), torch.ones_like(y)
    exaggeration, rate = 12.0, max(n / 12.0, 50.0)
    for step in range(iterations):
        early = step < 250
        kernel = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        kernel.fill_diagonal_(0.0)
        q = (kernel / kernel.sum()).clamp_min(1e-12)
        pq = ((exaggeration if early else 1.0) * p - q) * kernel
        grad = 4.0 * (pq.sum(dim=1, keepdim=True) * y - pq @ y)
        same = (grad > 0) == (velocity > 0)
        gains = torch.where(same, gains * 0.8, gains + 0.2).clamp_min(0.01)
        velocity = (0.5 if early else 0.8) * velocity - rate * gains * grad
        y = y + velocity
        y = y - y.mean(dim=0)
    return y

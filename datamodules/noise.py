"""Noise for denoising runs, batched on the device: Gaussian and salt-and-pepper on images in [0, 1].

Training batches draw from torch's RNG (the model seed). Evaluation batches get noise that is a
function of (data seed, dataset index, pixel) through a counter-based hash, so an image has the
same noise in every epoch, batch order, number of devices and kind of device: PSNR is reproducible.
"""

from typing import Literal

import torch

Noise = Literal["gaussian", "salt_and_pepper"]

_M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit values held in int64 (xorshift-multiply rounds in the style of
    lowbias32). Multipliers below 2**31 keep every product under 2**63: no int64 overflow."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def hashed_uniform(index: torch.Tensor, shape: tuple[int, ...], seed: int, stream: int) -> torch.Tensor:
    """Uniform values in (0, 1), [B, *shape], fixed by (seed, stream, index[b], position)."""
    numel = 1
    for side in shape:
        numel *= side
    counter = torch.arange(numel, device=index.device, dtype=torch.int64)
    key = index.to(torch.int64)[:, None] * numel + counter  # unique per (image, position)
    mix = _hash32(torch.tensor((seed * 2654435761 + stream * 40503) & _M32, device=index.device))
    x = _hash32((key & _M32) ^ _hash32((key >> 32) ^ mix))
    x = _hash32((x + mix) & _M32)
    return ((x.double() + 0.5) / 2**32).float().view(len(index), *shape)


def add_noise(
    clean: torch.Tensor, kind: Noise, level: float, index: torch.Tensor | None = None, seed: int = 0
) -> torch.Tensor:
    """Noisy copy of a float batch [B, C, H, W] in [0, 1], clipped to [0, 1] as a real image is.

    gaussian: add N(0, level**2) to every value. salt_and_pepper: a fraction `level` of pixel
    positions turn black or white (all channels, equal odds). `index` (dataset indices) makes the
    noise fixed per image from `seed`; None draws it from torch's RNG.
    """
    b, c, h, w = clean.shape
    if kind == "gaussian":
        if index is None:
            gauss = torch.randn_like(clean)
        else:  # Box-Muller from two hashed streams
            u1 = hashed_uniform(index, (c, h, w), seed, stream=0).to(clean.device)
            u2 = hashed_uniform(index, (c, h, w), seed, stream=1).to(clean.device)
            gauss = (-2 * u1.log()).sqrt() * torch.cos(2 * torch.pi * u2)
        return (clean + level * gauss.to(clean.dtype)).clamp(0, 1)
    if kind == "salt_and_pepper":
        if index is None:
            u = torch.rand(b, 1, h, w, device=clean.device)
        else:
            u = hashed_uniform(index, (1, h, w), seed, stream=2).to(clean.device)
        noisy = torch.where(u < level / 2, torch.zeros_like(clean), clean)
        return torch.where(u > 1 - level / 2, torch.ones_like(clean), noisy)
    raise ValueError(f"unknown noise kind {kind!r}")

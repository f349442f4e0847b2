"""Noise for denoising runs, batched: Gaussian and salt-and-pepper on images in [0, 1].

Training batches draw from torch's RNG on their device (the model seed), fresh every batch.
Validation and test images get their noise once, when the DataModule sets the split up, from a
generator seeded by the data seed: an image has the same noise in every epoch, batch order, number of
devices and kind of device, so PSNR is reproducible (`fixed_noisy_copy`).
"""

from typing import Literal

import torch

Noise = Literal["gaussian", "salt_and_pepper"]


def add_noise(clean: torch.Tensor, kind: Noise, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noisy copy of a float batch [B, C, H, W] in [0, 1], clipped to [0, 1] as a real image is.

    gaussian: add N(0, level**2) to every value. salt_and_pepper: a fraction `level` of pixel
    positions turn black or white (all channels, equal odds). Random numbers come from `generator`
    (on the batch's device), or torch's default RNG.
    """
    b, _, h, w = clean.shape
    if kind == "gaussian":
        gauss = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
        return (clean + level * gauss).clamp(0, 1)
    if kind == "salt_and_pepper":
        u = torch.rand(b, 1, h, w, generator=generator, device=clean.device)
        noisy = torch.where(u < level / 2, torch.zeros_like(clean), clean)
        return torch.where(u > 1 - level / 2, torch.ones_like(clean), noisy)
    raise ValueError(f"unknown noise kind {kind!r}")


def fixed_noisy_copy(images: torch.Tensor, kind: Noise, level: float, seed: int, chunk: int = 4096) -> torch.Tensor:
    """A noisy copy of a whole uint8 split [N, C, H, W], drawn once from `seed` on the CPU and stored
    as uint8 (a noisy photograph is 8-bit too; rounding adds noise of std 0.001 on [0, 1])."""
    generator = torch.Generator().manual_seed(seed)
    parts = [
        (add_noise(part.float() / 255, kind, level, generator) * 255).round().to(torch.uint8)
        for part in images.split(chunk)
    ]
    return torch.cat(parts) if parts else images.clone()

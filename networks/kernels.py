"""Hand-made convolution kernels of the CNN workshop: the Sobel operators (Gx, Gy, gradient
magnitude and direction), random kernels, and the output-size formula of a convolution.

Kernels are applied as cross-correlation, exactly as `nn.Conv2d` applies its learned ones, so a
Sobel response and a first-layer feature map can be compared side by side.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError

# Gx is positive where brightness grows to the right, Gy where it grows downwards (image rows).
SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
SOBEL_Y = SOBEL_X.T.contiguous()

# ITU-R BT.601 luma: how the eye weighs R, G and B (what PIL's convert("L") uses).
LUMA = (0.299, 0.587, 0.114)


class SobelResponse(NamedTuple):
    """Each [B, 1, H', W']: the two derivatives, sqrt(Gx^2 + Gy^2) and atan2(Gy, Gx) in radians."""

    gx: torch.Tensor
    gy: torch.Tensor
    magnitude: torch.Tensor
    direction: torch.Tensor


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution along one axis: floor((n + 2p - d(k - 1) - 1) / s) + 1."""
    if kernel_size < 1 or stride < 1 or padding < 0 or dilation < 1:
        raise CnnlabError(
            f"A convolution needs kernel_size >= 1, stride >= 1, padding >= 0 and dilation >= 1; got "
            f"kernel_size={kernel_size}, stride={stride}, padding={padding}, dilation={dilation}."
        )
    span = dilation * (kernel_size - 1) + 1
    out = (size + 2 * padding - span) // stride + 1
    if out < 1:
        raise CnnlabError(
            f"A {kernel_size}x{kernel_size} kernel (dilation {dilation}) spans {span} pixels, more than the "
            f"{size}-pixel input plus padding {padding} on each side, so the output would be empty. Use a "
            f"smaller kernel or more padding (padding {(span - size + 1) // 2} or more fits)."
        )
    return out


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 1, H, W]: RGB by its luma, any other channel count by the mean."""
    if images.dim() != 4:
        raise CnnlabError(f"Expected images as [batch, channels, height, width], got shape {tuple(images.shape)}.")
    if images.shape[1] == 1:
        return images
    if images.shape[1] == 3:
        weights = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
        return (images * weights).sum(dim=1, keepdim=True)
    return images.mean(dim=1, keepdim=True)


def apply_kernels(images: torch.Tensor, kernels: torch.Tensor, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Cross-correlate grey images [B, 1, H, W] with kernels [K, k, k] (or [K, 1, k, k]): [B, K, H', W'],
    H' and W' as `conv_output_size` says."""
    if kernels.dim() == 3:
        kernels = kernels.unsqueeze(1)
    for length in images.shape[-2:]:  # a clear error instead of conv2d's for a kernel that does not fit
        conv_output_size(length, kernels.shape[-1], stride, padding)
    return F.conv2d(to_grayscale(images), kernels.to(images), stride=stride, padding=padding)


def sobel(images: torch.Tensor, padding: int = 1) -> SobelResponse:
    """The Sobel operators on grey versions of `images` [B, C, H, W]; padding 1 keeps H and W."""
    both = apply_kernels(images, torch.stack([SOBEL_X, SOBEL_Y]), padding=padding)
    gx, gy = both[:, :1], both[:, 1:]
    return SobelResponse(gx, gy, torch.sqrt(gx**2 + gy**2), torch.atan2(gy, gx))


def random_kernels(n: int, size: int = 3, seed: int = 0) -> torch.Tensor:
    """n random kernels [n, size, size], reproducible from the seed: normal entries, each kernel
    scaled to unit L2 norm so every response has the scale of its input and the panels compare."""
    if n < 1 or size < 1:
        raise CnnlabError(f"random_kernels needs n >= 1 and size >= 1, got n={n}, size={size}.")
    kernels = torch.randn(n, size, size, generator=torch.Generator().manual_seed(seed))
    return kernels / kernels.flatten(1).norm(dim=1).view(n, 1, 1)

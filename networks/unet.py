"""UNet (Ronneberger et al. 2015, arXiv:1505.04597): a contracting and an expanding path joined by
skip connections that concatenate each level's features, so detail passes the bottleneck by.

Padded 3x3 convolutions with BatchNorm keep sizes; any input size works (padded up to a multiple
of 2**depth, the output cropped back), so MNIST's 28x28 needs no resizing.
"""

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import CnnlabError
from networks.blocks import Upsampling


class DoubleConv(nn.Sequential):
    """(3x3 conv -> BatchNorm -> ReLU) twice: the unit of every level of the UNet."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Double the resolution and halve the channels, concatenate the skip, fuse with DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int, upsample: Upsampling) -> None:
        super().__init__()
        if upsample == "transposed":
            self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        else:  # interpolation: no checkerboard artefacts (Odena et al. 2016); a 1x1 conv sets the channels
            self.up = nn.Sequential(
                nn.Upsample(
                    scale_factor=2, mode=upsample, **({} if upsample == "nearest" else {"align_corners": False})
                ),
                nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        self.fuse = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """Maps images [B, in_channels, H, W] to maps [B, out_channels, H, W] (logits or pixels).

    Args:
        in_channels: Channels of the input image.
        out_channels: Channels of the output (classes for segmentation, image channels for denoising).
        depth: Number of 2x downsamplings; level k has base_channels * 2**k channels.
        base_channels: Channels of the first level (64 in the paper).
        upsample: bilinear or nearest interpolation (+ 1x1 conv), or transposed (a learned 2x2 transposed
            conv, as the paper).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        depth: int = 4,
        base_channels: int = 64,
        upsample: Upsampling = "bilinear",
    ) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1 or in_channels < 1 or out_channels < 1:
            raise CnnlabError(
                f"UNet got depth={depth}, base_channels={base_channels}, in_channels={in_channels}, "
                f"out_channels={out_channels}; all must be at least 1 (e.g. depth 3, base_channels 16)."
            )
        if upsample not in ("nearest", "bilinear", "transposed"):
            raise CnnlabError(f"UNet upsample is '{upsample}'; choose 'bilinear', 'nearest' or 'transposed'.")
        self.depth = depth
        widths = [base_channels * 2**k for k in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[k], widths[k + 1])) for k in range(depth)
        )
        self.up = nn.ModuleList(Up(widths[k + 1], widths[k], upsample) for k in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -h % multiple, -w % multiple
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:
            # Replicated edges, not zeros: a zero border would be a false edge wherever the image
            # is not black at its border (CIFAR-10, normalised inputs).
            x = F.pad(x, (left, pad_w - left, top, pad_h - top), mode="replicate")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        return self.head(y)[..., top : top + h, left : left + w]

    def input_layer(self) -> nn.Conv2d:
        """The first convolution."""
        return self.stem[0]

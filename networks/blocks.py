"""Shared convolutional building blocks: the encoder layer (conv -> pool -> batch-norm -> activation),
the decoder layer (upsample -> conv -> batch-norm -> LeakyReLU, or a transposed convolution), and the
weight initialisation every network built from them uses.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Upsampling = Literal["nearest", "bilinear", "transposed"]
LEAKY_SLOPE = 0.2  # DCGAN's slope (Radford et al. 2016); init_weights uses the same value


class EncoderBlock(nn.Sequential):
    """conv 3x3 -> max-pool 2x2 -> batch-norm -> LeakyReLU: halves the height and width (floor).

    Pooling before batch-norm and activation normalises a quarter of the values for the same result
    shape; the conv has no bias because batch-norm's shift replaces it. `bias=False` also drops
    batch-norm's learned scale and shift (affine=False): a network with no bias at all (Deep SVDD).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(out_channels, affine=bias),
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
        )


class DecoderBlock(nn.Module):
    """Upsample to an exact `size` -> conv 3x3 -> batch-norm -> LeakyReLU.

    `nearest`/`bilinear` interpolate then convolve (no checkerboard artefacts, Odena et al. 2016);
    `transposed` is one 4x4 stride-2 transposed convolution instead, whose output_padding is chosen
    from `size`, so odd sizes (3 -> 7) come out exactly as even ones (7 -> 14).
    """

    def __init__(
        self, in_channels: int, out_channels: int, size: tuple[int, int], mode: Upsampling = "nearest"
    ) -> None:
        super().__init__()
        self.size, self.mode = tuple(size), mode
        if mode == "transposed":
            self.conv = nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transposed":
            x = self.conv(x, output_size=list(self.size))
        else:
            x = self.conv(F.interpolate(x, size=self.size, mode=self.mode))
        return self.act(self.norm(x))


def init_weights(module: nn.Module) -> None:
    """He initialisation for the LeakyReLU that follows every conv and linear layer (He et al. 2015),
    batch-norm as identity, biases zero. Apply with `network.apply(init_weights)`; output layers that
    need something else are re-initialised by their network after this."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d) and module.affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)

"""The convolutional encoder and decoder of the AutoEncoder and the VAE, built from networks/blocks.py.

`ConvEncoder` maps images [B, C, H, W] to features [B, out_features]; `ConvDecoder` mirrors it from a
latent code [B, in_features] back to per-pixel outputs [B, C, H, W] (logits or values, no activation).
Any channel list and input shape work (MNIST 28x28 goes 28 -> 14 -> 7 -> 3 and back exactly).
"""

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.errors import CnnlabError
from networks.blocks import LEAKY_SLOPE, DecoderBlock, EncoderBlock, Upsampling, init_weights


def feature_sizes(image_shape: Sequence[int], depth: int) -> list[tuple[int, int]]:
    """Height and width before each encoder layer and after the last: each layer halves (floor)."""
    _, h, w = image_shape
    sizes = [(h, w)]
    for _ in range(depth):
        h, w = h // 2, w // 2
        sizes.append((h, w))
    if min(sizes[-1]) < 1:
        raise CnnlabError(
            f"{depth} encoder layers halve a {image_shape[1]}x{image_shape[2]} image {depth} times, down to "
            f"{sizes[-1][0]}x{sizes[-1][1]}. Give fewer channels entries (one per layer), e.g. [32, 64, 128] "
            "for 28x28 or 32x32 images."
        )
    return sizes


class ConvEncoder(nn.Module):
    """One EncoderBlock per entry of `channels`, then a linear layer to `out_features`. With
    `bias=False` no layer adds a constant (no bias, batch-norm without its learned shift and scale)."""

    def __init__(
        self, image_shape: Sequence[int], channels: Sequence[int], out_features: int, bias: bool = True
    ) -> None:
        super().__init__()
        sizes = feature_sizes(image_shape, len(channels))
        ins = [image_shape[0], *channels[:-1]]
        self.features = nn.Sequential(*(EncoderBlock(i, o, bias) for i, o in zip(ins, channels, strict=True)))
        h, w = sizes[-1]
        self.head = nn.Linear(channels[-1] * h * w, out_features, bias=bias)
        self.apply(init_weights)
        # The head is linear (mean, log-variance or code): Glorot's gain-1 scale, not He's.
        nn.init.xavier_uniform_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def input_layer(self) -> nn.Conv2d:
        """The first convolution."""
        return self.features[0][0]


class GaussianEncoder(nn.Module):
    """A ConvEncoder whose output is the mean and log-variance of a diagonal Gaussian over the code
    (a VAE's q(z|x)): float32, the log-variance clamped to [logvar_min, logvar_max] so that exp() of it
    stays finite (exp() of an fp16 log-variance overflows above 11)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        channels: Sequence[int],
        latent_dim: int,
        logvar_min: float = -30.0,
        logvar_max: float = 20.0,
    ) -> None:
        super().__init__()
        self.body = ConvEncoder(image_shape, channels, 2 * latent_dim)
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.body(x).float().chunk(2, dim=1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)

    def input_layer(self) -> nn.Conv2d:
        return self.body.input_layer()


class ConvDecoder(nn.Module):
    """A linear layer to the encoder's last feature map, one DecoderBlock per entry of `channels`
    (in reverse), then a 3x3 conv to the image's channels at full resolution."""

    def __init__(
        self, image_shape: Sequence[int], channels: Sequence[int], in_features: int, upsample: Upsampling = "nearest"
    ) -> None:
        super().__init__()
        sizes = feature_sizes(image_shape, len(channels))
        self.start = (channels[-1], *sizes[-1])
        self.project = nn.Linear(in_features, channels[-1] * sizes[-1][0] * sizes[-1][1], bias=False)
        self.project_norm = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        path = [*reversed(channels), channels[0]]
        targets = list(reversed(sizes[:-1]))
        self.blocks = nn.Sequential(
            *(DecoderBlock(path[i], path[i + 1], targets[i], upsample) for i in range(len(channels)))
        )
        self.out = nn.Conv2d(channels[0], image_shape[0], 3, padding=1)
        self.apply(init_weights)
        # Outputs are logits or pixel values with no activation after them: Glorot's gain-1 scale.
        nn.init.xavier_uniform_(self.out.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(-1, *self.start)
        return self.out(self.blocks(self.project_norm(x)))

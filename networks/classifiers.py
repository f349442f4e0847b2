"""Classifier backbones, plain nn.Modules: each maps images [B, C, H, W] to logits [B, classes].

From the fully connected baseline through LeNet-5 and an AlexNet-style net to the
two nets we recommend: a small conv-BN-ReLU CNN for MNIST and a residual CNN for CIFAR-10.
Each names its first convolution (`input_layer`); the CNNs split into `features` and `head`
(FeaturesAndHead in cnnlab/protocol.py), which GeoTrans relies on.
"""

from typing import Literal

import torch
from torch import nn

Backbone = Literal["mlp", "lenet5", "alexnet", "cnn", "plain", "resnet"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class MLP(nn.Module):
    """The fully connected baseline: pixels flattened, two hidden layers."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 512, dropout: float = 0.2
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * h * w, width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width, width // 2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(width // 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what FilterAndFeatureMaps draws); None: no convolution."""
        return None


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998): tanh, average-pool subsampling, 120-84 head.

    The original takes 32x32 inputs; smaller images are zero-padded to 32 by the
    first convolution (MNIST 28 -> padding 2), exactly as the paper centred its digits.
    """

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 6, dropout: float = 0.0
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        pad = max(0, (32 - min(h, w)) // 2)
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 5, padding=pad),
            nn.Tanh(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, 16, 5),
            nn.Tanh(),
            nn.AvgPool2d(2),
        )
        h_out, w_out = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h_out * w_out, 120),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(120, 84),
            nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what FilterAndFeatureMaps draws)."""
        return self.features[0]


class AlexNetSmall(nn.Module):
    """AlexNet's shape (Krizhevsky et al. 2012) scaled to 28-32 px: five convs, three max-pools,
    ReLU, two dropout-regularised fully connected layers. 3x3 kernels replace 11x11/5x5, which
    would swallow a 28 px image whole."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 64, dropout: float = 0.5
    ) -> None:
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 3 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(3 * width, 6 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(6 * width, 4 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(4 * width, 4 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(4 * width * (h // 8) * (w // 8), 16 * width),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(16 * width, 16 * width),
            nn.ReLU(inplace=True),
            nn.Linear(16 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what FilterAndFeatureMaps draws)."""
        return self.features[0]


class SmallCNN(nn.Module):
    """A small modern CNN for MNIST: conv-BN-ReLU layers with max-pooling between stages (one
    conv at full resolution, two at half, one at quarter), global average pooling, dropout and
    one linear layer. Only one conv works at full resolution: a second one there would cost
    about 40% more training time on a CPU."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32, dropout: float = 0.2
    ) -> None:
        super().__init__()
        c = image_shape[0]
        self.features = nn.Sequential(
            conv_bn_relu(c, width),
            nn.MaxPool2d(2),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
            nn.MaxPool2d(2),
            conv_bn_relu(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what FilterAndFeatureMaps draws)."""
        return self.features[0][0]


class PlainCNN(nn.Module):
    """The plainest conv net: three stages of one conv-BN-ReLU (widths w, 2w, 4w), each followed by
    max-pooling, then global average pooling and one linear layer. Half the SmallCNN's work per image
    (no second conv at half resolution); the transformation classifier of GeoTrans, where it gives
    better anomaly scores than the SmallCNN in 0.63x its CPU time (docs/anomaly.md)."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 16, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = image_shape[0]
        for out in (width, 2 * width, 4 * width):
            layers += [conv_bn_relu(channels, out), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what FilterAndFeatureMaps draws)."""
        return self.features[0][0]


class BasicBlock(nn.Module):
    """He et al. 2016 basic residual block; a 1x1 projection where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    """A residual CNN for CIFAR-10: a conv stem and three stages of two basic blocks
    (widths w, 2w, 4w; stride 2 between stages), global average pooling."""

    def __init__(
        self, image_shape: tuple[int, int, int], num_classes: int, width: int = 32, dropout: float = 0.0
    ) -> None:
        super().__init__()
        c = image_shape[0]
        layers: list[nn.Module] = [conv_bn_relu(c, width)]
        in_channels = width
        for stage, channels in enumerate((width, 2 * width, 4 * width)):
            layers.append(BasicBlock(in_channels, channels, stride=1 if stage == 0 else 2))
            layers.append(BasicBlock(channels, channels))
            in_channels = channels
        layers.append(nn.AdaptiveAvgPool2d(1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def input_layer(self) -> nn.Conv2d | None:
        """The first convolution (what FilterAndFeatureMaps draws)."""
        return self.features[0][0]


BACKBONES: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lenet5": LeNet5,
    "alexnet": AlexNetSmall,
    "cnn": SmallCNN,
    "plain": PlainCNN,
    "resnet": ResNetSmall,
}


def build_backbone(
    name: Backbone, image_shape: tuple[int, int, int], num_classes: int, width: int | None, dropout: float | None
) -> nn.Module:
    """Build a backbone by name; `width` and `dropout` left as None take the backbone's own default."""
    kwargs = {k: v for k, v in {"width": width, "dropout": dropout}.items() if v is not None}
    return BACKBONES[name](tuple(image_shape), num_classes, **kwargs)

"""Colours of segmentation classes, shared by the figures and the mask PNGs: background black, then
matplotlib's tab10 (tab20 beyond ten classes), so a class has the same colour everywhere."""

from pathlib import Path

import numpy as np
import torch


def palette(num_classes: int) -> np.ndarray:
    """RGB uint8 [num_classes, 3]: black for class 0, distinct colours for the rest."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 11 else "tab20"]
    colours = [(0.0, 0.0, 0.0)] + [cmap(k % cmap.N)[:3] for k in range(num_classes - 1)]
    return (np.array(colours) * 255).round().astype(np.uint8)


def write_mask_png(path: Path, mask: torch.Tensor, num_classes: int) -> None:
    """An indexed (palette) PNG, as PASCAL VOC ships its masks: each pixel's value is its class, and
    image viewers show the class colours."""
    from PIL import Image

    image = Image.fromarray(mask.to(torch.uint8).cpu().numpy(), mode="P")
    image.putpalette(palette(num_classes).flatten().tolist())
    image.save(path)

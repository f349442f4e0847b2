"""Labelled mosaics: many small panels (images, kernels, feature maps) coloured here and drawn
as one picture in one matplotlib axes, which renders in a fraction of the time of a grid of
subplots (measured: benchmarks/callback_cost.py)."""

import math

import numpy as np
import torch

from callbacks.media import pyplot
from networks.kernels import LUMA


def colorize(values: torch.Tensor, kind: str = "image") -> np.ndarray:
    """A panel as RGB [H, W, 3] in [0, 1].

    kind: 'image' ([C, H, W] in [0, 1], grey or RGB), 'signed' ([H, W]: blue < 0 < red, white 0,
    symmetric around zero), 'magnitude' ([H, W] >= 0: magma), 'angle' ([H, W] radians, NaN
    shown black: the cyclic twilight map), 'rgb-kernel' ([3, H, W] scaled to [0, 1]).
    """
    plt = pyplot()
    values = values.detach().float().cpu()
    if kind == "image":
        rgb = values.expand(3, -1, -1) if values.shape[0] == 1 else values[:3]
        return rgb.clamp(0, 1).permute(1, 2, 0).numpy()
    if kind == "rgb-kernel":
        low, high = values.min(), values.max()
        return ((values - low) / (high - low).clamp_min(1e-12)).permute(1, 2, 0).numpy()
    array = values.numpy()
    if kind == "signed":
        vmax = float(np.abs(array).max()) or 1.0
        return plt.get_cmap("RdBu_r")((array / vmax + 1) / 2)[..., :3]
    if kind == "magnitude":
        vmax = float(array.max()) or 1.0
        return plt.get_cmap("magma")(array / vmax)[..., :3]
    if kind == "angle":
        rgb = plt.get_cmap("twilight")((np.nan_to_num(array) + math.pi) / (2 * math.pi))[..., :3]
        rgb[np.isnan(array)] = 0.0
        return rgb
    raise ValueError(f"unknown panel kind {kind!r}")


def upscale(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize, so a 3x3 kernel fills a cell with crisp squares."""
    rows = (np.arange(height) * rgb.shape[0] // height).clip(max=rgb.shape[0] - 1)
    cols = (np.arange(width) * rgb.shape[1] // width).clip(max=rgb.shape[1] - 1)
    return rgb[rows][:, cols]


class Mosaic:
    """A grid of rows x cols cells of cell_h x cell_w pixels, with a title above each cell and a
    label left of each row. Panels smaller than a cell sit in its top-left corner at their own
    size (to scale), or fill it when `fill=True`."""

    def __init__(self, rows: int, cols: int, cell_h: int, cell_w: int, pad: int = 2, title_px: int = 9) -> None:
        self.rows, self.cols, self.cell_h, self.cell_w = rows, cols, cell_h, cell_w
        self.pad, self.title_px = pad, title_px
        height = rows * (title_px + cell_h + pad) + pad
        width = cols * (cell_w + pad) + pad
        self.canvas = np.ones((height, width, 3))
        self.texts: list[tuple[float, float, str, dict]] = []

    def _origin(self, row: int, col: int) -> tuple[int, int]:
        return row * (self.title_px + self.cell_h + self.pad) + self.title_px + self.pad, col * (
            self.cell_w + self.pad
        ) + self.pad

    def put(self, row: int, col: int, rgb: np.ndarray, title: str = "", fill: bool = False) -> None:
        if fill:
            rgb = upscale(rgb, self.cell_h, self.cell_w)
        top, left = self._origin(row, col)
        h, w = min(rgb.shape[0], self.cell_h), min(rgb.shape[1], self.cell_w)
        self.canvas[top : top + h, left : left + w] = rgb[:h, :w]
        if title:
            self.texts.append((left + self.cell_w / 2, top - 1.5, title, {"ha": "center", "va": "bottom"}))

    def frame(self, row: int, col: int, colour: tuple[float, float, float], width: int = 1) -> None:
        """A coloured border just outside a cell (in the padding), e.g. to mark true anomalies."""
        top, left = self._origin(row, col)
        w = min(width, self.pad)
        self.canvas[top - w : top + self.cell_h + w, left - w : left] = colour
        self.canvas[top - w : top + self.cell_h + w, left + self.cell_w : left + self.cell_w + w] = colour
        self.canvas[top - w : top, left - w : left + self.cell_w + w] = colour
        self.canvas[top + self.cell_h : top + self.cell_h + w, left - w : left + self.cell_w + w] = colour

    def note(self, row: int, col: int, text: str) -> None:
        """Text in the middle of an empty cell."""
        top, left = self._origin(row, col)
        self.texts.append((left + self.cell_w / 2, top + self.cell_h / 2, text, {"ha": "center", "va": "center"}))

    def numbers(self, row: int, col: int, values: torch.Tensor) -> None:
        """Write each entry of a small kernel [k, k] onto its square (the panel must fill the cell)."""
        top, left = self._origin(row, col)
        k_h, k_w = values.shape
        for i, line in enumerate(values.tolist()):
            for j, value in enumerate(line):
                x, y = left + (j + 0.5) * self.cell_w / k_w, top + (i + 0.5) * self.cell_h / k_h
                dark = self.canvas[int(y), int(x)] @ np.array(LUMA) < 0.45
                style = {"ha": "center", "va": "center", "color": "white" if dark else "black"}
                self.texts.append((x, y, f"{value:.2g}", style))

    def row_label(self, row: int, text: str) -> None:
        top, _ = self._origin(row, 0)
        self.texts.append((-1, top + self.cell_h / 2, text, {"ha": "right", "va": "center"}))

    def figure(self, title: str = "", inches_per_cell: float = 1.0, fontsize: float = 6.5):
        plt = pyplot()
        height, width = self.canvas.shape[:2]
        inches = inches_per_cell * self.cols
        figure = plt.figure(figsize=(inches, inches * height / width))
        axis = figure.add_axes((0, 0, 1, 1))
        axis.imshow(self.canvas, interpolation="nearest")
        axis.axis("off")
        for x, y, text, style in self.texts:
            axis.text(x, y, text, fontsize=fontsize, **style)
        if title:
            axis.text(0, -self.pad, title, fontsize=fontsize + 1, ha="left", va="bottom")
        return figure

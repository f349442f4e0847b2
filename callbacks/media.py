"""The one place that knows how a figure reaches the loggers: W&B, TensorBoard, or files only.

Every function writes a file under the run directory first (`<trainer.log_dir>/figures/`), so CSV
and offline users lose nothing, then hands the same picture to each logger that can show it.
Callers call these on rank zero only; nothing here is collective.
"""

import csv
import re
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: figures are files, never
    windows, and train.py's start-up does not pay for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_dir(trainer: Trainer) -> Path:
    """Where `trainer.log_dir` points, without its broadcast: that property is a collective under
    DDP, so rank zero calling it alone would wait forever for the other ranks."""
    path = None
    if trainer.loggers:
        logger = trainer.loggers[0]
        path = logger.log_dir if isinstance(logger, TensorBoardLogger | CSVLogger) else logger.save_dir
    return Path(path or trainer.default_root_dir)


def figures_dir(trainer: Trainer) -> Path:
    path = log_dir(trainer) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_for(trainer: Trainer, key: str, suffix: str, tag: str | None = None) -> Path:
    """`figures/<key>/<tag><suffix>`; the tag defaults to the epoch, so each epoch keeps its figure:
    `epoch003` for `trainer.current_epoch` 3, counted from 0 as Lightning's progress bar counts them (a
    title names it with FigureCallback.epoch_title)."""
    folder = figures_dir(trainer) / re.sub(r"[^\w.-]+", "_", key)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{tag or f'epoch{trainer.current_epoch:03d}'}{suffix}"


def log_figure(trainer: Trainer, key: str, figure: Any, tag: str | None = None, step: int | None = None) -> Path:
    """A matplotlib figure: PNG file, W&B image, TensorBoard figure. Closes the figure. `step`: the
    training step it shows (default: now), for a figure drawn after the moment it shows."""
    plt = pyplot()
    step = trainer.global_step if step is None else step
    path = file_for(trainer, key, ".png", tag)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_figure(key, figure, global_step=step, close=False)
    plt.close(figure)
    return path


def log_image(trainer: Trainer, key: str, image: torch.Tensor, tag: str | None = None) -> Path:
    """An image tensor [C, H, W] in [0, 1] (e.g. a torchvision grid): PNG file and loggers."""
    from torchvision.utils import save_image

    path = file_for(trainer, key, ".png", tag)
    image = image.detach().float().cpu().clamp(0, 1)
    save_image(image, path)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key, [str(path)], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, image, global_step=trainer.global_step)
    return path


def log_animation(trainer: Trainer, key: str, frames: torch.Tensor, fps: int = 8, tag: str | None = None) -> Path:
    """Frames [T, C, H, W] in [0, 1]: an animated GIF file (looping), a W&B video, and in TensorBoard
    the frames side by side as one image (its video panel needs moviepy)."""
    import imageio.v3 as iio

    path = file_for(trainer, key, ".gif", tag)
    frames = frames.detach().float().cpu().clamp(0, 1)
    pixels = (frames * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    iio.imwrite(path, list(pixels), extension=".gif", duration=1000 / fps, loop=0)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_video(key, [str(path)], step=trainer.global_step, format=["gif"])
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, torch.cat(list(frames), dim=2), global_step=trainer.global_step)
    return path


def log_table(
    trainer: Trainer, key: str, columns: list[str], rows: list[list[Any]], tag: str | None = None, to_wandb: bool = True
) -> Path:
    """Rows of values: a CSV file and, where W&B is on, a wandb.Table (skip it for very long tables
    with to_wandb=False; the CSV always has every row)."""
    path = file_for(trainer, key, ".csv", tag)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    if to_wandb:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key, columns=columns, data=rows, step=trainer.global_step)
    return path

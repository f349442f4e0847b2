"""callbacks/media.py: every figure lands as a file, and in W&B / TensorBoard where they are on."""

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from callbacks import media
from cnnlab.wandb_logger import WandbLogger


def trainer_with(logger, tmp_path) -> Trainer:
    return Trainer(logger=logger, default_root_dir=tmp_path, enable_progress_bar=False, accelerator="cpu")


def a_figure():
    figure, axis = plt.subplots(figsize=(2, 2))
    axis.plot([0, 1], [1, 0])
    return figure


def test_files_only_without_a_media_logger(tmp_path):
    trainer = trainer_with(CSVLogger(tmp_path, name="", version=""), tmp_path)
    png = media.log_figure(trainer, "val/scatter", a_figure())
    assert png == tmp_path / "figures" / "val_scatter" / "epoch000.png"
    assert iio.imread(png).ndim == 3
    grid = media.log_image(trainer, "grid", torch.rand(3, 10, 20), tag="before")
    assert iio.imread(grid).shape[:2] == (10, 20)
    gif = media.log_animation(trainer, "walk", torch.rand(7, 1, 12, 12))
    assert iio.imread(gif, index=None).shape[:3] == (7, 12, 12)  # frames, height, width
    table = media.log_table(trainer, "scores", ["index", "score"], [[0, 0.5], [1, 0.25]])
    assert table.read_text().splitlines() == ["index,score", "0,0.5", "1,0.25"]


def test_tensorboard_gets_the_figure_and_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = trainer_with(logger, tmp_path)
    media.log_figure(trainer, "scatter", a_figure())
    media.log_image(trainer, "grid", torch.rand(1, 8, 8))
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path)).Reload()
    assert set(events.Tags()["images"]) == {"scatter", "grid"}
    assert (tmp_path / "figures" / "scatter" / "epoch000.png").is_file()


def test_wandb_offline_run_holds_the_media(tmp_path, fresh_wandb):
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    trainer = trainer_with(logger, tmp_path)
    media.log_image(trainer, "grid", torch.rand(3, 8, 8))
    media.log_animation(trainer, "walk", torch.rand(4, 3, 8, 8))
    run_dir = logger.experiment.dir
    logger.experiment.finish()
    files = {p.suffix for p in (tmp_path / "wandb").glob("offline-run-*/files/media/**/*") if p.is_file()}
    assert {".png", ".gif"} <= files, (run_dir, files)
    assert (tmp_path / "figures" / "walk" / "epoch000.gif").is_file()

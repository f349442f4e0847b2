"""ReconstructionGrid and SampleGrid: when they draw, what they draw, and what they leave untouched."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from callbacks import ReconstructionGrid, SampleGrid
from callbacks.figure import FigureCallback
from cnnlab.errors import CnnlabError
from lightning_modules import VAE, AutoEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"channels": (8, 16), "latent_dim": 4}


def fit(model, callbacks, tmp_path, epochs: int = 1) -> Trainer:
    images = (torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    loader = DataLoader(TensorDataset(images, torch.zeros(40, dtype=torch.long)), batch_size=20)
    trainer = Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=CSVLogger(tmp_path, name="", version=""),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        accelerator="cpu", num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(model, loader, loader)
    return trainer


def test_reconstruction_grid_draws_every_n_epochs_and_at_predict(tmp_path):
    model = AutoEncoder(**SMALL)
    grid = ReconstructionGrid(num_images=6, every_n_epochs=2, per_row=3)
    trainer = fit(model, [grid], tmp_path, epochs=4)
    folder = tmp_path / "figures" / "reconstructions"
    assert sorted(p.name for p in folder.iterdir()) == ["epoch001.png", "epoch003.png"]
    # rows: 3 inputs, their 3 reconstructions, the next 3 inputs, theirs; 28 px + 2 px padding each
    picture = iio.imread(folder / "epoch003.png")
    assert picture.shape[:2] == (4 * 30 + 2, 3 * 30 + 2)
    images = (torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.8).float()
    first_input = picture[2:30, 2:30, 0]
    assert np.array_equal(first_input, (images[0, 0] * 255).round().byte().numpy())
    model.eval()
    with torch.no_grad():
        first_reconstruction = (model(images[:1])[0, 0] * 255 + 0.5).clamp(0, 255).byte().numpy()
    assert np.abs(picture[32:60, 2:30, 0].astype(int) - first_reconstruction).max() <= 1

    trainer.predict(model, DataLoader(TensorDataset(images[:8], torch.zeros(8)), batch_size=4))
    assert (folder / "predict.png").is_file()


def test_sample_grid_uses_fixed_noise_and_leaves_the_global_rng_alone(tmp_path):
    model = VAE(**SMALL)
    samples = SampleGrid(num_samples=4, per_row=2)
    trainer = fit(model, [samples], tmp_path, epochs=1)
    torch.manual_seed(7)
    expected_next = torch.rand(3)
    torch.manual_seed(7)
    samples._draw(trainer, model, tag="again")
    assert torch.equal(torch.rand(3), expected_next)
    folder = tmp_path / "figures" / "samples"
    assert np.array_equal(iio.imread(folder / "epoch000.png"), iio.imread(folder / "again.png"))
    assert iio.imread(folder / "again.png").shape[:2] == (2 * 30 + 2, 2 * 30 + 2)


def test_sample_grid_refuses_a_model_without_a_prior_in_one_paragraph(tmp_path):
    with pytest.raises(CnnlabError, match=r"SampleGrid needs a generative model.*AutoEncoder has no sample"):
        fit(AutoEncoder(**SMALL), [SampleGrid()], tmp_path)
    assert not (tmp_path / "figures" / "samples").exists()


def test_evaluating_restores_each_submodules_own_state():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a submodule frozen on purpose
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with FigureCallback.evaluating(trainer, model):
        assert not model.training and not model[0].training
        assert torch.is_inference_mode_enabled()
    assert model.training and model[0].training and not model[1].training

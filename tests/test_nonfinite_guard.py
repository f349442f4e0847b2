"""NonFiniteLossGuard's non-blocking mode (the GPU default), run on the CPU: the bad step is still
named exactly, training stops within a step or two, and no checkpoint after it is written."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from callbacks.nonfinite_loss import NonFiniteLossGuard
from cnnlab.errors import CnnlabError


class GoesBad(pl.LightningModule):
    """A linear regression whose loss turns NaN from training batch `bad_batch` on (as NaN weights would)."""

    def __init__(self, bad_batch: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_batch = bad_batch
        self.batches_run = 0

    def training_step(self, batch, batch_idx):
        self.batches_run += 1
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        return loss * float("nan") if self.batches_run > self.bad_batch else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def fit(tmp_path, guard: NonFiniteLossGuard, bad_batch: int, every_n_train_steps: int | None = None, accelerator="cpu"):
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=every_n_train_steps)
    trainer = pl.Trainer(
        max_epochs=3,
        limit_train_batches=8,
        callbacks=[guard, checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator=accelerator,
        devices=1,
    )
    model = GoesBad(bad_batch)
    with pytest.raises(CnnlabError) as info:
        trainer.fit(model, DataLoader(data, batch_size=8))
    return model, str(info.value)


@pytest.mark.parametrize("blocking", [True, False])
def test_the_first_bad_step_is_named_and_training_stops_soon(tmp_path, blocking):
    model, message = fit(tmp_path, NonFiniteLossGuard(blocking=blocking), bad_batch=5)
    # batch 5 (0-based) of epoch 0 is the 6th optimizer step: global_step 6 when its loss is seen
    assert "became nan at step 6 (epoch 0, batch 5)" in message
    assert model.batches_run <= 6 + (0 if blocking else 2)


def test_no_checkpoint_is_written_after_the_bad_step(tmp_path):
    # a checkpoint after every step: step 5 goes bad, and its own save (before the guard has read the
    # device's note back without waiting) must not happen
    _, message = fit(tmp_path, NonFiniteLossGuard(blocking=False), bad_batch=4, every_n_train_steps=1)
    assert "became nan at step 5 (epoch 0, batch 4)" in message
    assert "--ckpt_path last" in message
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(value).all() for value in saved["state_dict"].values())


def test_a_bad_last_step_is_caught_at_the_end_of_the_epoch(tmp_path):
    model, message = fit(tmp_path, NonFiniteLossGuard(blocking=False), bad_batch=7)
    assert "became nan at step 8 (epoch 0, batch 7)" in message
    assert model.batches_run == 8  # no step of the next epoch ran
    assert not (tmp_path / "last.ckpt").exists()

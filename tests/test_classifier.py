"""The classifier: backbones, per-sample loss, optimisation from config, learning on tiny data."""

import functools

import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import MNISTDataModule
from lightning_modules import ImageClassifier
from lightning_modules.optimization import configure_optimizers
from networks.classifiers import BACKBONES, build_backbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_every_backbone_maps_images_to_logits(name, shape):
    net = build_backbone(name, shape, 10, None, None)
    assert net(torch.randn(4, *shape)).shape == (4, 10)


def test_lenet5_is_the_1998_size():
    # LeNet-5 has about 61.7k parameters on 32x32 inputs (LeCun et al. 1998, with a full C3 table)
    params = sum(p.numel() for p in build_backbone("lenet5", (1, 32, 32), 10, None, None).parameters())
    assert 60_000 < params < 62_000


def test_per_sample_loss_is_unreduced_float32_under_autocast():
    model = ImageClassifier(backbone="cnn").eval()
    batch = (torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.per_sample_loss(batch)
    assert losses.shape == (6,) and losses.dtype == torch.float32
    full = torch.nn.functional.cross_entropy(model(batch[0]).float(), batch[1])
    assert torch.allclose(model.per_sample_loss(batch).mean(), full, atol=1e-5)


def test_one_cycle_schedule_gets_total_steps_from_the_trainer():
    model = ImageClassifier(backbone="mlp")

    class FakeTrainer:
        estimated_stepping_batches = 123

    model.trainer = FakeTrainer()  # type: ignore[assignment]
    onecycle = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.01)
    config = configure_optimizers(model, torch.optim.SGD, onecycle)
    assert config["lr_scheduler"]["scheduler"].total_steps == 123
    assert config["lr_scheduler"]["interval"] == "step"
    step = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=2)
    assert configure_optimizers(model, functools.partial(torch.optim.SGD, lr=0.1), step)["lr_scheduler"][
        "interval"
    ] == ("epoch")


def test_label_smoothing_changes_only_the_training_loss():
    torch.manual_seed(0)
    plain, smooth = ImageClassifier(backbone="mlp"), ImageClassifier(backbone="mlp", label_smoothing=0.2)
    smooth.load_state_dict(plain.state_dict())
    batch = (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,)))
    plain.eval(), smooth.eval()
    assert not torch.isclose(plain._shared_step(batch, "train"), smooth._shared_step(batch, "train"))
    assert torch.isclose(plain._shared_step(batch, "val"), smooth._shared_step(batch, "val"))


def test_classifier_learns_tiny_mnist(mnist_root):
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, batch_size=50)
    model = ImageClassifier(backbone="cnn", optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    trainer = Trainer(
        max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.validate(model, dm, verbose=False)
    before = trainer.callback_metrics["val/acc"].item()
    trainer.fit(model, dm)
    after = trainer.callback_metrics["val/acc"].item()
    assert before < 0.3 and after > 0.8, (before, after)

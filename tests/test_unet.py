"""The UNet and its LightningModule: any input size, per-sample losses, learning on tiny data,
metrics on known masks, and the prediction figure."""

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from callbacks import DensePredictionGrid
from datamodules import MNISTScenesDataModule
from lightning_modules import UNetModule
from lightning_modules.unet import iou_and_dice
from networks.unet import UNet

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("upsample", ["bilinear", "nearest", "transposed"])
@pytest.mark.parametrize("size", [(28, 28), (5, 7), (33, 65), (64, 64), (1, 1)])
def test_unet_keeps_any_input_size(upsample, size):
    net = UNet(2, 5, depth=3, base_channels=4, upsample=upsample)
    assert net(torch.randn(2, 2, *size)).shape == (2, 5, *size)


def test_unet_output_is_aligned_with_its_input():
    # Padding to a multiple of 2**depth and cropping back must not shift the picture: a net
    # trained to copy its input can only do so if output pixel (y, x) sees input pixel (y, x).
    torch.manual_seed(0)
    net = UNet(1, 1, depth=2, base_channels=4)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(40):
        x = torch.rand(8, 1, 13, 11)  # padded to 16 x 12: 1 row above, 2 below, 1 column right
        loss = (net(x) - x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    x = torch.rand(4, 1, 13, 11)
    with torch.no_grad():
        y = net(x)
    error = (y - x).square().mean()
    one_right = (y[..., 1:] - x[..., :-1]).square().mean()
    one_down = (y[..., 1:, :] - x[..., :-1, :]).square().mean()
    assert error < 0.2 * min(one_right, one_down)


def test_unet_widths_double_at_each_level():
    net = UNet(1, 11, depth=3, base_channels=16)
    widths = [net.stem[0].out_channels] + [down[1][0].out_channels for down in net.down]
    assert widths == [16, 32, 64, 128]
    assert net.head.in_channels == 16 and net.head.out_channels == 11


def segmentation_batch(n: int = 4, classes: int = 11, size: int = 16):
    torch.manual_seed(0)
    masks = torch.randint(0, classes, (n, size, size))
    return masks.unsqueeze(1).float() / classes, masks


@pytest.mark.parametrize("task", ["segmentation", "denoise"])
def test_per_sample_loss_is_unreduced_float32_under_autocast(task):
    model = UNetModule(task=task, image_shape=(1, 16, 16), base_channels=4, depth=2, dice_weight=0.5).eval()
    images, masks = segmentation_batch()
    batch = (images, masks) if task == "segmentation" else (images, images.clamp(0.2, 0.8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.per_sample_loss(batch)
    assert losses.shape == (4,) and losses.dtype == torch.float32
    with torch.no_grad():
        full = model._losses(model(batch[0]), batch[1]).mean()
        assert torch.allclose(model.per_sample_loss(batch).mean(), full, atol=1e-5)


def test_dice_term_adds_to_the_cross_entropy():
    images, masks = segmentation_batch()
    plain = UNetModule(image_shape=(1, 16, 16), base_channels=4, depth=2).eval()
    dice = UNetModule(image_shape=(1, 16, 16), base_channels=4, depth=2, dice_weight=1.0).eval()
    dice.load_state_dict(plain.state_dict())
    with torch.no_grad():
        extra = dice.per_sample_loss((images, masks)) - plain.per_sample_loss((images, masks))
    assert (extra > 0).all() and (extra < 1).all()  # 1 - soft Dice of an untrained net: in (0, 1)


def fit_steps(model: UNetModule, batch, steps: int) -> tuple[float, float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model.per_sample_loss(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_segmentation_loss_goes_down_on_tiny_scenes(mnist_root):
    torch.manual_seed(0)
    dm = MNISTScenesDataModule(data_dir=str(mnist_root), val_size=100, train_scenes=16, canvas_size=32, max_scale=1.0)
    dm.setup("fit")
    batch = dm.on_after_batch_transfer(dm.samples("train"), 0)
    model = UNetModule(image_shape=dm.image_shape, num_classes=11, depth=2, base_channels=8)
    first, last = fit_steps(model, batch, 40)
    assert last < 0.3 * first


def test_denoising_loss_goes_down_on_tiny_images():
    torch.manual_seed(0)
    clean = torch.zeros(16, 1, 20, 20)
    clean[:, :, 5:15, 8:12] = 1.0  # a bar
    noisy = (clean + 0.3 * torch.randn_like(clean)).clamp(0, 1)
    model = UNetModule(task="denoise", image_shape=(1, 20, 20), depth=2, base_channels=8)
    first, last = fit_steps(model, (noisy, clean), 40)
    assert last < 0.3 * first


def test_iou_and_dice_from_known_pixel_counts():
    # class 1: 4 true pixels, 2 of them found, 2 false alarms -> IoU 2/6, Dice 4/8
    true = torch.zeros(1, 4, 4, dtype=torch.long)
    pred = torch.zeros(1, 4, 4, dtype=torch.long)
    true[0, 0, :4] = 1
    pred[0, 0, :2] = 1
    pred[0, 1, :2] = 1
    true[0, 3, 3] = pred[0, 3, 3] = 2  # class 2 perfect; class 3 absent from both
    confmat = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(true.flatten(), pred.flatten(), strict=True):
        confmat[t, p] += 1
    iou, dice = iou_and_dice(confmat)
    assert iou[1].item() == pytest.approx(2 / 6) and dice[1].item() == pytest.approx(4 / 8)
    assert iou[2].item() == 1 and dice[2].item() == 1
    assert iou[3].isnan() and dice[3].isnan()
    assert iou[0].item() == pytest.approx(9 / 13)  # background: 9 right, 2 said class 1, 2 of class 1 missed


class Oracle(nn.Module):
    """Says 'digit 0' (class 1) wherever the image is bright, background elsewhere."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        bright = (images[:, 0] >= 0.5).long()
        return nn.functional.one_hot(bright, 11).permute(0, 3, 1, 2).float() * 10


def test_validation_metrics_on_a_known_prediction(mnist_root, tmp_path):
    dm = MNISTScenesDataModule(data_dir=str(mnist_root), val_size=100, val_scenes=30, train_scenes=8, batch_size=8)
    model = UNetModule(image_shape=dm.image_shape, class_names=dm.class_names, depth=1, base_channels=2)
    model.net = Oracle()
    trainer = Trainer(logger=False, default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    (metrics,) = trainer.validate(model, dm, verbose=False)
    masks = dm.samples("val")[1].long()
    # every foreground pixel is predicted class 1: IoU(1) = its pixels / all foreground pixels,
    # every other digit class is present but never predicted, so its IoU is 0
    expected = (masks == 1).sum().item() / (masks > 0).sum().item()
    assert metrics["val/iou_0"] == pytest.approx(expected, abs=1e-6)
    assert metrics["val/iou_7"] == 0
    present = len(masks.unique()) - 1
    assert metrics["val/miou"] == pytest.approx(expected / present, abs=1e-6)
    assert metrics["val/dice_0"] == pytest.approx(2 * expected / (1 + expected), abs=1e-6)


def test_prediction_grid_leaves_the_model_as_it_found_it(mnist_root, tmp_path):
    dm = MNISTScenesDataModule(data_dir=str(mnist_root), val_size=100, val_scenes=6, train_scenes=8, batch_size=4)
    model = UNetModule(image_shape=dm.image_shape, depth=2, base_channels=4)
    grid = DensePredictionGrid(num_samples=5)
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[grid],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, dm)
    assert (tmp_path / "figures" / "val_predictions" / "epoch000.png").is_file()
    model.train()
    stats = model.net.stem[1].running_mean.clone()
    grid.on_validation_epoch_end(trainer, model)  # as at the end of a validation epoch
    assert model.training and torch.equal(model.net.stem[1].running_mean, stats)
    assert sum(len(inputs) for inputs, _ in grid._batches["val"]) == 5

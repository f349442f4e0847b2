"""The UNet configs through train.py: segmentation fit -> test -> predict (mask PNGs), and the
denoising configs on MNIST and CIFAR-10."""

import json

import numpy as np
import pytest
import torch
from conftest import last_evaluation, only_run, summary_of, tiny_cli_args
from PIL import Image

from lightning_modules.unet import iou_and_dice

TINY_UNET = ["--model.depth=2", "--model.base_channels=4"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_segmentation_fit_test_predict_writes_metrics_figures_and_mask_pngs(run_cli, mnist_root, tmp_path):
    args = tiny_cli_args(
        "mnist_unet_segmentation",
        mnist_root,
        tmp_path / "runs",
        *TINY_UNET,
        "--data.val_size=100",
        "--data.canvas_size=32",
        "--data.max_scale=1.0",
        "--data.train_scenes=48",
        "--data.val_scenes=16",
        "--data.test_scenes=20",
        "--data.batch_size=16",
    )
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_unet_segmentation")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["model"]["init_args"]["num_classes"] == 11  # linked from the scenes
    assert summary["config"]["model"]["init_args"]["image_shape"] == [1, 32, 32]
    assert summary["monitor"] == "val/miou" and {"val/miou", "val/dice", "val/iou_3"} <= set(summary["metrics"])
    assert (run / "figures" / "val_predictions" / "epoch000.png").is_file()

    run_cli("test", [*args, "--ckpt_path=best"])
    metrics = summary_of(last_evaluation(run, "test"))["metrics"]
    assert 0 <= metrics["test/miou"] <= 1 and 0 <= metrics["test/dice"] <= 1

    run_cli("predict", [*args, "--ckpt_path=best"])
    predicted = last_evaluation(run, "predict")
    saved = torch.load(predicted / "predictions.pt")
    assert saved["mask"].shape == (20, 32, 32) and saved["target"].shape == (20, 32, 32)
    pngs = sorted((predicted / "masks").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(20)]
    for i in (0, 19):
        image = Image.open(pngs[i])
        assert image.mode == "P" and np.array_equal(np.array(image), saved["mask"][i].numpy())
    assert (predicted / "figures" / "predict_predictions" / "predict.png").is_file()
    # the predicted masks agree with the test metrics of the same checkpoint
    confmat = torch.zeros(11, 11, dtype=torch.long)
    confmat.index_put_((saved["target"].long().flatten(), saved["mask"].long().flatten()), torch.tensor(1), True)
    iou, dice = iou_and_dice(confmat)
    assert iou[1:].nanmean().item() == pytest.approx(metrics["test/miou"], abs=1e-6)
    assert dice[1:].nanmean().item() == pytest.approx(metrics["test/dice"], abs=1e-6)


def test_mnist_denoising_config_logs_psnr_ssim_and_the_noisy_psnr(run_cli, mnist_root, tmp_path):
    args = tiny_cli_args(
        "mnist_unet_denoise",
        mnist_root,
        tmp_path / "runs",
        *TINY_UNET,
        "--data.val_size=100",
        "--data.max_train_samples=100",
        "--data.batch_size=25",
    )
    run_cli("fit", args)
    run_cli("test", [*args, "--ckpt_path=best"])
    run = only_run(tmp_path, "mnist_unet_denoise")
    summary = summary_of(run)
    metrics = {**summary["metrics"], **summary_of(last_evaluation(run, "test"))["metrics"]}
    assert summary["monitor"] == "val/psnr"
    # Gaussian noise of std 0.5 on [0, 1] pixels, clipped: about 7-9 dB
    assert 5 < metrics["test/psnr_noisy"] < 11
    assert {"test/psnr", "test/ssim", "val/psnr", "val/psnr_best"} <= set(metrics)
    assert (run / "figures" / "val_predictions" / "epoch000.png").is_file()


def test_cifar10_denoising_config_runs_on_colour_images(run_cli, cifar_root, tmp_path):
    args = tiny_cli_args(
        "cifar10_unet_denoise",
        cifar_root,
        tmp_path / "runs",
        *TINY_UNET,
        "--data.val_size=50",
        "--data.batch_size=25",
    )
    run_cli("fit", args)
    summary = json.loads((only_run(tmp_path, "cifar10_unet_denoise") / "summary.json").read_text())
    assert summary["config"]["model"]["init_args"]["image_shape"] == [3, 32, 32]
    assert summary["config"]["data"]["init_args"]["noise"] == "gaussian"
    # std 0.1 noise: about 20 dB before denoising
    assert 18 < summary["metrics"]["val/psnr_noisy"] < 22

"""The AutoEncoder and VAE configs through train.py: fit -> test -> predict, anomaly runs, CIFAR-10."""

import csv
import json
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from conftest import MNIST_TEST, only_run, tiny_cli_args

from lightning_modules import VAE, AutoEncoder

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = ["--model.channels=[8, 16]", "--model.latent_dim=4"]


def args_for(config: str, data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return tiny_cli_args(config, data_root, tmp_path / "runs", *TINY_MODEL, *extra)


def metrics_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())["metrics"]


def test_vae_fit_test_predict_end_to_end(run_cli, mnist_root, tmp_path):
    args = args_for("mnist_vae", mnist_root, tmp_path, "--model.iwae_samples=5")
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_vae")
    fitted = metrics_of(run)
    assert {"train/loss", "train/recon", "train/kl", "val/loss", "val/recon", "val/kl", "val/neg_elbo"} <= set(fitted)
    best = run / "checkpoints" / "best.ckpt"

    run_cli("test", [*args, f"--ckpt_path={best}"])
    tested = metrics_of(run)
    assert tested["test/neg_elbo"] == pytest.approx(tested["test/recon"] + tested["test/kl"], rel=1e-5)
    assert tested["test/loss"] == pytest.approx(tested["test/neg_elbo"], rel=1e-6)  # beta 1
    assert tested["test/iwae_nll"] < tested["test/neg_elbo"]  # the tighter bound

    run_cli("predict", [*args, "--ckpt_path=best"])
    saved = torch.load(run / "predict" / "predictions.pt")
    assert saved["latent"].shape == (MNIST_TEST, 4) and saved["label"].shape == (MNIST_TEST,)
    assert {"score_loss", "score_latent_kl", "score_latent_distance", "score_combined"} <= set(saved)
    # the predicted per-image negative ELBO is the checkpoint's (one posterior draw each, as in test)
    assert saved["score_loss"].mean().item() == pytest.approx(tested["test/neg_elbo"], rel=0.02)
    with open(run / "predict" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == MNIST_TEST and "latent_3" in rows[0] and "score_latent_kl" in rows[0]
    reconstructions = iio.imread(run / "predict" / "figures" / "reconstructions" / "predict.png")
    assert reconstructions.shape[:2] == (4 * 30 + 2, 8 * 30 + 2)  # 16 inputs + 16 reconstructions, 8 a row
    samples = iio.imread(run / "predict" / "figures" / "samples" / "predict.png")
    assert samples.shape[:2] == (8 * 30 + 2, 8 * 30 + 2)  # 64 samples

    model = VAE.load_from_checkpoint(best)  # a CLI checkpoint rebuilds with no arguments
    assert model.latent_dim == 4 and "num_classes" not in model.hparams


def test_autoencoder_fit_test_predict_end_to_end(run_cli, mnist_root, tmp_path):
    args = args_for("mnist_ae", mnist_root, tmp_path)
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_ae")
    run_cli("test", [*args, "--ckpt_path=best"])
    run_cli("predict", [*args, "--ckpt_path=best"])
    test_loss = metrics_of(run)["test/loss"]
    saved = torch.load(run / "predict" / "predictions.pt")
    assert saved["latent"].shape == (MNIST_TEST, 4)
    # deterministic model: the per-image losses written by predict average to the test loss
    assert saved["score_loss"].mean().item() == pytest.approx(test_loss, rel=1e-4)
    assert (run / "predict" / "figures" / "reconstructions" / "predict.png").is_file()
    assert not (run / "predict" / "figures" / "samples").exists()  # an AE has no prior to sample
    assert AutoEncoder.load_from_checkpoint(run / "checkpoints" / "best.ckpt").latent_dim == 4
    # the config's latent-space figures: before training, after the epoch, and at test
    assert (run / "figures" / "latent_scatter" / "before-training.png").is_file()
    assert sorted(p.name for p in (run / "figures" / "latent_interpolation").glob("*.gif"))
    assert (run / "test" / "figures" / "latent_scatter" / "test.png").is_file()
    assert (run / "test" / "figures" / "latent_interpolation" / "test.gif").is_file()


def test_anomaly_run_trains_on_normal_digits_and_scores_all(run_cli, mnist_root, tmp_path):
    args = args_for("mnist_anomaly_ae", mnist_root, tmp_path, "--data.normal_classes=[3]")
    run_cli("fit", args)
    run_cli("predict", [*args, "--ckpt_path=best"])
    saved = torch.load(only_run(tmp_path, "mnist_anomaly_ae") / "predict" / "predictions.pt")
    assert len(saved["label"]) == MNIST_TEST and set(saved["label"].tolist()) == set(range(10))
    assert torch.equal(saved["is_anomaly"], saved["label"] != 3)
    # test: the config's LossHistogram ranks every anomaly score against the labels
    run_cli("test", [*args, "--ckpt_path=best"])
    metrics = metrics_of(only_run(tmp_path, "mnist_anomaly_ae"))
    for score in ("loss", "latent_distance", "combined"):
        assert 0.0 <= metrics[f"test/{score}_auroc"] <= 1.0


def test_bce_on_standardised_pixels_is_refused_with_the_fix(run_cli, mnist_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fit", args_for("mnist_vae", mnist_root, tmp_path, "--data.normalize=true"))
    assert info.value.code == 2
    assert "--data.normalize false" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["cifar10_ae", "cifar10_vae"])
def test_cifar10_configs_fit(config, run_cli, cifar_root, tmp_path):
    run_cli("fit", args_for(config, cifar_root, tmp_path, "--data.val_size=50", "--data.max_train_samples=100"))
    summary = json.loads((only_run(tmp_path, config) / "summary.json").read_text())
    assert summary["config"]["model"]["init_args"]["image_shape"] == [3, 32, 32]
    assert torch.isfinite(torch.tensor(summary["metrics"]["val/loss"]))

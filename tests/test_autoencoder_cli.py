"""The AutoEncoder and VAE configs through train.py: fit -> test -> predict, anomaly runs, CIFAR-10."""

import csv
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from conftest import MNIST_TEST, last_evaluation, only_run, summary_of, tiny_cli_args
from torchmetrics.functional.classification import binary_auroc

from datamodules import CIFAR10DataModule, MNISTDataModule
from lightning_modules import VAE, AutoEncoder
from lightning_modules.vae import kl_divergence

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_MODEL = ["--model.channels=[8, 16]", "--model.latent_dim=4"]


def args_for(config: str, data_root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return tiny_cli_args(config, data_root, tmp_path / "runs", *TINY_MODEL, *extra)


def metrics_of(directory: Path) -> dict:
    return summary_of(directory)["metrics"]


def test_vae_fit_test_predict_end_to_end(run_cli, mnist_root, tmp_path):
    args = args_for("mnist_vae", mnist_root, tmp_path, "--model.iwae_samples=5")
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_vae")
    fitted = metrics_of(run)
    assert {"train/loss", "train/recon", "train/kl", "val/loss", "val/recon", "val/kl", "val/neg_elbo"} <= set(fitted)
    best = run / "checkpoints" / "best.ckpt"

    run_cli("test", [*args, f"--ckpt_path={best}"])
    tested = metrics_of(last_evaluation(run, "test"))
    assert tested["test/neg_elbo"] == pytest.approx(tested["test/recon"] + tested["test/kl"], rel=1e-5)
    assert tested["test/loss"] == pytest.approx(tested["test/neg_elbo"], rel=1e-6)  # beta 1
    assert tested["test/iwae_nll"] < tested["test/neg_elbo"]  # the tighter bound

    run_cli("predict", [*args, "--ckpt_path=best"])
    predicted = last_evaluation(run, "predict")
    saved = torch.load(predicted / "predictions.pt")
    assert saved["latent"].shape == (MNIST_TEST, 4) and saved["label"].shape == (MNIST_TEST,)
    assert {"score_loss", "score_latent_kl", "score_latent_distance", "score_combined"} <= set(saved)
    # the predicted per-image negative ELBO is the checkpoint's (one posterior draw each, as in test)
    assert saved["score_loss"].mean().item() == pytest.approx(tested["test/neg_elbo"], rel=0.02)
    with open(predicted / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == MNIST_TEST and "latent_3" in rows[0] and "score_latent_kl" in rows[0]
    reconstructions = iio.imread(predicted / "figures" / "reconstructions" / "predict.png")
    assert reconstructions.shape[:2] == (4 * 30 + 2, 8 * 30 + 2)  # 16 inputs + 16 reconstructions, 8 a row
    samples = iio.imread(predicted / "figures" / "samples" / "predict.png")
    assert samples.shape[:2] == (8 * 30 + 2, 8 * 30 + 2)  # 64 samples

    model = VAE.load_from_checkpoint(best)  # a CLI checkpoint rebuilds with no arguments
    assert model.latent_dim == 4 and "num_classes" not in model.hparams


def test_autoencoder_fit_test_predict_end_to_end(run_cli, mnist_root, tmp_path):
    args = args_for("mnist_ae", mnist_root, tmp_path)
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_ae")
    run_cli("test", [*args, "--ckpt_path=best"])
    run_cli("predict", [*args, "--ckpt_path=best"])
    tested, predicted = last_evaluation(run, "test"), last_evaluation(run, "predict")
    test_loss = metrics_of(tested)["test/loss"]
    saved = torch.load(predicted / "predictions.pt")
    assert saved["latent"].shape == (MNIST_TEST, 4)
    # deterministic model: the per-image losses written by predict average to the test loss
    assert saved["score_loss"].mean().item() == pytest.approx(test_loss, rel=1e-4)
    assert (predicted / "figures" / "reconstructions" / "predict.png").is_file()
    assert not (predicted / "figures" / "samples").exists()  # an AE has no prior to sample
    assert AutoEncoder.load_from_checkpoint(run / "checkpoints" / "best.ckpt").latent_dim == 4
    # the config's latent-space figures: before training, after the epoch, and at test
    assert (run / "figures" / "latent_scatter" / "before-training.png").is_file()
    assert sorted(p.name for p in (run / "figures" / "latent_interpolation").glob("*.gif"))
    assert (tested / "figures" / "latent_scatter" / "test.png").is_file()
    assert (tested / "figures" / "latent_interpolation" / "test.gif").is_file()


def test_anomaly_run_trains_on_normal_digits_and_scores_all(run_cli, mnist_root, tmp_path):
    args = args_for("mnist_anomaly_ae", mnist_root, tmp_path, "--data.normal_classes=[3]")
    run_cli("fit", args)
    run = only_run(tmp_path, "mnist_anomaly_ae")
    run_cli("predict", [*args, "--ckpt_path=best"])
    saved = torch.load(last_evaluation(run, "predict") / "predictions.pt")
    assert len(saved["label"]) == MNIST_TEST and set(saved["label"].tolist()) == set(range(10))
    assert torch.equal(saved["is_anomaly"], saved["label"] != 3)
    # test: the config's LossHistogram ranks every anomaly score against the labels, from the scores the
    # test step computed; they are the scores predict writes for the same checkpoint
    run_cli("test", [*args, "--ckpt_path=best"])
    metrics = metrics_of(last_evaluation(run, "test"))
    for score in ("loss", "latent_distance", "combined", "knn"):
        ranked = saved[f"score_{score}"].double()
        expected = binary_auroc((ranked - ranked.min()) / (ranked.max() - ranked.min()), saved["is_anomaly"].long())
        assert metrics[f"test/{score}_auroc"] == pytest.approx(expected.item(), abs=1e-4), score
    assert metrics["test/auroc"] == metrics["test/combined_auroc"]  # the AE's primary score
    # precision and recall are those of 'score >= the threshold of the best F1 on validation', kept in
    # the checkpoint
    threshold = torch.load(run / "checkpoints" / "best.ckpt", weights_only=False)["anomaly_thresholds"]["combined"]
    flagged, anomalous = saved["score_combined"].double() >= threshold, saved["is_anomaly"]
    hits = (flagged & anomalous).sum().item()
    assert metrics["test/combined_precision"] == pytest.approx(hits / flagged.sum().item())
    assert metrics["test/combined_recall"] == pytest.approx(hits / anomalous.sum().item())
    # knn: the checkpoint's bank holds the codes of the normal training digits under its weights, and
    # each test digit's score is the mean distance to its 5 nearest there (brute force)
    model = AutoEncoder.load_from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
    data = MNISTDataModule(data_dir=str(mnist_root), download=False, val_size=100, normal_classes=[3], normalize=False)
    data.setup("fit")
    data.setup("test")
    with torch.no_grad():
        train_codes = model.encode(data.model_input(data.samples("train")[0]))
        test_codes = model.encode(data.model_input(data.samples("test")[0]))
    assert torch.allclose(model.latent_scores.neighbours.bank, train_codes, atol=1e-5)
    nearest = torch.cdist(test_codes.double(), train_codes.double()).sort(dim=1).values[:, :5].mean(1)
    assert torch.allclose(saved["score_knn"].double(), nearest, atol=1e-4)


def test_bce_on_standardised_pixels_is_refused_with_the_fix(run_cli, mnist_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fit", args_for("mnist_vae", mnist_root, tmp_path, "--data.normalize=true"))
    assert info.value.code == 2
    assert "--data.normalize false" in capsys.readouterr().err


@pytest.mark.parametrize(("config", "deterministic"), [("cifar10_ae", "loss"), ("cifar10_vae", "kl")])
def test_cifar10_configs_fit_and_test_on_colour_images(config, deterministic, run_cli, cifar_root, tmp_path):
    args = args_for(config, cifar_root, tmp_path, "--data.val_size=50", "--data.max_train_samples=100")
    run_cli("fit", args)
    run = only_run(tmp_path, config)
    run_cli("test", [*args, "--ckpt_path=best"])
    tested = metrics_of(last_evaluation(run, "test"))
    # the checkpoint, on the run's own DataModule rebuilt from its record, reproduces the test metric
    # that is deterministic (the AE's loss; the VAE's loss draws z, its closed-form KL does not)
    data = CIFAR10DataModule(**summary_of(run)["config"]["data"]["init_args"])
    data.setup("test")
    images, labels = data.samples("test")
    model = (VAE if config == "cifar10_vae" else AutoEncoder).load_from_checkpoint(run / "checkpoints" / "best.ckpt")
    with torch.no_grad():
        x = data.model_input(images)
        assert model.eval().decode(model.encode(x)).shape == (len(images), 3, 32, 32)
        if deterministic == "kl":
            expected = kl_divergence(*model.posterior(x)).mean()
        else:
            expected = model.per_sample_loss((x, labels)).mean()
    assert tested[f"test/{deterministic}"] == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.slow
def test_ddp_fits_the_latent_gaussian_over_all_ranks_and_merges_predictions(run_cli, mnist_root, tmp_path):
    """Two CPU processes (gloo) over 99 validation images (one rank a sample short, no padding): the
    reference scores come from every rank's images once, and the latent Gaussian from all training
    images (each rank fits the same), as one process gets them; predictions are merged in dataset order."""
    import subprocess
    import sys

    from conftest import ROOT

    from datamodules import MNISTDataModule

    args = args_for("mnist_ae", mnist_root, tmp_path, "--data.max_eval_samples=99")
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    for subcommand, extra in (("fit", []), ("predict", ["--ckpt_path=best"])):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), subcommand, *args, *ddp, *extra],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = only_run(tmp_path, "mnist_ae")
    model = AutoEncoder.load_from_checkpoint(run / "checkpoints" / "best.ckpt").eval()
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, max_eval_samples=99, normalize=False)
    dm.setup("fit")
    images, _ = dm.samples("train")
    with torch.inference_mode():
        codes = model.encode(dm.model_input(images)).double()
    assert torch.allclose(model.latent_scores.latent_gaussian.mean.double(), codes.mean(0), atol=1e-4)
    assert len(model.reference_scores()["loss"]) == 99  # every validation image, once
    ddp_predictions = torch.load(last_evaluation(run, "predict") / "predictions.pt")
    assert torch.equal(ddp_predictions["index"], torch.arange(99))  # max_eval_samples caps the test split too
    run_cli("predict", [*args, "--ckpt_path=best"])
    single = torch.load(last_evaluation(run, "predict") / "predictions.pt")
    assert torch.allclose(ddp_predictions["score_loss"], single["score_loss"], rtol=1e-4, atol=1e-4)

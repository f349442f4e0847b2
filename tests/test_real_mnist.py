"""Real data: the shipped MNIST classifier config, one epoch on the shared training digits, tested on
the official 10,000 test digits. Skips where ../shared/data/mnist is absent (a user's clone)."""

import pytest
from conftest import ROOT, last_evaluation, only_run, summary_of


@pytest.mark.slow
def test_one_epoch_of_the_mnist_classifier_reaches_98_percent(run_cli, shared_mnist_root, tmp_path):
    args = [
        "--config",
        str(ROOT / "configs" / "mnist_classifier.yaml"),
        "--config",
        str(ROOT / "configs" / "logger" / "csv.yaml"),
        f"--data.data_dir={shared_mnist_root}",
        "--data.download=false",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    run_cli("fit", args)
    run_cli("test", [*args, "--ckpt_path=best"])
    run = only_run(tmp_path)
    assert summary_of(run)["config"]["data"]["init_args"]["val_size"] == 5000
    metrics = summary_of(last_evaluation(run, "test"))["metrics"]
    assert metrics["test/acc"] >= 0.98, metrics

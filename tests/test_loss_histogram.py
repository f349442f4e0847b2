"""LossHistogram draws what the evaluation steps scored and what the model computed: every sample once
in dataset order (also under two-process DDP through train.py), the model's best-F1 threshold and
metrics in the figure and the CSV, no forward pass of its own, nothing at all with figures off. The
anomaly metrics themselves are the model's: tests/test_anomaly_metrics.py."""

import csv
import subprocess
import sys
import types

import pytest
import torch
from conftest import MNIST_TEST, ROOT, last_evaluation, summary_of
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from tiny_autoencoder import TinyAutoEncoder

from callbacks import LossHistogram, loss_histogram
from callbacks.loss_histogram import SplitScores, _histograms, in_dataset_order
from cnnlab.environment import FIGURES_ENV
from datamodules import MNISTDataModule
from lightning_modules.base import CnnlabModule

NORMAL = [0, 1, 2, 3, 4]

pytestmark = pytest.mark.usefixtures("one_thread")


def read_rows(path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict], name: str) -> torch.Tensor:
    if name in ("is_anomaly", "flagged"):
        return torch.tensor([r[name] == "True" for r in rows])
    return torch.tensor([float(r[name]) for r in rows], dtype=torch.float64)


def trainer_for(out, callbacks, logger=False, epochs: int = 1) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        logger=logger,
        default_root_dir=out,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
    )


def test_padding_duplicates_are_counted_once_in_dataset_order():
    # two ranks of a padding DistributedSampler over 5 samples: rank 0 [0, 2, 4], rank 1 [1, 3, 0]
    index = torch.tensor([0, 2, 4, 1, 3, 0])
    values = index.float().unsqueeze(1) * 10
    ordered, labels, scores = in_dataset_order(index, index % 2, values)
    assert ordered.tolist() == [0, 1, 2, 3, 4]
    assert scores[:, 0].tolist() == [0, 10, 20, 30, 40] and labels.tolist() == [0, 1, 0, 1, 0]


def test_the_histogram_shows_the_models_threshold_and_metrics_and_nothing_it_was_not_given():
    scores = torch.linspace(0.1, 1.0, 10)
    split = SplitScores(torch.arange(10), torch.zeros(10, dtype=torch.long), {"loss": scores}, torch.arange(10) >= 5)

    def drawn(thresholds, metrics, stage):
        axis = _histograms(LossHistogram(), split, thresholds, metrics, stage, True, str).axes[0]
        lines = [(float(line.get_xdata()[0]), line.get_label()) for line in axis.get_lines()]
        return axis.get_title(), lines

    val = {"val/loss_auroc": 0.9, "val/loss_auprc": 0.8, "val/loss_best_f1": 0.75, "val/loss_best_f1_threshold": 0.5}
    title, lines = drawn({"loss": 0.5}, val, "val")
    assert "AUROC 0.900, AUPRC 0.800; best F1 0.75" in title, title
    assert lines == [(0.5, "best-F1 threshold on validation\n0.5")]
    test = {"test/loss_auroc": 1.0, "test/loss_auprc": 1.0, "test/loss_precision": 0.5, "test/loss_recall": 1.0}
    title, _ = drawn({"loss": 0.5}, test | {"test/loss_f1": 2 / 3}, "test")
    assert "AUROC 1.000, AUPRC 1.000; at threshold P 0.50 R 1.00 F1 0.67" in title, title
    # undefined (a split of one kind) is said in words, not printed as nan
    title, _ = drawn({"loss": 0.5}, {"test/loss_auroc": float("nan"), "test/loss_auprc": float("nan")}, "test")
    assert "AUROC undefined" in title and "nan" not in title.lower(), title
    # a model that gives no threshold or metrics: no line, no AUROC
    title, lines = drawn({}, {}, "test")
    assert lines == [] and "AUROC" not in title, title


class TinyCnnlabAutoEncoder(CnnlabModule):
    """TinyAutoEncoder's network on cnnlab's base class, whose evaluation computes the anomaly metrics
    and keeps the best-F1 thresholds (lightning_modules/base.py), and nothing more."""

    primary_score = "latent_norm"  # not 'loss', so 'flagged' is seen to follow the primary score

    def __init__(self) -> None:
        super().__init__(optimizer=lambda params: torch.optim.Adam(params, lr=3e-3), lr_scheduler=None)
        self.net = TinyAutoEncoder()

    def per_sample_loss(self, batch) -> torch.Tensor:
        return self.net.per_sample_loss(batch)

    def anomaly_scores(self, batch) -> dict[str, torch.Tensor]:
        return self.net.anomaly_scores(batch)

    def score_names(self) -> tuple[str, ...]:
        return ("loss", "latent_norm")

    def _shared_step(self, batch, stage: str) -> dict:
        scores = self.anomaly_scores(batch)
        return {"loss": scores["loss"].mean(), "scores": {n: v.detach() for n, v in scores.items()}}


@pytest.fixture(scope="module")
def anomaly_run(mnist_root, tmp_path_factory):
    """A tiny cnnlab autoencoder trained on digits 0-4 only, validated on held-out digits of every
    class, tested on all ten; `thresholds` holds the model's thresholds as each validation left them."""
    out = tmp_path_factory.mktemp("anomaly_run")
    thresholds: list[dict[str, float]] = []

    class Thresholds(Callback):  # what the model holds when LossHistogram draws, after its epoch end
        def on_validation_end(self, trainer, pl_module):
            thresholds.append(dict(pl_module.anomaly_thresholds))

    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=200, batch_size=50, normal_classes=NORMAL)
    model = TinyCnnlabAutoEncoder()
    trainer = trainer_for(out, [LossHistogram(num_extremes=4), Thresholds()], CSVLogger(out, name="", version=""), 3)
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    return types.SimpleNamespace(trainer=trainer, model=model, dm=dm, figures=out / "figures", thresholds=thresholds)


def test_per_sample_csv_has_every_test_sample_once_with_its_score(anomaly_run):
    rows = read_rows(next((anomaly_run.figures / "test_per_sample_scores").glob("*.csv")))
    assert [int(r["index"]) for r in rows] == list(range(MNIST_TEST))
    images, labels = anomaly_run.dm.samples("test")
    with torch.inference_mode():
        losses = anomaly_run.model.eval().per_sample_loss((anomaly_run.dm.model_input(images), labels))
    assert torch.allclose(column(rows, "loss").float(), losses, rtol=1e-5, atol=1e-4)
    assert column(rows, "is_anomaly").tolist() == [label not in NORMAL for label in labels.tolist()]
    assert set(rows[0]) >= {"loss", "latent_norm", "flagged"}  # every score of the model


def test_threshold_and_flagged_column_are_the_models_best_f1_threshold_of_the_last_validation(anomaly_run):
    primary = anomaly_run.model.primary_score  # the score the flagged column is of
    reports = sorted((anomaly_run.figures / "val_per_sample_scores").glob("*.csv"))
    assert len(reports) == len(anomaly_run.thresholds) == 3
    # each validation's CSV flags by the threshold that validation chose (drawn after the model's epoch end)
    assert anomaly_run.thresholds[0] != anomaly_run.thresholds[-1]
    for path, chosen in zip(reports, anomaly_run.thresholds, strict=True):
        rows = read_rows(path)
        assert column(rows, "flagged").tolist() == (column(rows, primary) >= chosen[primary]).tolist(), path.name
    # at test, the last validation's; its precision, recall and F1 are those the model logged
    rows = read_rows(next((anomaly_run.figures / "test_per_sample_scores").glob("*.csv")))
    assert anomaly_run.model.anomaly_thresholds == anomaly_run.thresholds[-1]
    flagged, truth = column(rows, "flagged"), column(rows, "is_anomaly")
    assert flagged.tolist() == (column(rows, primary) >= anomaly_run.thresholds[-1][primary]).tolist()
    hits = int((flagged & truth).sum())
    metrics = anomaly_run.trainer.callback_metrics
    assert metrics[f"test/{primary}_precision"].item() == pytest.approx(hits / int(flagged.sum()), abs=1e-6)
    assert metrics[f"test/{primary}_recall"].item() == pytest.approx(hits / int(truth.sum()), abs=1e-6)


def test_each_validation_epoch_draws_the_weights_it_validated(anomaly_run):
    reports = sorted((anomaly_run.figures / "val_per_sample_scores").glob("*.csv"))
    assert [p.name for p in reports] == ["epoch000.csv", "epoch001.csv", "epoch002.csv"]
    first, last = (column(read_rows(p), "loss").float() for p in (reports[0], reports[-1]))
    dm, model = anomaly_run.dm, anomaly_run.model.eval()
    images, labels = dm.samples("val")
    with torch.inference_mode():
        now = model.per_sample_loss((dm.model_input(images), labels))
    # the last report holds the final weights' loss of every validation image; the first, earlier weights'
    assert torch.allclose(last, now, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(first, now, rtol=1e-3)
    for key in ("val_loss_histogram", "val_extremes", "test_loss_histogram", "test_extremes"):
        assert len(list((anomaly_run.figures / key).glob("*.png"))) == (1 if key.startswith("test") else 3), key


def test_it_takes_the_steps_scores_runs_no_forward_pass_and_logs_nothing(mnist_root, tmp_path):
    torch.manual_seed(0)
    dm = MNISTDataModule(
        data_dir=str(mnist_root), val_size=100, batch_size=50, max_train_samples=100, normal_classes=NORMAL
    )
    model = TinyAutoEncoder()  # a model of the protocol alone: no anomaly metrics or thresholds of its own
    calls = []
    original = model.anomaly_scores
    model.anomaly_scores = lambda batch: calls.append(len(batch[0])) or original(batch)
    trainer = trainer_for(tmp_path, [LossHistogram(num_extremes=2)])
    trainer.fit(model, dm)
    trainer.test(model, dm, verbose=False)
    # one call per evaluation batch, made by the steps themselves: every validation and test image once
    n_val, n_test = len(dm.samples("val")[1]), len(dm.samples("test")[1])
    assert sum(calls) == n_val + n_test
    assert sorted(trainer.callback_metrics) == ["test/loss"]  # the model's own; nothing from the callback
    rows = read_rows(tmp_path / "figures" / "test_per_sample_scores" / "test.csv")
    assert len(rows) == n_test and "flagged" not in rows[0]  # the model chose no threshold


def test_with_figures_off_it_collects_nothing(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv(FIGURES_ENV, "0")  # what cnnlab-seeds sets for the seeds after the first
    histogram = LossHistogram()
    held = []

    class Held(Callback):  # runs after LossHistogram's batch hooks
        def on_validation_batch_end(self, *args, **kwargs):
            held.append(len(histogram._batches))

        on_test_batch_end = on_validation_batch_end

    monkeypatch.setattr(loss_histogram, "gather_ranks", lambda *a: pytest.fail("gathered with figures off"))
    torch.manual_seed(0)
    dm = MNISTDataModule(
        data_dir=str(mnist_root), val_size=100, batch_size=50, max_train_samples=100, normal_classes=NORMAL
    )
    trainer = trainer_for(tmp_path, [histogram, Held()])
    trainer.fit(TinyAutoEncoder(), dm)
    trainer.test(trainer.lightning_module, dm, verbose=False)
    # every evaluation batch seen, none kept
    assert len(held) == len(dm.val_dataloader()) + len(dm.test_dataloader()) and not any(held)
    assert not (tmp_path / "figures").exists()


def test_without_normal_classes_the_loss_is_drawn_per_class(mnist_root, tmp_path, caplog, monkeypatch):
    figures = []
    draw = loss_histogram._histograms
    monkeypatch.setattr(loss_histogram, "_histograms", lambda *a: figures.append(draw(*a)) or figures[-1])
    torch.manual_seed(0)
    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, batch_size=50, max_train_samples=100)
    trainer = trainer_for(tmp_path, [LossHistogram()])
    with caplog.at_level("INFO"):
        trainer.fit(TinyAutoEncoder(), dm)
    assert (tmp_path / "figures" / "val_loss_histogram" / "epoch000.png").is_file()
    rows = read_rows(tmp_path / "figures" / "val_per_sample_scores" / "epoch000.csv")
    assert len(rows) == 100 and "flagged" not in rows[0] and not any(column(rows, "is_anomaly"))
    # per score a histogram of all and a box per class beside it; no threshold, no AUROC
    (figure,) = figures
    histogram, boxes = figure.axes[:2]
    assert [t.get_text() for t in boxes.get_xticklabels()] == [str(c) for c in sorted({int(r["label"]) for r in rows})]
    assert not [line for line in histogram.get_lines() if "threshold" in line.get_label()]
    assert "AUROC" not in histogram.get_title()
    # a classifier-style run without normal classes is what the histogram is for: no hint about them
    assert not [r.message for r in caplog.records if "LossHistogram" in r.message or "normal_classes" in r.message]


@pytest.mark.slow
def test_ddp_draws_each_sample_once_and_matches_one_process(run_cli, tiny_args, tmp_path):
    """The classifier config with its LossHistogram, tested by two CPU processes (gloo) over 99
    test images: the odd count leaves one rank a sample short, with no padding."""
    args = [*tiny_args, "--data.max_eval_samples=99"]
    run_cli("fit", args)
    run = next((tmp_path / "runs" / "mnist_classifier").iterdir())
    checkpoint = f"--ckpt_path={summary_of(run)['best_checkpoint']}"

    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp", checkpoint]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "test", *args, *ddp],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ddp_test = last_evaluation(run, "test")
    ddp_rows = read_rows(next((ddp_test / "figures" / "test_per_sample_scores").glob("*.csv")))

    run_cli("test", [*args, checkpoint])
    single_test = last_evaluation(run, "test")
    assert single_test != ddp_test  # each evaluation its own record
    single_rows = read_rows(next((single_test / "figures" / "test_per_sample_scores").glob("*.csv")))

    assert [int(r["index"]) for r in ddp_rows] == list(range(99))  # every sample, once, in order
    assert [r["label"] for r in ddp_rows] == [r["label"] for r in single_rows]
    assert torch.allclose(column(ddp_rows, "loss"), column(single_rows, "loss"), rtol=1e-4, atol=1e-6)

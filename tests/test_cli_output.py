"""What a run prints and logs besides its results: no adverts or hints that do not apply, a progress
bar whose metrics fit and lead with the monitored one, no placeholder `hp_metric` in TensorBoard, and
figure files named after the epoch their titles name."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT, only_run, tiny_cli_args


@pytest.fixture(scope="module")
def printed_fit(mnist_root, tmp_path_factory) -> str:
    """One tiny fit as a user runs it (a process of its own, progress bar on, the CSV logger); its stdout
    and stderr together."""
    tmp = tmp_path_factory.mktemp("printed_fit")
    args = [*tiny_cli_args("mnist_classifier", mnist_root, tmp / "runs"), "--trainer.enable_progress_bar=true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "fit", *args],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def test_a_fit_prints_no_lightning_tip_and_no_normal_classes_hint(printed_fit):
    out = printed_fit
    assert "Epoch 0" in out and "cnnlab: fit 'mnist_classifier'" in out  # the run's own lines are there
    assert "litlogger" not in out and "litmodels" not in out and "Tip:" not in out
    assert "normal_classes" not in out  # a classifier run without them: its histogram needs no hint
    assert "to estimate number of stepping batches" not in out
    assert "exists and is not empty" not in out  # CSVLogger on the run directory cnnlab made for it


def test_the_progress_bar_shows_the_monitored_metric_first_and_no_version(printed_fit):
    # mnist_classifier.yaml's checkpoints monitor val/acc; the bar's last line holds its epoch's metrics.
    lines = [line for line in re.split(r"[\r\n]", printed_fit) if line.startswith("Epoch 0: 100%")]
    postfix = lines[-1].rsplit("it/s, ", 1)[1].rstrip(" ]")
    names = [item.split("=")[0] for item in postfix.split(", ")]
    assert names[0] == "val/acc", lines[-1]
    assert "train/loss" in names and "val/loss" in names
    assert "v_num" not in printed_fit


def test_a_tensorboard_logger_without_the_preset_logs_no_placeholder_hp_metric(run_cli, tiny_args, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli("fit", [*tiny_args, "--trainer.logger=lightning.pytorch.loggers.TensorBoardLogger"])
    events = EventAccumulator(str(only_run(tmp_path)))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "val/acc" in scalars  # the run's metrics are in this event file
    assert "hp_metric" not in scalars


def test_the_tensorboard_preset_turns_the_placeholder_hp_metric_off(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    preset = yaml.safe_load((ROOT / "configs" / "logger" / "tensorboard.yaml").read_text())["trainer"]["logger"]
    assert preset["class_path"] == "lightning.pytorch.loggers.TensorBoardLogger"
    logger = TensorBoardLogger(save_dir=tmp_path, name="", version="", **preset.get("init_args", {}))
    logger.log_hyperparams({"lr": 0.003})
    logger.log_metrics({"val/loss": 1.5}, step=1)
    logger.finalize("success")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert events.Tags()["scalars"] == ["val/loss"]  # Lightning's default would add hp_metric = -1


def test_the_bar_keeps_its_metrics_whole_on_a_narrow_terminal():
    """A line longer than the terminal is cut at its end; the bar leaves out the metrics that do not
    fit instead, never the monitored one."""
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    from cnnlab.lightning_internals import TimedProgressBar

    progress = TimedProgressBar()
    bar = Tqdm(total=430, file=io.StringIO(), ncols=100, desc="Epoch 12", bar_format=progress.BAR_FORMAT, smoothing=0)
    bar.start_t -= 20  # 200 batches in 20 s: the rate a real epoch shows (10.00it/s), not a million
    bar.update(200)
    progress.train_progress_bar = bar
    metrics = {"train/loss": 0.0123, "val/acc_best": 0.9912, "val/loss": 0.0345, "val/acc": 0.9901, "train/acc": 0.98}
    trainer = SimpleNamespace(checkpoint_callback=SimpleNamespace(monitor="val/acc"), progress_bar_metrics=metrics)
    shown = progress.get_metrics(trainer, None)
    bar.set_postfix(shown)
    line = bar.format_meter(**bar.format_dict)
    assert line.endswith("]"), line  # nothing cut
    assert next(iter(shown)) == "val/acc" and shown["val/acc"] == "0.990"
    assert 1 < len(shown) < len(metrics)  # what fits, not all five on 100 columns
    progress.train_progress_bar = Tqdm(total=430, file=io.StringIO(), ncols=400, bar_format=progress.BAR_FORMAT)
    assert len(progress.get_metrics(trainer, None)) == len(metrics)  # a wide terminal shows them all


def test_filter_figures_are_named_after_the_epoch_their_titles_name(run_cli, tiny_args, tmp_path, monkeypatch):
    import matplotlib.text

    from callbacks import media

    titles: dict[str, str] = {}
    original = media.log_figure

    def log_figure(trainer, key, figure, tag=None, step=None):
        text = " ".join(t.get_text() for t in figure.findobj(matplotlib.text.Text))
        path = original(trainer, key, figure, tag, step)
        titles[f"{Path(path).parent.name}/{Path(path).name}"] = text
        return path

    monkeypatch.setattr(media, "log_figure", log_figure)
    run_cli("fit", [*tiny_args, "--trainer.max_epochs=2"])
    files = sorted(p.name for p in (only_run(tmp_path) / "figures" / "filters_first_conv").iterdir())
    assert files == ["before-training.png", "epoch000.png", "epoch001.png"]
    assert "before training:" in titles["filters_first_conv/before-training.png"]
    for name in ("epoch000.png", "epoch001.png"):
        title = titles[f"filters_first_conv/{name}"]
        said = re.findall(r"epoch (\d+)", title)
        assert said and int(said[0]) == int(name[5:8]), (name, title[:80])


def fit_two_epochs(model, callback, mnist_root, tmp_path, heard) -> list[str]:
    """A plain Trainer fitting `model` for two epochs with `callback`; what `heard()` returns when the
    sanity check starts (where the first progress bar would)."""
    from lightning.pytorch import Callback, Trainer

    from datamodules import MNISTDataModule

    class WhenTrainingStarts(Callback):
        def on_sanity_check_start(self, trainer, pl_module) -> None:
            self.said = heard()

    dm = MNISTDataModule(data_dir=str(mnist_root), val_size=100, batch_size=50, max_train_samples=100)
    seen = WhenTrainingStarts()
    trainer = Trainer(
        max_epochs=2,
        logger=False,
        default_root_dir=tmp_path,
        callbacks=[callback, seen],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    return seen.said


def test_filters_on_a_model_without_a_convolution_say_so_before_training(mnist_root, tmp_path, caplog):
    """The MLP names no convolution: FilterAndFeatureMaps draws the Sobel and random-kernel figures only,
    and says so once at setup rather than at the end of the first epoch, inside the progress bar."""
    from callbacks import FilterAndFeatureMaps
    from lightning_modules import ImageClassifier

    with caplog.at_level("INFO"):
        said = fit_two_epochs(
            ImageClassifier(backbone="mlp"),
            FilterAndFeatureMaps(num_images=2),
            mnist_root,
            tmp_path,
            lambda: [r.getMessage() for r in caplog.records],
        )
    about = [r.getMessage() for r in caplog.records if "names no convolution" in r.getMessage()]
    assert len(about) == 1 and about[0] in said, about
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["filters_random_kernels", "filters_sobel"]

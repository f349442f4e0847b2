"""train.py end to end: fit -> test -> predict, run directories, summary.json, seeds, errors."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import MNIST_TEST, MNIST_TRAIN, ROOT, last_evaluation, only_run, summary_of


def test_fit_test_predict_end_to_end(run_cli, tiny_args, tmp_path):
    run_cli("fit", tiny_args)
    run = only_run(tmp_path)
    summary = summary_of(run)
    assert summary["seed"] == 1234 and summary["data_seed"] == 0
    assert summary["config"]["model"]["init_args"]["backbone"] == "cnn"
    assert summary["config"]["model"]["init_args"]["image_shape"] == [1, 28, 28]  # linked from the data
    assert {"train/loss", "val/loss", "val/acc", "val/acc_best"} <= set(summary["metrics"])
    best = Path(summary["best_checkpoint"])
    assert best == run.resolve() / "checkpoints" / "best.ckpt" and best.is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert (run / "metrics.csv").is_file()

    run_cli("test", [*tiny_args, f"--ckpt_path={best}"])
    test = last_evaluation(run, "test")
    record = summary_of(test)
    assert 0 <= record["metrics"]["test/acc"] <= 1 and record["metrics"]["test/loss"] > 0
    assert record["checkpoint"]["path"] == str(best) and record["seed"] == 1234
    assert record["data"]["split"] == "test" and record["data"]["size"] == MNIST_TEST
    assert (test / "metrics.csv").is_file() and (test / "config.yaml").is_file()
    # the run lists the evaluation; its training record is unchanged
    listed = summary_of(run)["evaluations"]
    assert [e["dir"] for e in listed] == [str(test)] and listed[0]["metrics"] == record["metrics"]
    assert summary_of(run)["metrics"] == summary["metrics"]

    run_cli("predict", [*tiny_args, "--ckpt_path=best"])
    predicted = last_evaluation(run, "predict")
    with open(predicted / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == MNIST_TEST
    assert [int(r["index"]) for r in rows] == list(range(MNIST_TEST))
    probs = torch.tensor([[float(r[f"probs_{k}"]) for k in range(10)] for r in rows])
    assert torch.allclose(probs.sum(1), torch.ones(MNIST_TEST), atol=1e-4)
    assert all(int(r["pred"]) == int(torch.tensor([float(r[f"probs_{k}"]) for k in range(10)]).argmax()) for r in rows)
    saved = torch.load(predicted / "predictions.pt")
    assert saved["probs"].shape == (MNIST_TEST, 10)
    # predictions of the checkpoint agree with its test accuracy
    accuracy = (saved["pred"] == saved["label"]).float().mean().item()
    assert accuracy == pytest.approx(record["metrics"]["test/acc"], abs=1e-6)


def test_each_run_gets_its_own_directory(run_cli, tiny_args, tmp_path):
    args = [*tiny_args, "--data.max_train_samples=100", "--data.max_eval_samples=50"]
    run_cli("fit", args)
    run_cli("fit", args)
    runs = sorted((tmp_path / "runs" / "mnist_classifier").iterdir())
    assert len(runs) == 2 and all((r / "config.yaml").is_file() for r in runs)


def test_same_seed_gives_identical_metrics(run_cli, tiny_args, tmp_path):
    args = [*tiny_args, "--data.max_train_samples=200", "--seed_everything=7"]
    run_cli("fit", args)
    run_cli("fit", args)
    first, second = (summary_of(r)["metrics"] for r in sorted((tmp_path / "runs" / "mnist_classifier").iterdir()))
    assert first == second


def test_model_seed_changes_training_but_not_the_split(run_cli, tiny_args, tmp_path):
    for seed in (1, 2):
        run_cli("fit", [*tiny_args, "--data.max_train_samples=200", f"--seed_everything={seed}"])
    runs = sorted((tmp_path / "runs" / "mnist_classifier").iterdir())
    first, second = (summary_of(r) for r in runs)
    assert (first["seed"], second["seed"]) == (1, 2)
    assert first["metrics"]["train/loss"] != second["metrics"]["train/loss"]
    assert first["data_seed"] == second["data_seed"] == 0


def test_the_printed_config_runs_the_same_experiment(run_cli, tiny_args, tmp_path, capsys):
    """--print_config gives the resolved config: run from it alone, the experiment trains to the same
    weights and metrics as the command that printed it."""
    args = [*tiny_args, "--data.max_train_samples=200", "--seed_everything=3"]
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*args, "--print_config"])
    assert info.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    run_cli("fit", args)
    run_cli("fit", ["--config", str(printed)])
    original = summary_of(only_run(tmp_path))
    (again,) = (tmp_path / "runs" / "printed").iterdir()
    assert summary_of(again)["metrics"] == original["metrics"]
    assert summary_of(again)["config"]["model"] == original["config"]["model"]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        (["--data.batch_size=abc"], "data.batch_size got 'abc', but it takes a value of type int"),
        (["--data.bogus=1"], "data.bogus is not a setting of datamodules.MNISTDataModule"),
        (["--model.widthx=3"], "model.widthx is not a setting of lightning_modules.ImageClassifier"),
        (["--trainer.max_epochs=x"], "trainer.max_epochs got 'x'"),
        (["--config", "EMPTY"], "holds no settings"),
        (["--config", "MISSING"], "does not exist"),
    ],
)
def test_parser_errors_are_one_paragraph(bad, says, run_cli, tiny_args, tmp_path, capsys):
    """jsonargparse's refusals were 65-80 lines of usage and Union errors."""
    (tmp_path / "EMPTY").write_text("")
    bad = [str(tmp_path / b) if b in ("EMPTY", "MISSING") else b for b in bad]
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*tiny_args, *bad])
    err = capsys.readouterr().err
    assert info.value.code == 2
    paragraph = err.split("cnnlab: error:", 1)[1].strip().splitlines()[0]
    assert says in paragraph
    assert "help" in paragraph or "does not exist" in paragraph
    assert "usage:" not in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    assert not (tmp_path / "runs").exists()


def test_a_wrong_config_value_names_the_key(run_cli, tiny_args, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*tiny_args, "--model.backbone=vgg99"])
    assert info.value.code != 0
    err = capsys.readouterr().err
    assert "backbone" in err and "vgg99" in err


def test_unseeded_runs_are_refused(run_cli, tiny_args, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*tiny_args, "--seed_everything=false"])
    assert info.value.code == 2
    assert "seed_everything is false" in capsys.readouterr().err


def test_missing_data_is_one_paragraph_not_a_traceback(run_cli, tiny_args, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*tiny_args, f"--data.data_dir={tmp_path / 'empty'}", "--data.download=false"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "MNIST was not found in" in err and "Traceback" not in err


def test_ckpt_path_last_without_an_earlier_run_is_explained(run_cli, tiny_args, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", [*tiny_args, "--ckpt_path=last"])
    assert "no earlier run of 'mnist_classifier'" in capsys.readouterr().err


def test_an_unreadable_checkpoint_is_explained(run_cli, tiny_args, tmp_path, capsys):
    broken = tmp_path / "best.ckpt"
    broken.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit) as info:
        run_cli("test", [*tiny_args, f"--ckpt_path={broken}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--ckpt_path {broken} cannot be read as a checkpoint" in err and "Traceback" not in err


def test_bf16_mixed_precision_runs_the_autocast_path(run_cli, tiny_args, tmp_path):
    spy = ["--trainer.callbacks+=spies.DtypeSpy"]
    run_cli("fit", [*tiny_args, "--data.max_train_samples=200", "--trainer.precision=bf16-mixed", *spy])
    run = only_run(tmp_path)
    seen = json.loads((run / "spy.json").read_text())
    assert seen["training_output_dtype"] == "torch.bfloat16"  # the network ran under autocast
    assert torch.isfinite(torch.tensor(summary_of(run)["metrics"]["val/loss"]))  # float32 loss, finite


def test_validate_of_the_best_checkpoint_gives_its_validation_score(run_cli, tiny_args, tmp_path):
    run_cli("fit", [*tiny_args, "--trainer.max_epochs=2"])
    run = only_run(tmp_path)
    summary = summary_of(run)
    run_cli("validate", [*tiny_args, "--ckpt_path=best"])
    record = summary_of(last_evaluation(run, "validate"))
    assert record["kind"] == "evaluation" and record["data"]["split"] == "val" and record["data"]["size"] == 100
    # the same weights on the same validation split: the score the checkpoint was chosen by
    assert record["metrics"]["val/acc"] == pytest.approx(summary["best_score"], abs=1e-6)


def test_a_nonfinite_loss_stops_the_run_with_step_and_value(run_cli, tiny_args, tmp_path, capsys):
    args = [
        *tiny_args,
        "--model.backbone=mlp",
        "--model.lr_scheduler=null",
        "--model.optimizer=torch.optim.SGD",
        "--model.optimizer.lr=1e30",
        "--data.normalize=false",
    ]
    with pytest.raises(SystemExit) as info:
        run_cli("fit", args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "The training loss became" in err and "at step" in err
    run = only_run(tmp_path)
    assert not (run / "checkpoints" / "last.ckpt").exists()  # no poisoned checkpoint was written
    summary = summary_of(run)
    assert summary["status"] == "failed" and "The training loss became" in summary["error"]


def test_cifar10_augmentation_changes_the_pixels_a_run_trains_on(run_cli, cifar_root, tmp_path):
    common = [
        f"--data.data_dir={cifar_root}",
        "--data.val_size=50",
        "--data.batch_size=32",
        "--model.width=8",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
        "--trainer.callbacks+=spies.AugmentationSpy",
    ]
    unchanged = {}
    for name in ("cifar10_classifier", "cifar10_classifier_noaug"):
        run_cli("fit", ["--config", str(ROOT / "configs" / f"{name}.yaml"), *common])
        run = only_run(tmp_path, name)
        assert summary_of(run)["config"]["model"]["init_args"]["image_shape"] == [3, 32, 32]
        unchanged[name] = json.loads((run / "spy.json").read_text())["unchanged_share"]
    assert unchanged["cifar10_classifier_noaug"] == 1.0  # every training image exactly as stored
    assert unchanged["cifar10_classifier"] < 0.3  # random crops and flips: few land back on the original


def test_wandb_logs_offline_without_credentials(run_cli, tiny_args, tmp_path, monkeypatch, fresh_wandb):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    csv_preset = tiny_args.index(str(ROOT / "configs" / "logger" / "csv.yaml"))
    args = tiny_args[: csv_preset - 1] + tiny_args[csv_preset + 1 :] + ["--data.max_train_samples=100"]
    run_cli("fit", args)
    run = only_run(tmp_path)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert (offline[0] / "files" / "cnnlab_config.yaml").is_file()  # W&B keeps config.yaml for itself
    assert summary_of(run)["wandb"]["id"] in offline[0].name


@pytest.mark.slow
def test_a_failing_wandb_logger_stops_before_training_with_advice(
    run_cli, tiny_args, tmp_path, monkeypatch, capsys, fresh_wandb
):
    # Online mode with a key but an unreachable server: W&B cannot start its run.
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    csv_preset = tiny_args.index(str(ROOT / "configs" / "logger" / "csv.yaml"))
    args = tiny_args[: csv_preset - 1] + tiny_args[csv_preset + 1 :]
    with pytest.raises(SystemExit) as info:
        run_cli("fit", args)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "W&B could not start a run" in err and "WANDB_MODE=offline" in err
    run = only_run(tmp_path)
    assert summary_of(run)["status"] == "failed"
    assert not list((run / "checkpoints").glob("*.ckpt"))  # W&B starts beside the first steps; stopped before any


def train_py(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, **kwargs)


@pytest.mark.slow
def test_resume_continues_step_count_after_a_kill(tiny_args, tmp_path, run_cli):
    # every step logged and flushed, so the killed process leaves its record on disk
    args = [
        *tiny_args,
        "--trainer.max_epochs=30",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger.init_args.flush_logs_every_n_steps=1",
        "--trainer.callbacks=[]",  # the figures of 30 epochs are not what this test is about
    ]
    steps_per_epoch = (MNIST_TRAIN - 100) // 50
    proc = train_py(["fit", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "runs").glob("mnist_classifier/*/checkpoints/last.ckpt"))
        if found and torch.load(found[0], weights_only=False)["global_step"] >= 2 * steps_per_epoch:
            last = found[0]
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last is not None, "the run never wrote last.ckpt"
    killed_at = torch.load(last, weights_only=False)["global_step"]
    assert killed_at < 30 * steps_per_epoch

    run_cli("fit", [*args, "--ckpt_path=last"])
    run = only_run(tmp_path)
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["resumes"][0]["at_step"] == killed_at
    assert summary["global_step"] == 30 * steps_per_epoch
    steps = []
    for part in (run / "metrics-part1.csv", run / "metrics.csv"):  # the killed run's rows, then the resumed
        with open(part) as handle:
            steps += [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/loss")]
    # steps up to the checkpoint were trained once (by the killed process), not again
    before = [s for s in steps if s < killed_at]
    assert len(before) == len(set(before)) == killed_at
    assert max(steps) == 30 * steps_per_epoch - 1


@pytest.mark.slow
def test_ddp_fit_and_test_on_two_cpu_processes(tiny_args, tmp_path, run_cli):
    args = [*tiny_args, "--trainer.devices=2", "--trainer.strategy=ddp", "--data.max_eval_samples=99"]
    for subcommand, extra in (("fit", []), ("test", ["--ckpt_path=best"])):
        proc = train_py([subcommand, *args, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    run = only_run(tmp_path)
    summary = summary_of(run)
    assert str(summary["config"]["trainer"]["devices"]) == "2" and summary["status"] == "finished"
    ddp_metrics = summary_of(last_evaluation(run, "test"))["metrics"]
    # The same checkpoint tested in one process: DDP counted each of the 99 images exactly once
    # (a padded sampler would have counted one twice and shifted accuracy and loss).
    run_cli("test", [*tiny_args, "--data.max_eval_samples=99", f"--ckpt_path={summary['best_checkpoint']}"])
    single = summary_of(last_evaluation(run, "test"))["metrics"]
    assert ddp_metrics["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)
    assert ddp_metrics["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5)


def test_the_progress_bar_reads_metrics_only_on_logging_steps(run_cli, tiny_args, monkeypatch):
    """Each redraw of the metrics beside the bar reads the logged values back from the device (a wait
    for a GPU); the bar shows them only on the steps the loggers write, and redraws its counter alone
    in between (tests/test_gpu.py checks the same on CUDA with sync debug mode "error")."""
    from cnnlab.lightning_internals import TimedProgressBar

    reads, counts = [], []
    original_metrics = TimedProgressBar.get_metrics

    def get_metrics(self, trainer, pl_module):
        if trainer.training:
            reads.append((trainer.global_step, trainer.is_last_batch))
        return original_metrics(self, trainer, pl_module)

    def should_update(self, current, total):
        counts.append(current)
        return True  # redraw at every batch, so only the metrics test decides

    monkeypatch.setattr(TimedProgressBar, "get_metrics", get_metrics)
    monkeypatch.setattr(TimedProgressBar, "_should_update", should_update)
    args = [*tiny_args, "--data.batch_size=20", "--trainer.log_every_n_steps=5", "--trainer.enable_progress_bar=true"]
    run_cli("fit", args)
    assert len(counts) >= 25  # 500 training images: 25 batches, each redrawn
    steps = [step for step, last in reads if not last]
    assert steps and all(step % 5 == 0 for step in steps), reads  # the logging steps 5, 10, ... only


def test_the_progress_bar_shows_every_logging_steps_metrics_even_between_its_redraws(run_cli, tiny_args, monkeypatch):
    # With the clock never due (steps far shorter than its interval), the logging steps still redraw.
    from cnnlab.lightning_internals import TimedProgressBar

    reads = []
    original_metrics = TimedProgressBar.get_metrics

    def get_metrics(self, trainer, pl_module):
        if trainer.training:
            reads.append(trainer.global_step)
        return original_metrics(self, trainer, pl_module)

    monkeypatch.setattr(TimedProgressBar, "get_metrics", get_metrics)
    monkeypatch.setattr(TimedProgressBar, "_should_update", lambda self, current, total: False)
    args = [*tiny_args, "--data.batch_size=20", "--trainer.log_every_n_steps=5", "--trainer.enable_progress_bar=true"]
    run_cli("fit", args)
    assert {5, 10, 15, 20} <= set(reads), reads

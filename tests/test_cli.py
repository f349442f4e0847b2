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
import yaml
from conftest import MNIST_TEST, MNIST_TRAIN, ROOT, only_run


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


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
    summary = summary_of(run)
    assert 0 <= summary["metrics"]["test/acc"] <= 1 and summary["metrics"]["test/loss"] > 0
    assert summary["test_checkpoint"] == str(best)
    assert (run / "test" / "metrics.csv").is_file()

    run_cli("predict", [*tiny_args, "--ckpt_path=best"])
    with open(run / "predict" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == MNIST_TEST
    assert [int(r["index"]) for r in rows] == list(range(MNIST_TEST))
    probs = torch.tensor([[float(r[f"probs_{k}"]) for k in range(10)] for r in rows])
    assert torch.allclose(probs.sum(1), torch.ones(MNIST_TEST), atol=1e-4)
    assert all(int(r["pred"]) == int(torch.tensor([float(r[f"probs_{k}"]) for k in range(10)]).argmax()) for r in rows)
    saved = torch.load(run / "predict" / "predictions.pt")
    assert saved["probs"].shape == (MNIST_TEST, 10)
    # predictions of the checkpoint agree with its test accuracy
    accuracy = (saved["pred"] == saved["label"]).float().mean().item()
    assert accuracy == pytest.approx(summary["metrics"]["test/acc"], abs=1e-6)


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


def test_print_config_shows_the_resolved_config(run_cli, tiny_args, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*tiny_args, "--print_config"])
    assert info.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["class_path"] == "lightning_modules.ImageClassifier"
    assert config["model"]["init_args"]["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.OneCycleLR"
    assert config["seed_everything"] == 1234


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


def test_test_reparses_the_checkpoint_only_where_its_model_arguments_differ(run_cli, tiny_args, tmp_path, monkeypatch):
    """`test --ckpt_path` skips Lightning's re-parse of the config with the checkpoint's
    hyperparameters when they are the model arguments already parsed (fit then test of one config,
    every seed of cnnlab-seeds); where they differ it still runs, and the checkpoint's arguments win."""
    from lightning.pytorch.cli import LightningCLI

    run_cli("fit", [*tiny_args, "--model.label_smoothing=0.1"])
    best = summary_of(only_run(tmp_path))["best_checkpoint"]
    reparsed = []
    parse = LightningCLI._parse_ckpt_path

    def spy(self):
        parse(self)
        reparsed.append(self.config.test.model.init_args.label_smoothing)

    monkeypatch.setattr(LightningCLI, "_parse_ckpt_path", spy)
    run_cli("test", [*tiny_args, "--model.label_smoothing=0.1", f"--ckpt_path={best}"])
    assert reparsed == []
    run_cli("test", [*tiny_args, f"--ckpt_path={best}"])  # the config says label_smoothing 0.0
    assert reparsed == [0.1]


def test_an_unreadable_checkpoint_is_explained(run_cli, tiny_args, tmp_path, capsys):
    broken = tmp_path / "best.ckpt"
    broken.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(SystemExit) as info:
        run_cli("test", [*tiny_args, f"--ckpt_path={broken}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--ckpt_path {broken} cannot be read as a checkpoint" in err and "Traceback" not in err


def test_bf16_mixed_precision_runs_the_autocast_path(run_cli, tiny_args, tmp_path):
    run_cli("fit", [*tiny_args, "--data.max_train_samples=200", "--trainer.precision=bf16-mixed"])
    summary = summary_of(only_run(tmp_path))
    assert summary["config"]["trainer"]["precision"] == "bf16-mixed"
    assert torch.isfinite(torch.tensor(summary["metrics"]["val/loss"]))


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


def test_cifar10_configs_with_and_without_augmentation(run_cli, cifar_root, tmp_path):
    common = [
        f"--data.data_dir={cifar_root}",
        "--data.val_size=50",
        "--data.batch_size=32",
        "--model.width=8",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path / 'runs'}",
    ]
    for name in ("cifar10_classifier", "cifar10_classifier_noaug"):
        run_cli("fit", ["--config", str(ROOT / "configs" / f"{name}.yaml"), *common])
        summary = summary_of(only_run(tmp_path, name))
        assert summary["config"]["model"]["init_args"]["image_shape"] == [3, 32, 32]
        assert summary["config"]["data"]["init_args"]["augment"] is (name == "cifar10_classifier")


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
    assert (offline[0] / "files" / "config.yaml").is_file()
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
    assert not (run / "checkpoints").exists()  # stopped before the first step


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
    assert summary["status"] == "finished" and summary["resumed_at_step"] == killed_at
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
    ddp_metrics = summary["metrics"]
    # The same checkpoint tested in one process: DDP counted each of the 99 images exactly once
    # (a padded sampler would have counted one twice and shifted accuracy and loss).
    run_cli("test", [*tiny_args, "--data.max_eval_samples=99", f"--ckpt_path={summary['best_checkpoint']}"])
    single = summary_of(run)["metrics"]
    assert ddp_metrics["test/acc"] == pytest.approx(single["test/acc"], abs=1e-6)
    assert ddp_metrics["test/loss"] == pytest.approx(single["test/loss"], rel=1e-5)

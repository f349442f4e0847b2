"""What a LightningCLI user expects of train.py beyond fit/test: a run's saved config re-runs it,
settings from environment variables, the debug and early-stopping presets, configs found outside the
checkout, a closing block that says what happened and what to run next, and a --help about cnnlab."""

import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, only_run, summary_of, tiny_cli_args

from cnnlab.records import read_summary


def weights(run) -> dict:
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    return {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}


def test_a_runs_saved_config_reruns_it_to_the_same_weights(run_cli, tiny_args, tmp_path):
    """Two batches (an integer: a fraction 2.0 would be refused, 1 would mean one batch and 1.0 all of
    them), deterministic mode: `fit --config <run>/config.yaml` alone trains the same weights."""
    run_cli(
        "fit", [*tiny_args, "--trainer.limit_train_batches=2", "--trainer.deterministic=true", "--seed_everything=5"]
    )
    original = only_run(tmp_path)
    saved = yaml.safe_load((original / "config.yaml").read_text())
    assert saved["trainer"]["limit_train_batches"] == 2 and isinstance(saved["trainer"]["limit_train_batches"], int)
    run_cli("fit", ["--config", str(original / "config.yaml")])
    runs = sorted((tmp_path / "runs" / "mnist_classifier").iterdir())
    assert len(runs) == 2, "the re-run is a run of the same experiment, in a directory of its own"
    again = runs[1] if runs[0] == original else runs[0]
    assert summary_of(again)["global_step"] == summary_of(original)["global_step"] == 2
    first, second = weights(original), weights(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_the_command_line_and_overrides_are_recorded(run_cli, tiny_args, tmp_path):
    run_cli("fit", [*tiny_args, "--trainer.limit_train_batches=1", "--seed_everything=4"])
    run = only_run(tmp_path)
    header = (run / "config.yaml").read_text().splitlines()[:3]
    assert any("--trainer.limit_train_batches=1" in line and "train.py fit" in line for line in header)
    summary = summary_of(run)
    assert "--trainer.limit_train_batches=1" in summary["command"]
    assert summary["overrides"]["trainer.limit_train_batches"] == "1"


def test_environment_variables_set_what_the_command_line_sets(run_cli, tiny_args, tmp_path, monkeypatch, capsys):
    """LightningCLI's default_env: PL_FIT__TRAINER__LIMIT_TRAIN_BATCHES=3 is --trainer.limit_train_batches=3
    (an integer: three batches). A variable an argument overrides (max_epochs, given as 1) and one that
    is no setting (a typo) are said to be ignored, and only the one that took effect is recorded."""
    monkeypatch.setenv("PL_FIT__TRAINER__LIMIT_TRAIN_BATCHES", "3")
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_EPOCHS", "5")
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_EPOCH", "7")
    run_cli("fit", tiny_args)
    summary = summary_of(only_run(tmp_path))
    assert summary["global_step"] == 3 and summary["epochs"] == 1
    assert (
        summary["overrides"]["trainer.limit_train_batches"] == "3" and summary["overrides"]["trainer.max_epochs"] == "1"
    )
    assert summary["environment_overrides"] == {"PL_FIT__TRAINER__LIMIT_TRAIN_BATCHES": "3"}
    said = " ".join(capsys.readouterr().err.split())
    assert "ignored: PL_FIT__TRAINER__MAX_EPOCH, PL_FIT__TRAINER__MAX_EPOCHS" in said


def test_a_bad_environment_variable_is_named_in_one_paragraph(run_cli, tiny_args, monkeypatch, capsys):
    monkeypatch.setenv("PL_FIT__TRAINER__MAX_EPOCHS", "abc")
    with pytest.raises(SystemExit) as info:
        run_cli("fit", tiny_args)
    assert info.value.code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "trainer.max_epochs got 'abc' from the environment variable PL_FIT__TRAINER__MAX_EPOCHS" in said


def test_the_debug_preset_runs_one_batch_of_each_split_without_a_logger(run_cli, mnist_root, tmp_path):
    args = tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs")
    del args[2:4]  # the CSV logger preset: the debug preset's "no logger" is the one that applies
    run_cli("fit", [*args, "--config", str(ROOT / "configs" / "trainer" / "debug.yaml")])
    run = only_run(tmp_path)
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["global_step"] == 1
    assert not (run / "wandb").exists() and not (run / "metrics.csv").exists()


def test_the_early_stopping_preset_stops_when_the_monitored_metric_stalls(run_cli, tiny_args, tmp_path):
    """min_delta 10 (accuracy cannot gain 10): no validation improves on the first, so with the preset's
    patience of 3 the fit stops after epoch 4 of 20."""
    preset = str(ROOT / "configs" / "trainer" / "early_stopping.yaml")
    run_cli(
        "fit",
        [*tiny_args, "--config", preset, "--early_stopping.min_delta=10", "--trainer.max_epochs=20",
         "--trainer.limit_train_batches=1", "--model.lr_scheduler=null"],
    )  # fmt: skip
    summary = summary_of(only_run(tmp_path))
    assert summary["status"] == "finished"
    assert summary["global_step"] == 4


def test_configs_are_found_outside_the_checkout(run_cli, mnist_root, tmp_path, monkeypatch):
    """From any working directory, `--config configs/...` finds the configs installed with cnnlab."""
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "configs").exists()
    args = tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs")
    args[1], args[3] = "configs/mnist_classifier.yaml", "configs/logger/csv.yaml"
    run_cli("fit", [*args, "--trainer.limit_train_batches=1"])
    assert summary_of(only_run(tmp_path))["experiment"] == "mnist_classifier"


@pytest.mark.slow
def test_the_built_package_holds_every_config(tmp_path):
    """A wheel (a non-editable install) carries configs/ as cnnlab/configs, presets included."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cnnlab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {
        f"cnnlab/configs/{p.relative_to(ROOT / 'configs').as_posix()}" for p in (ROOT / "configs").rglob("*.yaml")
    }
    assert shipped and shipped <= names


def test_fit_ends_with_a_block_whose_next_command_runs(run_cli, tiny_args, tmp_path, capsys, monkeypatch):
    """The closing block names the best score and checkpoint and the record, and its `next` line is a
    command that works as printed: it tests the best checkpoint."""
    monkeypatch.chdir(tmp_path)
    run_cli("fit", [*tiny_args, "--trainer.limit_train_batches=2"])
    err = capsys.readouterr().err
    run = only_run(tmp_path)
    summary = summary_of(run)
    block = err[err.index("cnnlab: fit finished") :]
    assert f"val/acc {summary['best_score']:.4g}" in block
    assert "runs/mnist_classifier/" in block and "summary.json" in block
    (next_line,) = [line for line in block.splitlines() if line.startswith("cnnlab:   next")]
    command = shlex.split(next_line.split("next", 1)[1])
    assert command[:4] == ["python", "-m", "train", "test"]  # no train.py here: the installed module runs it
    run_cli("test", command[4:])
    (evaluation,) = (run / "evaluations").iterdir()
    assert read_summary(evaluation)["status"] == "finished"
    tested = Path(read_summary(evaluation)["checkpoint"]["path"]).resolve()
    assert tested == Path(summary["best_checkpoint"]).resolve()
    assert "cnnlab: test finished" in capsys.readouterr().err


def test_help_is_about_cnnlab_and_ckpt_path_says_what_it_takes(run_cli, capsys):
    with pytest.raises(SystemExit):
        run_cli("--help", [])
    out = capsys.readouterr().out
    assert out.split("\n\n")[1].startswith("cnnlab: train, evaluate and compare")
    assert "python train.py fit --config configs/mnist_classifier.yaml" in out
    with pytest.raises(SystemExit):
        run_cli("test", ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "best" in out and "finished" in out and "hpc" not in out


def test_a_smoke_test_never_resumes_an_unfinished_run_in_place(run_cli, tiny_args, tmp_path, capsys):
    """fast_dev_run on an interrupted run's last.ckpt would write its one step into that run: refused,
    and the run's record and checkpoint are left as they were."""
    from cnnlab.records import update_summary

    run_cli("fit", [*tiny_args, "--trainer.limit_train_batches=2"])
    run = only_run(tmp_path)
    update_summary(run, lambda summary: summary.update(status="interrupted"))
    last = run / "checkpoints" / "last.ckpt"
    before = (last.read_bytes(), (run / "summary.json").read_text())
    with pytest.raises(SystemExit) as info:
        run_cli("fit", [*tiny_args, f"--ckpt_path={last}", "--trainer.fast_dev_run=true"])
    assert info.value.code == 2
    assert "a smoke test would resume the unfinished run" in " ".join(capsys.readouterr().err.split())
    assert (last.read_bytes(), (run / "summary.json").read_text()) == before


def test_early_stopping_on_a_metric_never_logged_is_one_paragraph(run_cli, tiny_args, capsys):
    preset = str(ROOT / "configs" / "trainer" / "early_stopping.yaml")
    with pytest.raises(SystemExit) as info:
        run_cli(
            "fit", [*tiny_args, "--config", preset, "--checkpoint.monitor=val/nope", "--trainer.limit_train_batches=1"]
        )
    assert info.value.code == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "val/nope" in said and "Early stopping watches checkpoint.monitor" in said and "Traceback" not in said

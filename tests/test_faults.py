"""Faults injected on purpose, one test per case found (docs/faults.md lists them with their results):
records that a later command must not rewrite, a checkpoint that must agree with its config, divergence
that must be recoverable, integer batch limits, one paragraph and exit 2 for every bad input, W&B
decided as wandb decides. Each test failed on the code before these cases were fixed."""

import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import MNIST_TEST, ROOT, last_evaluation, make_mnist, only_run, summary_of, tiny_cli_args

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(run_cli, subcommand: str, args: list[str], capsys) -> str:
    """Run a command that must be refused: exit 2, one paragraph, no traceback. Returns the paragraph."""
    with pytest.raises(SystemExit) as info:
        run_cli(subcommand, args)
    err = capsys.readouterr().err
    assert info.value.code == 2, err[-2000:]
    assert "cnnlab: error:" in err and "Traceback" not in err, err[-2000:]
    return err.split("cnnlab: error:", 1)[1]


def files_under(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def training_record(summary: dict) -> dict:
    """What no later command may change: everything but the list of evaluations."""
    return {k: v for k, v in summary.items() if k != "evaluations"}


@pytest.fixture
def trained(run_cli, tiny_args, tmp_path):
    """A finished run of the tiny classifier, trained with seed 7."""
    args = [*tiny_args, "--seed_everything=7"]
    run_cli("fit", args)
    return only_run(tmp_path), args


# -- records a later command must not rewrite ---------------------------------------------------------


def test_a_second_test_on_other_data_is_a_record_of_its_own(run_cli, trained, tmp_path):
    run, args = trained
    before = training_record(summary_of(run))
    run_cli("test", [*args, "--ckpt_path=best"])
    first = summary_of(last_evaluation(run, "test"))
    other = make_mnist(tmp_path / "other", n_test=150)
    run_cli("test", [*args, "--ckpt_path=best", f"--data.data_dir={other}"])
    second = summary_of(last_evaluation(run, "test"))
    assert first["dir"] != second["dir"]
    assert (first["data"]["size"], second["data"]["size"]) == (MNIST_TEST, 150)
    assert first["data"]["fingerprint"] != second["data"]["fingerprint"]
    assert first["checkpoint"]["sha256"] == second["checkpoint"]["sha256"]
    listed = summary_of(run)["evaluations"]
    assert [e["metrics"] for e in listed] == [first["metrics"], second["metrics"]]  # none lost
    assert training_record(summary_of(run)) == before  # the training record is untouched


def test_a_plain_trainer_testing_after_fit_keeps_the_training_record(mnist_root, tmp_path):
    """RunRecord in a plain Trainer (no CLI): a test after fit logs into the run's own folder, and
    once wrote its record over the training record there."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from cnnlab.records import RunRecord
    from datamodules import MNISTDataModule
    from lightning_modules import ImageClassifier

    data = MNISTDataModule(data_dir=str(mnist_root), download=False, val_size=100, batch_size=50)
    model = ImageClassifier(num_classes=10)
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=CSVLogger(tmp_path / "logs"),
        callbacks=[RunRecord()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    run = Path(trainer.log_dir)
    before = training_record(summary_of(run))
    assert before["kind"] == "training" and before["status"] == "finished"
    trainer.test(model, data)
    assert training_record(summary_of(run)) == before
    (entry,) = summary_of(run)["evaluations"]
    evaluation = summary_of(Path(entry["dir"]))
    assert evaluation["kind"] == "evaluation" and evaluation["subcommand"] == "test"
    assert Path(entry["dir"]).parent == run / "evaluations" and "test/acc" in evaluation["metrics"]


def test_an_evaluation_without_a_seed_runs_with_the_runs_own(run_cli, trained):
    run, args = trained
    args = [a for a in args if not a.startswith("--seed_everything")]  # as a user types it
    run_cli("test", [*args, "--ckpt_path=best"])
    test = last_evaluation(run, "test")
    assert summary_of(test)["seed"] == 7 and summary_of(test)["training_seed"] == 7
    assert "seed_everything: 7" in (test / "config.yaml").read_text()
    assert summary_of(run)["seed"] == 7


def test_a_refused_longer_resume_writes_nothing(run_cli, trained, tmp_path, capsys):
    run, args = trained
    before = files_under(tmp_path / "runs")
    paragraph = refused(
        run_cli, "fit", [*args, "--trainer.max_epochs=3", f"--ckpt_path={run}/checkpoints/last.ckpt"], capsys
    )
    assert "planned for" in paragraph and "max_epochs 3" in paragraph
    assert files_under(tmp_path / "runs") == before  # no file changed, none added


def test_resuming_a_finished_run_starts_a_new_one(run_cli, trained, tmp_path):
    run, args = trained
    before = training_record(summary_of(run))
    # no one-cycle plan here, so a longer schedule may go on from the finished run's weights
    plain = [*args, "--model.lr_scheduler=null"]
    run_cli("fit", [*plain, "--trainer.max_epochs=1"])
    first = sorted((tmp_path / "runs" / "mnist_classifier").iterdir())[-1]
    run_cli("fit", [*plain, "--trainer.max_epochs=2", f"--ckpt_path={first}/checkpoints/last.ckpt"])
    runs = sorted((tmp_path / "runs" / "mnist_classifier").iterdir())
    assert len(runs) == 3 and training_record(summary_of(run)) == before
    continued = summary_of(runs[-1])
    assert continued["status"] == "finished" and continued["resumes"][0]["from"].startswith(str(first))


# -- a checkpoint and a config must agree ------------------------------------------------------------


def test_a_checkpoint_of_another_model_is_refused_naming_both(run_cli, mnist_root, tmp_path, capsys):
    vae_args = tiny_cli_args(
        "mnist_vae", mnist_root, tmp_path / "runs", "--model.channels=[8, 16]", "--model.latent_dim=4"
    )
    run_cli("fit", vae_args)
    vae_run = only_run(tmp_path, "mnist_vae")
    before = files_under(vae_run)
    classifier = tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs", "--data.normalize=false")
    paragraph = refused(run_cli, "test", [*classifier, f"--ckpt_path={vae_run}/checkpoints/best.ckpt"], capsys)
    assert "lightning_modules.VAE" in paragraph and "lightning_modules.ImageClassifier" in paragraph
    assert files_under(vae_run) == before  # the VAE run's record is untouched
    assert not (tmp_path / "runs" / "mnist_classifier").exists()


def test_model_arguments_given_with_a_checkpoint_are_applied_or_refused(run_cli, trained, capsys):
    run, args = trained
    # an argument the weights can take (no shape change): applied, and said so
    run_cli("test", [*args, "--ckpt_path=best", "--model.dropout=0.5"])
    record = summary_of(last_evaluation(run, "test"))
    assert record["model_arguments"]["applied"]["dropout"] == {"now": 0.5, "checkpoint": None}
    assert "applied as given on the command line: dropout 0.5" in capsys.readouterr().err
    # one they cannot (another width): refused with the difference, nothing written
    evaluations = sorted((run / "evaluations").iterdir())
    paragraph = refused(run_cli, "test", [*args, "--ckpt_path=best", "--model.width=8"], capsys)
    assert "do not fit" in paragraph and "width 8 (checkpoint: None)" in paragraph
    assert sorted((run / "evaluations").iterdir()) == evaluations


def test_the_checkpoints_arguments_win_over_the_config_files(run_cli, tiny_args, tmp_path, capsys):
    run_cli("fit", [*tiny_args, "--model.backbone=lenet5"])
    run = only_run(tmp_path)
    run_cli("test", [*tiny_args, "--ckpt_path=best"])  # the config file says cnn
    err = capsys.readouterr().err
    assert (
        "built with the checkpoint's arguments where the config differs: backbone 'cnn' (checkpoint: 'lenet5')" in err
    )
    assert summary_of(last_evaluation(run, "test"))["config"]["model"]["init_args"]["backbone"] == "lenet5"


def lrs_after(run: Path, step: int) -> dict[int, float]:
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {int(r["step"]): float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW") and int(r["step"]) >= step}


def test_a_resume_with_a_lower_learning_rate_trains_with_it(run_cli, tiny_args, tmp_path):
    args = [*tiny_args, "--trainer.max_epochs=3", "--trainer.log_every_n_steps=1"]
    with pytest.raises(RuntimeError, match="injected fault"):  # a run that stops unfinished in its second epoch
        run_cli("fit", [*args, "--trainer.callbacks+=seed_faults.FailAtStep", "--trainer.callbacks.init_args.step=15"])
    run = only_run(tmp_path)
    assert summary_of(run)["status"] == "failed"
    at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    run_cli("fit", [*args, "--ckpt_path=last", "--model.lr_scheduler.init_args.max_lr=0.0003"])
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["resumes"][0]["at_step"] == at
    assert summary["resumes"][0]["applied"]["lr_scheduler.max_lr"] == {"now": 0.0003, "checkpoint": 0.003}
    # the learning rate after the resume is the new one-cycle schedule's at each step
    total = summary["global_step"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=0.0003), max_lr=0.0003, total_steps=total
    )
    expected = []
    for _ in range(total):
        expected.append(schedule.get_last_lr()[0])
        schedule.optimizer.step()
        schedule.step()
    logged = lrs_after(run, at)
    assert logged and all(math.isclose(lr, expected[step], rel_tol=1e-5) for step, lr in logged.items())


# -- divergence ------------------------------------------------------------------------------------


def test_divergence_keeps_a_finite_checkpoint_and_its_advice_recovers(run_cli, tiny_args, tmp_path, capsys):
    # SGD whose step size is multiplied by 1e6 after the first epoch: epoch 0 trains, epoch 1 blows up
    args = [
        *tiny_args,
        "--trainer.max_epochs=3",
        "--model.optimizer=torch.optim.SGD",
        "--model.optimizer.lr=0.01",
        "--model.lr_scheduler=torch.optim.lr_scheduler.StepLR",
        "--model.lr_scheduler.step_size=1",
        "--model.lr_scheduler.gamma=1e6",
    ]
    paragraph = refused(run_cli, "fit", args, capsys)
    run = only_run(tmp_path)
    assert "became" in paragraph and "The last finite checkpoint is" in paragraph and "--ckpt_path last" in paragraph
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for name, tensor in last["state_dict"].items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            assert torch.isfinite(tensor).all(), name  # weights and BatchNorm statistics
    assert summary_of(run)["status"] == "failed"
    # follow the advice: resume from it with a lower rate (here the growth of the step size)
    run_cli("fit", [*args[:-1], "--model.lr_scheduler.gamma=0.5", "--ckpt_path=last"])
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["resumes"][0]["applied"]["lr_scheduler.gamma"]["now"] == 0.5
    assert math.isfinite(summary["metrics"]["val/loss"]) and summary["epochs"] == 3


# -- integer limits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["1", "3"])
def test_an_integer_limit_runs_that_many_batches(run_cli, trained, limit):
    run, args = trained
    run_cli("predict", [*args, "--ckpt_path=best", f"--trainer.limit_predict_batches={limit}"])
    with open(last_evaluation(run, "predict") / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    # evaluation batches of 100 images, 2 of them: `1.0` would be all 200 images, `3.0` an error
    assert len(rows) == min(int(limit), 2) * 100


def test_a_fraction_is_written_with_a_decimal_point(run_cli, trained):
    run, args = trained
    run_cli("predict", [*args, "--ckpt_path=best", "--trainer.limit_predict_batches=1.0"])
    with open(last_evaluation(run, "predict") / "predictions.csv") as handle:
        assert len(list(csv.DictReader(handle))) == MNIST_TEST


# -- one paragraph, exit 2, nothing half-written ---------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "bad", "says"),
    [
        ("mnist_classifier", "--data.batch_size=0", "data.batch_size must be at least 1"),
        ("mnist_ae", "--model.latent_dim=0", "model.latent_dim is 0"),
        ("mnist_classifier", "--trainer.max_epochs=-1", "train without end"),
        ("mnist_classifier", "--trainer.max_epochs=-5", "max_epochs"),
        ("mnist_classifier", "--data.val_size=0", "data.val_size is 0"),
    ],
)
def test_an_out_of_range_value_is_one_paragraph_and_leaves_no_directory(
    config, bad, says, run_cli, mnist_root, tmp_path, capsys
):
    paragraph = refused(run_cli, "fit", tiny_cli_args(config, mnist_root, tmp_path / "runs", bad), capsys)
    assert says in paragraph
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_preset_without_a_gpu_says_how_to_run_on_the_cpu(run_cli, mnist_root, tmp_path, capsys):
    args = tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs")
    args = [a for a in args if not a.startswith("--trainer.accelerator")]
    gpu = ["--config", str(ROOT / "configs" / "trainer" / "gpu_amp.yaml")]
    paragraph = refused(run_cli, "fit", [*args, *gpu], capsys)
    assert "finds no GPU" in paragraph and "--trainer.accelerator cpu" in paragraph
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("what", "value"), [("labels", 200), ("image_shape", None)])
def test_corrupt_dataset_content_is_named(what, value, run_cli, tmp_path, capsys):
    import numpy as np
    from conftest import write_idx

    root = make_mnist(tmp_path / "data")
    raw = root / "MNIST" / "raw"
    if what == "labels":
        labels = np.frombuffer((raw / "t10k-labels-idx1-ubyte").read_bytes()[8:], np.uint8).copy()
        labels[[3, 50]] = value
        write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    else:
        images = np.zeros((200, 32, 32), np.uint8)  # another image size than MNIST's 28x28
        write_idx(raw / "t10k-images-idx3-ubyte", images)
    args = tiny_cli_args("mnist_classifier", root, tmp_path / "runs")
    run_cli("fit", args)
    run = only_run(tmp_path)
    paragraph = refused(run_cli, "test", [*args, "--ckpt_path=best"], capsys)
    assert "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte" in paragraph and "corrupt" in paragraph
    assert ("labels outside 0..9 (200)" if what == "labels" else "images of shape (1, 32, 32)") in paragraph
    failed = summary_of(last_evaluation(run, "test"))
    assert failed["status"] == "failed" and summary_of(run)["evaluations"][-1]["status"] == "failed"


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_every_subcommand_has_help(subcommand, run_cli, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(subcommand, ["--help"])
    assert info.value.code == 0 and "--config" in capsys.readouterr().out


# -- W&B as its users expect ---------------------------------------------------------------------------


def test_a_logged_in_user_logs_online_for_wandbs_own_host(tmp_path, monkeypatch, fresh_wandb):
    import wandb

    from cnnlab.wandb_logger import decide_offline

    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert decide_offline(None) is True  # no credentials: offline by itself
    host = wandb.setup().settings.base_url.split("//", 1)[1].rstrip("/")  # whatever host wandb uses now
    (tmp_path / "netrc").write_text(f"machine {host}\n  login user\n  password {'x' * 40}\n")
    (tmp_path / "netrc").chmod(0o600)
    wandb.teardown()
    assert decide_offline(None) is False  # what `wandb login` leaves: online
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert decide_offline(None) is True


def test_predict_opens_no_empty_wandb_run(run_cli, mnist_root, tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = tiny_cli_args("mnist_classifier", mnist_root, tmp_path / "runs")
    csv_preset = args.index(str(ROOT / "configs" / "logger" / "csv.yaml"))
    args = args[: csv_preset - 1] + args[csv_preset + 1 :]  # the default logger, W&B
    run_cli("fit", args)
    run = only_run(tmp_path)
    assert list((run / "wandb").glob("offline-run-*"))  # fit logs to W&B
    run_cli("predict", [*args, "--ckpt_path=best"])
    predicted = last_evaluation(run, "predict")
    assert (predicted / "predictions.csv").is_file()
    assert not (predicted / "wandb").exists()  # the classifier's callbacks draw nothing at predict


def test_seed_commands_without_credentials_are_one_paragraph(tmp_path, monkeypatch, capsys, fresh_wandb):
    from cnnlab.seeds.command import main

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(sys, "argv", ["cnnlab-seeds"])
    assert main(["report", "sweep", "--from-wandb", "me/cnnlab", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no credentials" in err and "Traceback" not in err
    assert main(["one", "--help"]) == 0


def test_a_run_that_fails_before_its_first_step_says_why(run_cli, tiny_args, tmp_path, capsys):
    refused(run_cli, "fit", [*tiny_args, f"--data.data_dir={tmp_path / 'nothing'}", "--data.download=false"], capsys)
    runs = list((tmp_path / "runs" / "mnist_classifier").iterdir())
    assert len(runs) == 1
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["status"] == "failed" and "MNIST was not found" in summary["error"]

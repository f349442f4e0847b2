"""`--ckpt_path best|last` take the newest run that can serve (issue 20): a fast_dev_run smoke test
after a finished run once took the slot (`best` failed, `last` loaded a one-step model), and nothing
said which run was picked. Also: no lock file is left in any record directory."""

import json
from pathlib import Path

import pytest
from conftest import last_evaluation, summary_of
from lightning.pytorch import Callback
from test_faults import refused

pytestmark = pytest.mark.usefixtures("one_thread")


class FailAt(Callback):
    """An error at the start of training epoch `epoch`: the run's record says failed, with the
    last.ckpt of the epochs before."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("a bug in epoch 1")


def stopped_at_epoch_1(spy: str) -> str:
    return f"--trainer.callbacks+={json.dumps({'class_path': spy, 'init_args': {'epoch': 1}})}"


@pytest.fixture
def args(tiny_args):
    return [*tiny_args, "--trainer.callbacks=[]", "--trainer.max_epochs=2"]


def new_run(tmp_path: Path, before: set[Path]) -> Path:
    (run,) = set((tmp_path / "runs" / "mnist_classifier").iterdir()) - before
    return run


def runs(tmp_path: Path) -> set[Path]:
    folder = tmp_path / "runs" / "mnist_classifier"
    return set(folder.iterdir()) if folder.is_dir() else set()


def test_best_and_last_pass_over_a_newer_smoke_run_and_say_which_run(run_cli, args, tmp_path, capsys):
    run_cli("fit", args)
    finished = new_run(tmp_path, set())
    run_cli("fit", [*args, "--trainer.fast_dev_run=true"])
    smoke = new_run(tmp_path, {finished})
    assert (smoke / "checkpoints" / "last.ckpt").is_file()  # Lightning writes it: what `last` used to load
    assert summary_of(smoke)["smoke"] is True and summary_of(finished)["smoke"] is False
    capsys.readouterr()
    for name in ("best", "last"):
        run_cli("test", [*args, f"--ckpt_path={name}"])
        loaded = summary_of(last_evaluation(finished, "test"))["checkpoint"]["path"]
        assert Path(loaded) == finished / "checkpoints" / f"{name}.ckpt"
        err = capsys.readouterr().err
        line = next(line for line in err.splitlines() if line.startswith(f"cnnlab: --ckpt_path {name} -> "))
        assert f"{finished.name}/checkpoints/{name}.ckpt (finished " in line
        assert "passed over newer: 1 fast_dev_run smoke test" in line
    assert not (smoke / "evaluations").exists()


def test_failed_and_interrupted_runs_are_skipped_by_evaluations_and_last_resumes_the_newest(
    run_cli, args, tmp_path, capsys
):
    run_cli("fit", args)
    finished = new_run(tmp_path, set())
    with pytest.raises(RuntimeError, match="a bug in epoch 1"):
        run_cli("fit", [*args, stopped_at_epoch_1("test_best_last.FailAt")])
    failed = new_run(tmp_path, {finished})
    with pytest.raises(SystemExit):
        run_cli("fit", [*args, stopped_at_epoch_1("spies.InterruptAt")])
    interrupted = new_run(tmp_path, {finished, failed})
    assert [summary_of(r)["status"] for r in (failed, interrupted)] == ["failed", "interrupted"]
    capsys.readouterr()

    run_cli("test", [*args, "--ckpt_path=last"])
    loaded = summary_of(last_evaluation(finished, "test"))["checkpoint"]["path"]
    assert Path(loaded) == finished / "checkpoints" / "last.ckpt"
    assert "passed over newer: 1 failed, 1 interrupted" in capsys.readouterr().err

    # fit --ckpt_path last resumes the newest unfinished run in its own directory (no new run)
    run_cli("fit", [*args, "--ckpt_path=last"])
    assert runs(tmp_path) == {finished, failed, interrupted}
    record = summary_of(interrupted)
    assert record["status"] == "finished" and record["epochs"] == 2
    assert record["resumes"][0]["from"] == str(interrupted / "checkpoints" / "last.ckpt")
    assert "resumed in its own directory" in capsys.readouterr().err


def test_no_run_that_can_serve_is_one_paragraph_saying_what_was_found(run_cli, args, tmp_path, capsys):
    run_cli("fit", [*args, "--trainer.fast_dev_run=true"])
    with pytest.raises(SystemExit):
        run_cli("fit", [*args, stopped_at_epoch_1("spies.InterruptAt")])
    interrupted = new_run(tmp_path, {p for p in runs(tmp_path) if summary_of(p).get("smoke")})
    before = runs(tmp_path)
    capsys.readouterr()
    paragraph = refused(run_cli, "test", [*args, "--ckpt_path=best"], capsys)
    assert "(2 runs: 1 fast_dev_run smoke test, 1 interrupted)" in paragraph
    assert f"--ckpt_path {interrupted / 'checkpoints' / 'last.ckpt'}" in paragraph  # how to finish it
    assert len(paragraph.strip().splitlines()) == 2  # the paragraph, then the CNNLAB_DEBUG hint
    assert runs(tmp_path) == before and not (interrupted / "evaluations").exists()


def test_no_lock_file_is_left_in_run_and_evaluation_directories(run_cli, args, tmp_path):
    run_cli("fit", [*args, "--trainer.max_epochs=1"])
    (run,) = runs(tmp_path)
    for subcommand in ("validate", "test", "predict"):
        run_cli(subcommand, [*args, "--ckpt_path=best"])
    evaluations = sorted((run / "evaluations").iterdir())
    assert len(evaluations) == 3
    for directory in (run, *evaluations):
        names = [p.name for p in directory.iterdir()]
        assert not [n for n in names if n.startswith(".") or "lock" in n], (directory, names)
        assert not [p.name for p in directory.iterdir() if p.is_file() and p.stat().st_size == 0]

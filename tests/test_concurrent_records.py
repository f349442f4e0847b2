"""Records under many processes and faults (issue 19): directories claimed atomically by processes
released together, the task a checkpoint was trained for, checkpoints that are whole and verified, a
full or read-only disk, evaluations killed mid-way, and records that say what was evaluated. Each
test failed on the code before the fix (docs/faults.md lists them)."""

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import MNIST_TEST, ROOT, last_evaluation, only_run, summary_of, tiny_cli_args
from test_faults import refused

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).resolve().parent


def slowed_train_py(subcommand: str, args: list[str], spy: str, seconds: float) -> subprocess.Popen:
    """`train.py <subcommand>` in a process of its own, slowed by a spy callback (tests/spies.py) so
    that a test can act on it while it runs."""
    slow = {"class_path": f"spies.{spy}", "init_args": {"seconds": seconds}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, str(ROOT / "train.py"), subcommand, *args, f"--trainer.callbacks+={json.dumps(slow)}"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def trained(run_cli, tiny_args, tmp_path):
    args = [*tiny_args, "--seed_everything=7"]
    run_cli("fit", args)
    return only_run(tmp_path), args


# -- directories claimed atomically --------------------------------------------------------------------


def released_together(barrier, subcommand: str, args: list[str], clock: str) -> None:
    """A spawned process: import everything, wait for the others, then run the command. The clock is
    held at one instant, so that every process picks the same directory name first: the names must
    still come out distinct."""
    torch.set_num_threads(1)
    import cnnlab.run_dir
    from cnnlab.cli import main

    class Held(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromisoformat(clock)

    cnnlab.run_dir.datetime = Held
    barrier.wait()
    main([subcommand, *args])


def run_together(n: int, subcommand: str, args: list[str]) -> list[int]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(n)
    clock = datetime.now().isoformat()
    processes = [context.Process(target=released_together, args=(barrier, subcommand, args, clock)) for _ in range(n)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    return [process.exitcode for process in processes]


@pytest.mark.slow
def test_two_fits_started_at_the_same_instant_get_two_run_directories(tiny_args, tmp_path):
    """Both once printed the same `-> <time>-seed1234` and the second overwrote the first's files."""
    assert run_together(2, "fit", [*tiny_args, "--trainer.limit_train_batches=2"]) == [0, 0]
    runs = sorted((tmp_path / "runs" / "mnist_classifier").iterdir())
    assert len(runs) == 2 and runs[0].name + "-2" == runs[1].name
    summaries = [summary_of(run) for run in runs]
    assert {s["run_dir"] for s in summaries} == {str(run) for run in runs}
    assert all(s["status"] == "finished" for s in summaries)
    for run, summary in zip(runs, summaries, strict=True):
        assert Path(summary["best_checkpoint"]).parent.parent == run  # each wrote its own checkpoints
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["cnnlab"]["run_dir"] == str(run)


@pytest.mark.slow
def test_two_tests_of_one_run_at_the_same_instant_keep_two_records(trained):
    run, args = trained
    best = summary_of(run)["best_checkpoint"]
    assert run_together(2, "test", [*args, f"--ckpt_path={best}"]) == [0, 0]
    evaluations = sorted(p for p in (run / "evaluations").iterdir())
    assert len(evaluations) == 2
    records = [summary_of(e) for e in evaluations]
    assert all(r["status"] == "finished" and r["metrics"]["test/acc"] >= 0 for r in records)
    assert {r["dir"] for r in records} == {str(e) for e in evaluations}
    listed = summary_of(run)["evaluations"]
    assert sorted(e["dir"] for e in listed) == sorted(str(e) for e in evaluations)  # none lost


def test_a_refused_command_releases_the_directory_it_claimed(run_cli, trained, capsys):
    """Weights that do not fit the model (another width) are refused after the evaluation's directory
    was claimed: it goes again, and the run's evaluations/ with it."""
    run, args = trained
    paragraph = refused(run_cli, "test", [*args, "--ckpt_path=last", "--model.width=8"], capsys)
    assert "do not fit" in paragraph
    assert not (run / "evaluations").exists()


# -- the task comes from the checkpoint ---------------------------------------------------------------


def test_an_evaluation_runs_the_task_its_checkpoint_was_trained_for(run_cli, mnist_root, tmp_path, capsys):
    """A model of normal digit 7 was tested as if 0 were normal (AUROC 0.17, exit 0, the record said [0])."""
    args = tiny_cli_args("mnist_anomaly_ae", mnist_root, tmp_path / "runs", "--trainer.callbacks=[]")
    run_cli("fit", [*args, "--data.normal_classes=[7]", "--data.val_size=20"])
    run = only_run(tmp_path, "mnist_anomaly_ae")
    capsys.readouterr()
    run_cli("test", [*args, "--ckpt_path=last"])  # the config file says [0]
    assert "normal_classes [7] (the config says [0])" in capsys.readouterr().err
    record = summary_of(last_evaluation(run, "test"))
    assert record["data"]["normal_classes"] == [7]
    assert record["data"]["size"] == MNIST_TEST
    paragraph = refused(run_cli, "test", [*args, "--ckpt_path=last", "--data.normal_classes=[0]"], capsys)
    assert "--data.normal_classes [0]" in paragraph and "[7]" in paragraph
    assert len(list((run / "evaluations").iterdir())) == 1  # the refused one wrote nothing


# -- checkpoints: whole, verified, finite -------------------------------------------------------------


def test_the_training_record_keeps_the_checksums_of_best_and_last(trained):
    run, _ = trained
    summary = summary_of(run)
    import hashlib

    for name in ("best", "last"):
        entry = summary["checkpoints"][name]
        assert hashlib.sha256(Path(entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not list(run.rglob("*.tmp"))


def test_a_checkpoint_whose_bytes_changed_is_refused(run_cli, trained, capsys):
    run, args = trained
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    weights = state["state_dict"]
    name = next(k for k, v in weights.items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    weights[name] = weights[name] + 1
    torch.save(state, last)
    paragraph = refused(run_cli, "test", [*args, "--ckpt_path=last"], capsys)
    assert "bytes changed since its run wrote it" in paragraph
    assert not (run / "evaluations").exists()


def test_a_checkpoint_with_nonfinite_weights_is_refused(run_cli, trained, tmp_path, capsys):
    run, args = trained
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    name = next(k for k, v in state["state_dict"].items() if isinstance(v, torch.Tensor) and v.is_floating_point())
    state["state_dict"][name][0] = float("nan")
    copy = tmp_path / "elsewhere" / "nan.ckpt"  # outside the run: no checksum to fail first
    copy.parent.mkdir()
    torch.save(state, copy)
    paragraph = refused(run_cli, "test", [*args, f"--ckpt_path={copy}"], capsys)
    assert "non-finite weights" in paragraph and name in paragraph
    assert not (run / "evaluations").exists()


@contextlib.contextmanager
def mounted(path: Path, *options: str):
    """A real filesystem of our own (tmpfs or a read-only bind mount): needs root, as in CI here."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *options, str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a filesystem here ({done.stderr.strip()}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_a_full_disk_during_fit_is_one_paragraph_and_its_advice_resumes(run_cli, mnist_root, tmp_path, capsys):
    """Once: 605 lines of tracebacks, last.ckpt truncated in place, the record left running with a stray
    temporary file beside it, and resume advice pointing at the broken checkpoint."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=8m", "tmpfs") as disk:
        runs = disk / "runs"
        args = tiny_cli_args("mnist_classifier", mnist_root, runs, "--trainer.callbacks=[]", "--trainer.max_epochs=3")
        fill = {"class_path": "spies.FillDisk", "init_args": {"path": str(disk / "filler")}}
        paragraph = refused(run_cli, "fit", [*args, f"--trainer.callbacks+={json.dumps(fill)}"], capsys)
        assert "disk is full" in paragraph
        run = only_run(disk)
        summary = summary_of(run)
        assert summary["status"] == "failed" and "No space left on device" in summary["error"]
        assert not list(run.rglob("*.tmp")), "a temporary file was left behind"
        last = summary["checkpoints"]["last"]
        assert f"--ckpt_path {last['path']}" in paragraph
        import hashlib

        assert hashlib.sha256(Path(last["path"]).read_bytes()).hexdigest() == last["sha256"]
        assert torch.load(last["path"], weights_only=False)["epoch"] == 0  # the first epoch's, whole
        (disk / "filler").unlink()  # space freed: the advice now finishes the run
        run_cli("fit", [*args, f"--ckpt_path={last['path']}"])
        assert summary_of(run)["status"] == "finished" and summary_of(run)["epochs"] == 3


@pytest.mark.slow
def test_an_evaluation_of_a_read_only_run_is_one_paragraph(run_cli, trained, tmp_path, capsys):
    run, args = trained
    with mounted(run, "--bind", "-o", "ro", str(run)):
        if os.access(run, os.W_OK) and subprocess.run(["touch", str(run / "x")]).returncode == 0:
            pytest.skip("the bind mount is not read-only here")
        paragraph = refused(run_cli, "test", [*args, "--ckpt_path=last"], capsys)
    assert "Cannot make a directory for this command's record" in paragraph
    assert "Read-only file system" in paragraph


# -- evaluation records ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_evaluation_is_marked_interrupted_by_the_next(run_cli, trained):
    """kill -9 during test once left an evaluation directory with no record and nothing marking it."""
    run, args = trained
    proc = slowed_train_py("test", [*args, "--ckpt_path=last"], "SlowEvaluation", 2.0)
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        found = list((run / "evaluations").glob("*/summary.json"))
        if found and summary_of(found[0].parent).get("status") == "running":
            killed = found[0].parent
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed is not None, "the evaluation never wrote its running record"
    assert summary_of(killed)["status"] == "running"
    run_cli("test", [*args, "--ckpt_path=last"])
    assert summary_of(killed)["status"] == "interrupted"
    listed = {e["dir"]: e["status"] for e in summary_of(run)["evaluations"]}
    assert listed[str(killed)] == "interrupted"
    assert sorted(listed.values()) == ["finished", "interrupted"]


def test_a_limited_evaluation_records_what_it_evaluated(run_cli, trained):
    """With --trainer.limit_test_batches 2 the record said size 10000 and fingerprinted every image."""
    from cnnlab.records import tensors_sha256
    from datamodules import MNISTDataModule

    run, args = trained
    run_cli("test", [*args, "--ckpt_path=last", "--trainer.limit_test_batches=2", "--data.eval_batch_size=50"])
    data = summary_of(last_evaluation(run, "test"))["data"]
    assert (data["size"], data["split_size"], data["limit_batches"]) == (100, MNIST_TEST, 2)
    module = MNISTDataModule(data_dir=data["data_dir"], download=False, val_size=100)
    module.setup("test")
    images, labels = module.samples("test")
    assert data["fingerprint"] == tensors_sha256(images[:100], labels[:100])
    run_cli("predict", [*args, "--ckpt_path=last", "--trainer.limit_predict_batches=1", "--data.eval_batch_size=50"])
    predicted = summary_of(last_evaluation(run, "predict"))["data"]
    assert (predicted["size"], predicted["split_size"]) == (50, MNIST_TEST)


def test_predict_without_a_checkpoint_says_its_weights_are_random(run_cli, tiny_args, capsys):
    run_cli("predict", [*tiny_args, "--trainer.limit_predict_batches=1"])
    err = capsys.readouterr().err
    assert "freshly initialised (random) weights" in err and "--ckpt_path best" in err


def test_records_are_locked_without_fcntl(tmp_path):
    """`import train` failed on Windows, where there is no fcntl; the record lock must not need it."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import train, cnnlab.summary_files as r\n"
        "assert r.fcntl is None\n"
        "print('imported')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr[-2000:]


def test_concurrent_record_updates_lose_nothing(tmp_path):
    """Many processes appending to one run's list of evaluations at once: every entry is kept. (Forked:
    they only write files, so they need no fresh interpreter.)"""
    import cnnlab.records  # noqa: F401  (imported once, before the fork)

    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=append_entries, args=(tmp_path, k, 20)) for k in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    entries = summary_of(tmp_path)["evaluations"]
    assert sorted((e["writer"], e["n"]) for e in entries) == [(k, n) for k in range(4) for n in range(20)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no lock file, no temporary file


def append_entries(directory: Path, writer: int, n: int) -> None:
    from cnnlab.records import update_summary

    for i in range(n):
        update_summary(directory, lambda s, i=i: s.setdefault("evaluations", []).append({"writer": writer, "n": i}))


# -- found by a fault pass over the above (issue 19) ----------------------------------------------------


def test_last_ckpt_is_the_last_epoch_even_when_it_did_not_improve(run_cli, tiny_args, tmp_path):
    """Lightning 2.6 wrote last.ckpt only with a new best: after 3 epochs it held the best epoch."""
    args = [*tiny_args, "--trainer.max_epochs=3", "--trainer.callbacks=[]"]
    run_cli("fit", [*args, "--checkpoint.monitor=epoch", "--checkpoint.mode=min"])  # epoch 0 stays the best
    run = only_run(tmp_path)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    best = torch.load(summary_of(run)["best_checkpoint"], weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, summary_of(run)["global_step"])
    assert best["epoch"] == 0
    assert summary_of(run)["checkpoints"]["last"]["sha256"] != summary_of(run)["checkpoints"]["best"]["sha256"]


def test_an_unreadable_record_is_refused_and_not_written_over(run_cli, trained, capsys):
    """A cut-short summary.json was read as {} and written over with the evaluation list alone."""
    run, args = trained
    record = run / "summary.json"
    record.write_bytes(record.read_bytes()[:300])
    paragraph = refused(run_cli, "test", [*args, f"--ckpt_path={run}/checkpoints/best.ckpt"], capsys)
    assert "is not valid JSON" in paragraph
    assert len(record.read_bytes()) == 300 and not (run / "evaluations").exists()


def test_a_failed_write_leaves_the_record_whole(tmp_path):
    """On a full disk a record was rewritten in place and left cut short (8192 bytes of JSON)."""
    from cnnlab.records import read_summary, update_summary

    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as disk:
        update_summary(disk, lambda s: s.update({"status": "finished", "padding": "x" * 20000}))
        before = (disk / "summary.json").read_bytes()
        import shutil

        (disk / "filler").write_bytes(b"\0" * shutil.disk_usage(disk).free)
        with pytest.raises(OSError):
            update_summary(disk, lambda s: s.update({"evaluations": [{"padding": "y" * 20000}]}))
        assert (disk / "summary.json").read_bytes() == before and read_summary(disk)["status"] == "finished"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "summary.json"]


def test_a_moved_runs_checkpoints_are_still_verified(run_cli, trained, tmp_path, capsys):
    """Moving a run directory made its record's paths stale, and a swapped checkpoint went unchecked."""
    run, args = trained
    moved = run.with_name(run.name + "-moved")
    run.rename(moved)
    state = torch.load(moved / "checkpoints" / "best.ckpt", weights_only=False)
    state["epoch"] = 99
    torch.save(state, moved / "checkpoints" / "best.ckpt")
    paragraph = refused(run_cli, "test", [*args, f"--ckpt_path={moved}/checkpoints/best.ckpt"], capsys)
    assert "bytes changed since its run wrote it" in paragraph


@pytest.fixture
def interrupted(run_cli, tiny_args, tmp_path):
    """A run stopped by Ctrl-C at the start of its second epoch (its record: interrupted, with the
    checksums of the checkpoints it had)."""
    args = [*tiny_args, "--trainer.max_epochs=3", "--trainer.callbacks=[]"]
    stop = {"class_path": "spies.InterruptAt", "init_args": {"epoch": 1}}
    with pytest.raises(SystemExit):
        run_cli("fit", [*args, f"--trainer.callbacks+={json.dumps(stop)}"])
    run = only_run(tmp_path)
    assert summary_of(run)["status"] == "interrupted" and summary_of(run)["checkpoints"]
    return run, args


def test_an_unfinished_runs_changed_checkpoint_is_evaluated_and_resumed(run_cli, interrupted):
    """A resume killed after writing last.ckpt left a run that neither test nor resume would take
    ("bytes changed"): only a finished run's checkpoints are checked against the record."""
    run, args = interrupted
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    state["global_step"] += 1  # what a resume's next save does to last.ckpt
    torch.save(state, last)
    run_cli("test", [*args, f"--ckpt_path={last}"])  # by path: `last` of an evaluation takes finished runs only
    run_cli("fit", [*args, "--ckpt_path=last"])
    summary = summary_of(run)
    assert summary["status"] == "finished" and summary["epochs"] == 3


@pytest.mark.slow
def test_a_resume_of_a_run_that_is_still_training_is_refused(run_cli, interrupted, capsys):
    """A resume started while the run trained (or a second resume at once) wrote into the live run:
    misaligned metrics, a finished record with an error, a traceback. A fit holds its run (an flock
    that ends with the process, kill -9 included)."""
    run, args = interrupted
    proc = slowed_train_py("fit", [*args, "--ckpt_path=last"], "SlowTraining", 1.0)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(summary_of(run).get("resumes", [])) < 1:
        time.sleep(0.1)
    try:
        assert summary_of(run)["status"] == "running", "the resume never started"
        before = (run / "summary.json").read_bytes()
        paragraph = refused(run_cli, "fit", [*args, "--ckpt_path=last"], capsys)
        assert "is being trained by another process" in paragraph
        assert (run / "summary.json").read_bytes() == before
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_cli("fit", [*args, "--ckpt_path=last"])  # the killed process let go of the run
    assert summary_of(run)["status"] == "finished"


@pytest.mark.slow
def test_a_fit_stopped_by_sigterm_exits_143(trained):
    """Lightning ends a SIGTERM'd run with SystemExit(None): exit 0, so a scheduler saw success."""
    run, args = trained
    proc = slowed_train_py("fit", [*args, "--seed_everything=8"], "SlowTraining", 1.0)
    deadline, new = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None and new is None:
        found = [p for p in run.parent.iterdir() if "seed8" in p.name and (p / "summary.json").is_file()]
        new = found[0] if found else None
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    assert summary_of(new)["status"] == "interrupted"


@pytest.mark.slow
def test_a_resume_of_a_read_only_run_is_one_paragraph(run_cli, interrupted, capsys):
    run, args = interrupted
    with mounted(run, "--bind", "-o", "ro", str(run)):
        paragraph = refused(run_cli, "fit", [*args, "--ckpt_path=last"], capsys)
    assert "Cannot write the run" in paragraph

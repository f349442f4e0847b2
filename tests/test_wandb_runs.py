"""W&B as its users see it, read back from wandb's offline files (tests/wandb_records.py), no server:
one W&B run per training run that holds its evaluations beside its own metrics, a sweep's seeds as one
run each in one group, W&B's own settings (WANDB_MODE, WANDB_PROJECT, WANDB_DIR, ...) deciding, and
`wandb sync` commands that name every offline folder."""

import contextlib
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, summary_of, tiny_seed_overrides
from wandb_records import offline_runs

from cnnlab.environment import WANDB_GROUP_ENV, WANDB_JOB_TYPE_ENV, WANDB_TAGS_ENV
from cnnlab.run_dir import forget_handed_down
from cnnlab.seeds.command import main as seeds_main
from cnnlab.wandb_logger import WandbLogger, decide_mode

CLASSIFIER = str(ROOT / "configs" / "mnist_classifier.yaml")
WANDB_VARIABLES = (
    "WANDB_API_KEY",
    "WANDB_MODE",
    "WANDB_DISABLED",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_DIR",
    "WANDB_TAGS",
    "WANDB_RUN_GROUP",
    "WANDB_JOB_TYPE",
    "WANDB_RUN_ID",
)


def tiny(mnist_root: Path, runs: Path) -> list[str]:
    """A seed in a second or two, logged to W&B (the default logger): 2 training steps, 50 test digits."""
    return [
        *tiny_seed_overrides(mnist_root),
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={runs}",
    ]


@contextlib.contextmanager
def wandb_environment(root: Path, **variables: str):
    """W&B with no credentials (so offline by itself) and the given WANDB_* variables only; its
    process-wide settings started afresh (wandb reads the environment once, at its first run)."""
    import wandb

    with pytest.MonkeyPatch.context() as patch:
        # and no sweep's labels: an in-process seed of another test may have left them in os.environ
        for name in (*WANDB_VARIABLES, WANDB_GROUP_ENV, WANDB_JOB_TYPE_ENV, WANDB_TAGS_ENV):
            patch.delenv(name, raising=False)
        patch.setenv("NETRC", str(root / "no-netrc"))
        patch.setenv("WANDB_SILENT", "true")
        # artifacts (log_model, tables) are staged here, not in the home directory
        patch.setenv("WANDB_DATA_DIR", str(root.parent / f"{root.name}-staging"))
        patch.setenv("WANDB_CACHE_DIR", str(root.parent / f"{root.name}-cache"))
        patch.setattr(sys, "argv", ["train.py"])
        for name, value in variables.items():
            patch.setenv(name, value)
        wandb.teardown()
        try:
            yield
        finally:
            wandb.teardown()


def run_train(subcommand: str, args: list[str]):
    """One `train.py <subcommand> --config configs/mnist_classifier.yaml ...` in this process; its CLI,
    to ask the logger."""
    from cnnlab.cli import CnnlabCLI

    forget_handed_down()
    return CnnlabCLI(args=[subcommand, "--config", CLASSIFIER, *args])


# -- one training run, its test, its validate, and a test on other data -------------------------------


@pytest.fixture(scope="module")
def one_run(tmp_path_factory, mnist_root):
    """fit (log_model on), test and validate of its best checkpoint, and a test of it on other data
    (fewer test images), offline, with WANDB_DIR, WANDB_PROJECT, WANDB_ENTITY and WANDB_TAGS set."""
    root = tmp_path_factory.mktemp("one_run")
    wandb_dir = root / "wandb-dir"
    wandb_dir.mkdir()
    args = tiny(mnist_root, root / "runs")
    variables = {
        "WANDB_DIR": str(wandb_dir),
        "WANDB_PROJECT": "from-env",
        "WANDB_ENTITY": "team-env",
        "WANDB_TAGS": "env-a,env-b",
    }
    said = io.StringIO()
    with wandb_environment(root, **variables), contextlib.redirect_stderr(said):
        clis = {
            "fit": run_train("fit", [*args, "--trainer.logger.init_args.log_model=true"]),
            "test": run_train("test", [*args, "--ckpt_path=best"]),
            "validate": run_train("validate", [*args, "--ckpt_path=best"]),
            "other": run_train("test", [*args, "--ckpt_path=best", "--data.max_eval_samples=20"]),
        }
    (run,) = (root / "runs" / "mnist_classifier").iterdir()
    folders = {name: Path(cli.trainer.logger.experiment.settings.sync_dir) for name, cli in clis.items()}
    return {
        "args": args,
        "variables": variables,
        "run": run,
        "summary": summary_of(run),
        "wandb_dir": wandb_dir,
        "offline": {name: next(r for r in offline_runs(wandb_dir) if r.directory == folders[name]) for name in clis},
        "sync": {name: cli.trainer.logger.sync_command() for name, cli in clis.items()},
        "said": said.getvalue(),
    }


def test_a_test_of_the_best_checkpoint_logs_into_the_training_run(one_run):
    offline, training_id = one_run["offline"], one_run["summary"]["wandb"]["id"]
    assert {offline[name].id for name in ("fit", "test", "validate")} == {training_id}  # one W&B run
    assert "val/acc" in offline["fit"].summary and any("val/acc" in row for row in offline["fit"].history)
    test = offline["test"]
    assert test.run.resume  # recorded, so `wandb sync` appends it to the run instead of starting it over
    assert test.summary["test/acc"] == pytest.approx(one_run["summary"]["evaluations"][0]["metrics"]["test/acc"])
    assert any("test/acc" in row for row in test.history)
    names = {r.id for r in offline_runs(one_run["wandb_dir"])}
    assert names == {training_id, offline["other"].id}  # nothing else: no W&B run per evaluation


def test_an_evaluations_keys_never_overwrite_the_trainings(one_run):
    fit, test, validate = (one_run["offline"][name] for name in ("fit", "test", "validate"))
    assert test.metrics() and all(key.startswith("test/") for key in test.metrics())
    assert "validate/val/acc" in validate.summary and "val/acc" not in validate.metrics()
    assert all(key.startswith("validate/") for key in validate.metrics())  # epoch, trainer/global_step too
    for evaluation in (test, validate):
        assert not {k for k in evaluation.config if not k.startswith("_")}  # the config stays the training's
        labels = ("display_name", "run_group", "job_type", "project", "entity")
        assert [getattr(evaluation.run, k) for k in labels] == [getattr(fit.run, k) for k in labels]
        assert list(evaluation.run.tags) == list(fit.run.tags)
    assert (test.directory / "files" / "evaluations").is_dir()  # its resolved config, beside the training's


def test_an_evaluation_on_other_data_is_a_run_of_its_own(one_run):
    other, training_id = one_run["offline"]["other"], one_run["summary"]["wandb"]["id"]
    assert other.id != training_id and other.run.job_type == "test"
    assert other.config["training_run"] == training_id
    assert "test/acc" in other.summary
    assert "data.max_eval_samples" in one_run["said"] and "gets a W&B run of its own" in one_run["said"]


def test_wandbs_own_settings_reach_the_run(one_run):
    fit = one_run["offline"]["fit"]
    assert (fit.run.project, fit.run.entity) == ("from-env", "team-env")
    assert list(fit.run.tags) == ["env-a", "env-b"]
    assert fit.directory.parent == one_run["wandb_dir"] / "wandb"  # WANDB_DIR, not the run's directory
    assert not list(one_run["run"].rglob("offline-run-*"))
    assert fit.config["seed"] == one_run["summary"]["seed"]


def test_the_sync_command_names_every_folder_of_the_run_in_order(one_run):
    offline = one_run["offline"]
    words = shlex.split(one_run["sync"]["validate"])
    assert words[:2] == ["wandb", "sync"]
    assert [Path(w).resolve() for w in words[2:]] == [offline[n].directory for n in ("fit", "test", "validate")]
    assert shlex.split(one_run["sync"]["other"])[2:] == [str(offline["other"].directory)]


def test_log_model_makes_model_artifacts_of_the_checkpoints(one_run):
    artifacts = one_run["offline"]["fit"].artifacts
    assert [a.type for a in artifacts] == ["model", "model"]  # best.ckpt and last.ckpt, at the end of fit
    assert {a.name for a in artifacts} == {f"model-{one_run['summary']['wandb']['id']}"}
    assert any("best" in a.aliases for a in artifacts)


def test_a_test_of_another_checkpoint_logs_under_its_name_and_never_over_the_runs_test(one_run, tmp_path):
    """The run's `test/*` is its best checkpoint's test; a test of last.ckpt goes under `last/test/*`."""
    with wandb_environment(tmp_path, **{**one_run["variables"], "WANDB_DIR": str(tmp_path)}):
        run_train("test", [*one_run["args"], "--ckpt_path=last"])
    (test,) = offline_runs(tmp_path)
    assert test.id == one_run["summary"]["wandb"]["id"]
    assert "last/test/acc" in test.summary and not any(k.startswith("test/") for k in test.metrics())


def test_a_test_of_an_unfinished_run_is_a_wandb_run_of_its_own(one_run, tmp_path, capsys):
    """A run still training (or failed) keeps its W&B run to itself: a test there would log into a live
    fit, or mark a failed run finished."""
    from cnnlab.records import update_summary

    run = one_run["run"]
    update_summary(run, lambda summary: summary.update(status="interrupted"))
    try:
        with wandb_environment(tmp_path, **{**one_run["variables"], "WANDB_DIR": str(tmp_path)}):
            run_train("test", [*one_run["args"], f"--ckpt_path={run / 'checkpoints' / 'best.ckpt'}"])
    finally:
        update_summary(run, lambda summary: summary.update(status="finished"))
    (test,) = offline_runs(tmp_path)
    assert test.id != one_run["summary"]["wandb"]["id"] and test.run.job_type == "test"
    assert "the run is interrupted, not finished" in " ".join(capsys.readouterr().err.split())


# -- WANDB_MODE=disabled --------------------------------------------------------------------------------


def test_wandb_disabled_writes_no_wandb_files_and_the_records_as_always(mnist_root, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # wandb's default folder would be ./wandb
    args = tiny(mnist_root, work / "runs")
    with wandb_environment(tmp_path / "env", WANDB_MODE="disabled"):
        fit = run_train("fit", args)
        test = run_train("test", [*args, "--ckpt_path=best"])
    assert not [p for p in work.rglob("*") if "wandb" in p.name or p.name.startswith("offline-run")]
    summary = summary_of(fit.output_dir)
    assert summary["status"] == "finished" and "val/acc" in summary["metrics"]
    assert "test/acc" in summary["evaluations"][0]["metrics"]
    assert summary["wandb"]["started"] is False  # no W&B run, though the logger is W&B's
    assert (fit.trainer.logger.mode, test.trainer.logger.sync_command()) == ("disabled", None)


@pytest.mark.parametrize(
    ("variables", "mode"),
    [
        ({"WANDB_MODE": "disabled"}, "disabled"),
        ({"WANDB_DISABLED": "true"}, "disabled"),
        ({"WANDB_MODE": "dryrun"}, "offline"),
        ({"WANDB_MODE": "online"}, "online"),
        ({}, "offline"),  # no credentials
    ],
)
def test_the_mode_is_wandbs(variables, mode, tmp_path):
    with wandb_environment(tmp_path, **variables):
        assert decide_mode(None) == mode


def test_the_project_is_wandbs_unless_the_config_names_one(tmp_path):
    with wandb_environment(tmp_path):
        assert WandbLogger(save_dir=str(tmp_path)).name == "cnnlab"
    with wandb_environment(tmp_path, WANDB_PROJECT="from-env"):
        assert WandbLogger(save_dir=str(tmp_path)).name == "from-env"
        assert WandbLogger(save_dir=str(tmp_path), project="mine").name == "mine"  # as for wandb.init


# -- a sweep -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep3(tmp_path_factory, mnist_root):
    """`cnnlab-seeds run` over 3 seeds, W&B offline (no credentials), WANDB_TAGS set."""
    root = tmp_path_factory.mktemp("sweep")
    args = ["run", "--config", CLASSIFIER, "--seeds=0-2", "--jobs=1", "--threads=1", "--figures=none"]
    args += ["--name=wb", f"--root={root}", *tiny(mnist_root, root)[:-1]]
    said = io.StringIO()
    with wandb_environment(root, WANDB_TAGS="from-env"), contextlib.redirect_stderr(said):
        code = seeds_main(args)
    return {"root": root, "code": code, "said": said.getvalue(), "offline": offline_runs(root)}


def test_a_sweep_is_one_wandb_run_per_seed_in_one_group(sweep3):
    assert sweep3["code"] == 0, sweep3["said"]
    by_id: dict[str, list] = {}
    for folder in sweep3["offline"]:
        by_id.setdefault(folder.id, []).append(folder)
    assert len(by_id) == 3
    seeds = set()
    for fit, test in by_id.values():  # oldest first: the fit, then its test
        assert (fit.run.run_group, fit.run.job_type, test.run.job_type) == ("wb", "seed", "seed")
        assert list(fit.run.tags) == ["cnnlab-seeds", "mnist_classifier", "from-env"]
        seeds.add(fit.config["seed"])
        assert "val/acc" in fit.summary and "val/loss" in fit.summary
        assert "test/acc" in test.summary and "test/loss" in test.summary
    assert seeds == {0, 1, 2}


def test_a_sweep_prints_one_sync_command_for_all_its_folders(sweep3):
    lines = sweep3["said"].splitlines()
    command = lines[lines.index(next(line for line in lines if "upload the sweep" in line)) + 1].strip()
    assert command.startswith("wandb sync ")
    files = {str(p) for p in sweep3["root"].rglob("offline-run-*/*.wandb")}
    assert len(files) == 6
    # wandb's own reading of it (the shell expands the globs): exactly those files
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    done = subprocess.run(
        ["bash", "-c", f"{command} --dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": path, "WANDB_SILENT": "false"},
        cwd=sweep3["root"],
        timeout=120,
    )
    listed = {line.split("wandb:", 1)[1].strip() for line in done.stderr.splitlines() if ".wandb" in line}
    assert f"Would sync {len(files)} run(s)" in done.stderr, done.stderr
    assert {str((sweep3["root"] / p).resolve()) for p in listed} == files


def test_a_sweeps_sync_line_leaves_out_abandoned_attempts(tmp_path, monkeypatch):
    """A seed interrupted and run again leaves the first attempt's offline folder (another W&B id): the
    sweep's line names the registry's runs only, and keeps its two short globs where those are all."""
    from cnnlab.seeds.sweep import Sweep

    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    sweep = Sweep(name="s", configs=[CLASSIFIER], seeds=[0, 1], root=tmp_path)
    folders = {
        "aaa": sweep.dir / "seed0/wandb/offline-run-20261202_120000-aaa",
        "aaa-test": sweep.dir / "seed0/evaluations/t/wandb/offline-run-20261202_120100-aaa",
        "bbb": sweep.dir / "seed1-abandoned/wandb/offline-run-20261202_120000-bbb",
        "ccc": sweep.dir / "seed1/wandb/offline-run-20261202_120200-ccc",
    }
    for folder in folders.values():
        folder.mkdir(parents=True)
    listed = shlex.split(sweep.wandb_sync_command(["aaa", "ccc"]))[2:]
    assert [Path(p).resolve() for p in listed] == [folders[k].resolve() for k in ("aaa", "aaa-test", "ccc")]
    assert (
        sweep.wandb_sync_command(["aaa", "bbb", "ccc"])
        == "wandb sync s/*/wandb/offline-run-* s/*/evaluations/*/wandb/offline-run-*"
    )

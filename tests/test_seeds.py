"""cnnlab-seeds: the launcher (warm workers, resume, faults, Ctrl-C), the registry, the statistics
(checked against numpy/scipy on fixed numbers), the report and the comparison."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, summary_of, tiny_seed_overrides
from scipy import stats as sps
from seed_faults import THREADS_PROBE_ENV

from cnnlab.environment import FIGURES_ENV, WANDB_GROUP_ENV, WANDB_JOB_TYPE_ENV, WANDB_TAGS_ENV
from cnnlab.errors import CnnlabError
from cnnlab.seeds import stats
from cnnlab.seeds.command import main
from cnnlab.seeds.launcher import sweep_lock
from cnnlab.seeds.pool import detect_gpus, device_of
from cnnlab.seeds.progress import Progress
from cnnlab.seeds.registry import Registry, SeedRecord, evaluation_of_best, outcome_of
from cnnlab.seeds.sweep import Sweep, parse_seeds

CLASSIFIER = str(ROOT / "configs" / "mnist_classifier.yaml")
CSV = str(ROOT / "configs" / "logger" / "csv.yaml")
CONFIGS = ["--config", CLASSIFIER, "--config", CSV]


def tiny(mnist_root: Path) -> list[str]:
    return tiny_seed_overrides(mnist_root)


def records(sweep_dir: Path) -> dict[int, SeedRecord]:
    if not (sweep_dir / "registry.sqlite").is_file():
        return {}
    with Registry(sweep_dir, create=False) as registry:
        return {r.seed: r for r in registry.records()}


def wait_for(condition, what: str, deadline_s: float = 600.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition`; fail at once, with its stderr, if the launcher `proc` exits first."""
    end = time.time() + deadline_s
    while time.time() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the launcher exited ({proc.returncode}) before {what}:\n{proc.stderr.read()}")
        time.sleep(0.3)
    raise AssertionError(f"gave up waiting for {what} after {deadline_s:.0f} s")


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may never reap an orphan)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def launcher_process(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab.seeds", *args],
        cwd=ROOT,
        env=env,
        # As in a terminal's foreground: SIGINT is Ctrl-C even where pytest itself runs in a
        # background job (`cmd &` in a script), which starts with SIGINT ignored and passes that on.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- arguments -----------------------------------------------------------------------------------


def test_seed_ranges_and_lists_parse_to_sorted_seeds():
    assert parse_seeds("0-3,7, 10-11,2") == [0, 1, 2, 3, 7, 10, 11]
    assert parse_seeds("5") == [5]
    for bad in ("3-1", "a", "-1", "1-", "2**40"):
        with pytest.raises(CnnlabError, match="--seeds"):
            parse_seeds(bad)


@pytest.mark.parametrize(
    "token", ["--seed_everything=3", "--experiment=x", "--trainer.default_root_dir=/tmp", "--ckpt_path=best"]
)
def test_overrides_that_would_change_seed_or_folder_are_refused(token, tmp_path):
    with pytest.raises(CnnlabError, match=token.split("=")[0]):
        Sweep(name="s", configs=[CLASSIFIER], seeds=[0], overrides=[token], root=tmp_path)


def test_the_model_seed_is_explicit_and_last_and_wandb_gets_group_job_type_tags(tmp_path):
    sweep = Sweep(name="cnn", configs=[CLASSIFIER], seeds=[5, 6], overrides=["--data.augment=false"], root=tmp_path)
    args = sweep.args(7)
    assert args[-1] == "--seed_everything=7"
    assert "--experiment=cnn" in args and f"--trainer.default_root_dir={tmp_path.resolve()}" in args
    env = sweep.env(5)
    assert (env[WANDB_GROUP_ENV], env[WANDB_JOB_TYPE_ENV]) == ("cnn", "seed")
    assert json.loads(env[WANDB_TAGS_ENV]) == ["cnnlab-seeds", "mnist_classifier"]
    # figures for the first seed only, by default; all or none on request
    assert (sweep.env(5)[FIGURES_ENV], sweep.env(6)[FIGURES_ENV]) == ("1", "0")
    every = Sweep(name="cnn", configs=[CLASSIFIER], seeds=[5, 6], root=tmp_path, figures="all")
    assert every.env(6)[FIGURES_ENV] == "1"


def test_sweep_identity_compares_resolved_settings_not_their_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    one = Sweep("s", ["configs/mnist_classifier.yaml"], [0], ["--data.augment=false", "--model.width", "16"], tmp_path)
    two = Sweep(
        "s", ["./configs/mnist_classifier.yaml"], [0], ["--data.augment", "false", "--model.width=16"], tmp_path
    )
    assert one.identity() == two.identity()
    three = Sweep("s", [CLASSIFIER], [0], ["--data.augment=true", "--model.width=16"], tmp_path)
    assert three.identity() != one.identity()


def test_gpus_are_shared_round_robin(monkeypatch):
    assert [device_of(slot, ["0", "1"]) for slot in range(5)] == ["0", "1", "0", "1", "0"]
    assert device_of(3, []) is None
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus() == []


def test_progress_line_counts_seeds_and_estimates_the_rest():
    line = Progress("cnn", 10).line(done=3, failed=1, running=2, eta=100, per_seed=12.5)
    assert line == "[cnn] 3/10 done, 1 failed, 2 running, 4 queued | 12.5 s/seed | ETA 1m40s"


# -- registry ----------------------------------------------------------------------------------


def test_registry_keeps_records_across_connections(tmp_path):
    first, second = Registry(tmp_path), Registry(tmp_path)
    first.add_pending([0, 1, 2])
    first.mark_running(1, worker=123, device="cpu")
    record = SeedRecord(1, status="finished", attempts=1, metrics={"test/acc": 0.5}, run_dir="r", wandb_id="w")
    record.best_checkpoint, record.seconds = "r/checkpoints/best.ckpt", 2.5
    second.put(record)
    second.mark([2], "failed", "boom")
    seen = {r.seed: r for r in first.records()}
    assert seen[0].status == "pending"
    assert seen[1] == record
    assert (seen[2].status, seen[2].error) == ("failed", "boom")
    assert first.counts() == {"pending": 1, "running": 0, "finished": 1, "failed": 1, "interrupted": 0}
    first.close()
    second.close()


# -- statistics against numpy/scipy ----------------------------------------------------------------

VALUES = np.array([0.981, 0.975, 0.988, 0.979, 0.984, 0.990, 0.972, 0.986, 0.983, 0.977])
OTHER = np.array([0.970, 0.968, 0.975, 0.961, 0.972, 0.966, 0.974, 0.969])


def test_summary_statistics_match_numpy():
    seeds = list(range(100, 110))
    d = stats.describe(VALUES, seeds)
    assert d.n == 10
    assert d.mean == pytest.approx(np.mean(VALUES), abs=1e-12)
    assert d.std == pytest.approx(np.std(VALUES, ddof=1), abs=1e-12)
    assert d.median == pytest.approx(np.median(VALUES), abs=1e-12)
    assert (d.min, d.min_seed, d.max, d.max_seed) == (0.972, 106, 0.990, 105)


def test_interval_of_the_mean_is_scipys_bca_bootstrap():
    low, high, how = stats.mean_ci(VALUES, resamples=20000)
    ref = sps.bootstrap((VALUES,), np.mean, n_resamples=20000, method="BCa", rng=1).confidence_interval
    width = ref.high - ref.low
    assert how == "BCa bootstrap"
    assert low == pytest.approx(ref.low, abs=0.05 * width)
    assert high == pytest.approx(ref.high, abs=0.05 * width)
    assert stats.mean_ci(VALUES, resamples=20000) == (low, high, how)  # fixed generator: reproducible
    # no spread at all: BCa cannot be formed, the t-interval (of width 0) stands in
    assert stats.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, "t")


def test_welch_t_test_matches_the_formula():
    d = stats.difference(OTHER, VALUES)
    va, vb = OTHER.var(ddof=1) / len(OTHER), VALUES.var(ddof=1) / len(VALUES)
    t = (VALUES.mean() - OTHER.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(OTHER) - 1) + vb**2 / (len(VALUES) - 1))
    assert d.diff == pytest.approx(VALUES.mean() - OTHER.mean(), abs=1e-12)
    assert d.t == pytest.approx(t, rel=1e-10) and d.df == pytest.approx(df, rel=1e-10)
    assert d.p_t == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-8)
    assert d.ci_low > 0 and d.clear


def test_permutation_test_is_exact_on_small_groups():
    a, b = np.array([1.0, 2.0, 3.5, 2.5]), np.array([3.0, 4.0, 2.9, 5.0])
    observed = b.mean() - a.mean()
    pooled = np.concatenate([a, b])
    splits = [
        pooled[list(idx)].mean() - np.delete(pooled, list(idx)).mean() for idx in itertools.combinations(range(8), 4)
    ]
    exact = np.mean(np.abs(splits) >= abs(observed) - 1e-12)
    assert stats.difference(a, b).p_permutation == pytest.approx(exact, abs=1e-12)


def test_paired_comparison_uses_the_per_seed_differences():
    a, b = VALUES[:8], OTHER
    d = stats.difference(a, b, paired=True)
    ref = sps.ttest_rel(b, a)
    assert d.t == pytest.approx(ref.statistic) and d.p_t == pytest.approx(ref.pvalue)
    low, high, _ = stats.mean_ci(b - a)
    assert (d.ci_low, d.ci_high) == pytest.approx((low, high), abs=0.15 * (high - low))


def test_a_difference_is_clear_only_when_interval_and_tests_agree():
    # four seeds, as in the case that was found: the bootstrap interval of the per-seed differences
    # excludes zero, but the paired t-test and the permutation test do not reject
    a = np.array([0.9821, 0.9835, 0.9810, 0.9829])
    b = a + np.array([0.0010, 0.0040, -0.0005, 0.0020])
    d = stats.difference(a, b, paired=True)
    assert d.ci_low > 0 and d.p_t > 0.05 and d.p_permutation > 0.05
    assert not d.clear


def test_holm_adjustment():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


# -- report and compare from a registry (no training) ------------------------------------------------


def fake_sweep(root: Path, name: str, acc: np.ndarray, seeds=None) -> Path:
    """A finished sweep with known numbers: test/acc as given, val/acc = test/acc - 0.01 except one
    seed whose validation score is best while its test score is not."""
    folder = root / name
    with Registry(folder) as registry:
        registry.set_meta(name=name, identity={"configs": [{"path": "x.yaml"}], "overrides": {}})
        for i, (seed, value) in enumerate(zip(seeds or range(len(acc)), acc, strict=True)):
            val = 0.999 if i == 1 else value - 0.01
            registry.put(
                SeedRecord(
                    seed,
                    status="finished",
                    attempts=1,
                    metrics={"test/acc": value, "test/loss": 1 - value, "val/acc": val, "val/loss": 1.01 - value},
                    run_dir=f"/runs/{name}/seed{seed}",
                    best_checkpoint=f"/runs/{name}/seed{seed}/checkpoints/best.ckpt",
                    monitor="val/acc",
                    mode="max",
                    best_score=val,
                    data_seed=0,
                )
            )
        registry.put(SeedRecord(99, status="failed", attempts=1, error="RuntimeError: boom\ntraceback"))
    return folder


def test_report_writes_statistics_figure_and_best_seed(tmp_path, capsys):
    acc = np.random.default_rng(0).normal(0.98, 0.004, size=30)
    fake_sweep(tmp_path, "cnn", acc)
    assert main(["report", "cnn", "--root", str(tmp_path), "--wandb", "off"]) == 0
    out = tmp_path / "cnn" / "report"
    rows = {r["metric"]: r for r in _csv(out / "statistics.csv")}
    assert set(rows) == {"val/loss", "val/acc", "test/loss", "test/acc"}
    assert float(rows["test/acc"]["mean"]) == pytest.approx(acc.mean(), abs=1e-12)
    assert float(rows["test/acc"]["std"]) == pytest.approx(acc.std(ddof=1), abs=1e-12)
    assert int(rows["test/acc"]["max_seed"]) == int(acc.argmax())
    assert len(_csv(out / "seeds.csv")) == 31
    assert (out / "distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "summary.md").read_text()
    # chosen by validation (seed 1 has the best val/acc), never by the test score
    assert "**seed 1**" in md and "/runs/cnn/seed1/checkpoints/best.ckpt" in md
    assert "seed 99: failed: RuntimeError: boom" in md
    assert "30 of 31 seeds finished" in capsys.readouterr().out


def test_compare_names_the_better_sweep_when_the_interval_excludes_zero(tmp_path, capsys):
    rng = np.random.default_rng(1)
    fake_sweep(tmp_path, "mlp", rng.normal(0.970, 0.003, size=40))
    fake_sweep(tmp_path, "cnn", rng.normal(0.985, 0.003, size=40))
    assert main(["compare", "mlp", "cnn", "--root", str(tmp_path)]) == 0
    out = tmp_path / "comparisons" / "mlp--cnn"
    (row,) = _csv(out / "comparison.csv")
    assert float(row["diff"]) == pytest.approx(float(row["mean_b"]) - float(row["mean_a"]), abs=1e-12)
    assert float(row["ci_low"]) > 0
    text = capsys.readouterr().out
    assert "The interval excludes zero and both tests reject at 0.05: cnn is better on test/acc" in text
    assert "Warning" not in text  # 40 seeds a side
    assert (out / "overlay.png").is_file()


def test_compare_verdict_agrees_with_its_tests_and_warns_at_small_n(tmp_path, capsys):
    a = np.array([0.9821, 0.9835, 0.9810, 0.9829])
    fake_sweep(tmp_path, "base", a)
    fake_sweep(tmp_path, "new", a + np.array([0.0010, 0.0040, -0.0005, 0.0020]))
    assert main(["compare", "base", "new", "--root", str(tmp_path), "--paired"]) == 0
    text = capsys.readouterr().out
    assert "is better" not in text
    # at 4 seeds the interval is the paired t-interval, which excludes zero exactly when the paired
    # t-test rejects (the BCa interval used to exclude it here while both tests did not reject)
    assert "95% paired t-interval of the difference" in text
    assert "No clear difference: the interval includes zero" in text
    assert "Warning: with only 4 seeds on a side" in text


def test_compare_says_it_cannot_tell_when_the_interval_includes_zero(tmp_path, capsys):
    values = np.random.default_rng(2).normal(0.98, 0.004, size=40)
    fake_sweep(tmp_path, "aug", values)
    fake_sweep(tmp_path, "noaug", values[::-1] + 1e-5)
    assert main(["compare", "noaug", "aug", "--root", str(tmp_path), "--paired"]) == 0
    assert "No clear difference: the interval includes zero" in capsys.readouterr().out


def test_compare_refuses_a_metric_one_sweep_lacks(tmp_path, capsys):
    fake_sweep(tmp_path, "a", np.linspace(0.9, 0.95, 5))
    fake_sweep(tmp_path, "b", np.linspace(0.9, 0.95, 5))
    assert main(["compare", "a", "b", "--root", str(tmp_path), "--metric", "test/f1"]) == 2
    assert "test/f1" in capsys.readouterr().err


def test_report_of_an_unknown_sweep_is_explained(tmp_path, capsys):
    assert main(["report", "nope", "--root", str(tmp_path)]) == 2
    assert "No seed sweep registry" in capsys.readouterr().err


class FakeRun:
    def __init__(self, seed, acc, state="finished", job_type="seed"):
        self.id, self.state, self.job_type = f"id{seed}", state, job_type
        self.config = {"seed": seed, "cnnlab": {"checkpoint": {"monitor": "val/acc", "mode": "max"}}}
        self.summary = {"test/acc": acc, "val/acc": acc - 0.01, "_step": 3}


class FakeApi:
    def __init__(self, runs):
        self._runs = runs
        self.asked = None

    def runs(self, path, filters):
        self.asked = (path, filters)
        return self._runs


def test_report_reads_a_wandb_group_through_the_api():
    from cnnlab.seeds.report import load_from_wandb

    runs = [FakeRun(0, 0.97), FakeRun(1, 0.98), FakeRun(1, 0.5, state="crashed"), FakeRun(2, 0.9, state="crashed")]
    api = FakeApi([*runs, FakeRun(9, 0.1, job_type="report")])
    results = load_from_wandb("me/cnnlab", "mnist-cnn", api=api)
    assert api.asked == ("me/cnnlab", {"group": "mnist-cnn"})
    assert [(r.seed, r.status) for r in results.records] == [(0, "finished"), (1, "finished"), (2, "failed")]
    seeds, values = results.values("test/acc")
    assert seeds == [0, 1] and values.tolist() == [0.97, 0.98]


def test_report_logs_a_summary_table_to_wandb(tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    fake_sweep(tmp_path, "cnn", np.linspace(0.97, 0.99, 12))
    assert main(["report", "cnn", "--root", str(tmp_path), "--wandb", "on"]) == 0
    (run,) = (tmp_path / "cnn" / "report" / "wandb").glob("offline-run-*")
    tables = list((run / "files" / "media" / "table").rglob("*.table.json"))
    assert {p.name.split("_")[0] for p in tables} >= {"seeds"}
    rows = [json.loads(p.read_text()) for p in tables]
    assert any(t["columns"][0] == "metric" and len(t["data"]) == 4 for t in rows)


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path) as handle:
        return list(csv.DictReader(handle))


# -- the launcher, end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep20(tmp_path_factory, mnist_root):
    """20 seeds with --jobs 2: Ctrl-C after a few finished, SIGKILL of the launcher after a few
    more, then the same command to the end. Returns what the tests check."""
    root = tmp_path_factory.mktemp("seeds")
    args = ["run", *CONFIGS, "--seeds=0-19", "--jobs=2", "--threads=1", "--name=tiny", f"--root={root}"]
    args += tiny(mnist_root)
    folder = root / "tiny"

    def finished() -> dict[int, SeedRecord]:
        return {s: r for s, r in records(folder).items() if r.status == "finished"}

    # 1. Ctrl-C: the launcher stops its workers and records the running seeds as interrupted
    proc = launcher_process(args)
    wait_for(lambda: len(finished()) >= 3, "3 finished seeds", proc=proc)
    workers = {r.worker for r in records(folder).values() if r.worker}
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    ctrl_c_code = proc.returncode
    after_ctrl_c = records(folder)
    workers_after_ctrl_c = {pid for pid in workers if alive(pid)}

    # 2. SIGKILL: nothing is recorded at all; the orphaned workers must notice and stop
    proc = launcher_process(args)
    wait_for(
        lambda: len(finished()) >= len([r for r in after_ctrl_c.values() if r.status == "finished"]) + 3,
        "3 more",
        proc=proc,
    )
    proc.kill()
    proc.wait()
    before_kill = finished()
    dirs_before_kill = {seed: sorted(folder.glob(f"*-seed{seed}")) for seed in before_kill}
    killed_workers = {r.worker for r in records(folder).values() if r.status == "running"}
    wait_for(lambda: not any(alive(pid) for pid in killed_workers), "orphaned workers to stop", 60)

    # 3. the same command again, to the end
    code = main(args)
    return {
        "root": root,
        "folder": folder,
        "ctrl_c_code": ctrl_c_code,
        "ctrl_c_stderr": err,
        "after_ctrl_c": after_ctrl_c,
        "workers_after_ctrl_c": workers_after_ctrl_c,
        "before_kill": before_kill,
        "dirs_before_kill": dirs_before_kill,
        "code": code,
        "final": records(folder),
        "args": args,
    }


@pytest.mark.slow
def test_twenty_seeds_finish_each_as_its_own_run(sweep20):
    final = sweep20["final"]
    assert sweep20["code"] == 0
    assert sorted(final) == list(range(20)) and all(r.status == "finished" for r in final.values())
    run_dirs = {r.run_dir for r in final.values()}
    assert len(run_dirs) == 20
    for seed, record in final.items():
        summary = json.loads((Path(record.run_dir) / "summary.json").read_text())
        assert summary["seed"] == seed and summary["data_seed"] == 0  # the model seed varies, the split does not
        assert outcome_of(summary)["metrics"] == record.metrics and "test/acc" in record.metrics
        assert evaluation_of_best(summary)["checkpoint"]["path"] == record.best_checkpoint
    # figures: the first seed's run draws them, the others do not (their metrics are the same kind)
    drawn = {seed for seed, r in final.items() if (Path(r.run_dir) / "figures").is_dir()}
    assert drawn == {0}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if head:
        assert all(r.git_commit.startswith(head) for r in final.values())
    assert len({tuple(sorted(r.metrics.items())) for r in final.values()}) == 20  # every seed trained differently


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_and_marks_running_seeds_interrupted(sweep20):
    after = sweep20["after_ctrl_c"]
    assert sweep20["ctrl_c_code"] == 130
    assert "interrupted:" in sweep20["ctrl_c_stderr"] and "Run the same command again" in sweep20["ctrl_c_stderr"]
    assert not any(r.status == "running" for r in after.values())
    assert sweep20["workers_after_ctrl_c"] == set()
    # the runs the workers had open say so, instead of 'running' for ever
    for record in after.values():
        if record.status == "interrupted" and record.run_dir:
            assert summary_of(Path(record.run_dir))["status"] in ("interrupted", "finished")


@pytest.mark.slow
def test_killing_the_launcher_redoes_no_finished_seed_and_loses_none(sweep20):
    final = sweep20["final"]
    for seed, record in sweep20["before_kill"].items():
        assert final[seed].run_dir == record.run_dir and final[seed].attempts == record.attempts
    folder = sweep20["folder"]
    for seed, dirs in sweep20["dirs_before_kill"].items():
        assert sorted(folder.glob(f"*-seed{seed}")) == dirs, f"seed {seed} was run again"
    assert all(r.status == "finished" for r in final.values())


@pytest.mark.slow
def test_a_seed_in_a_warm_worker_equals_a_standalone_train_py_run(sweep20, mnist_root, tmp_path):
    """The same seed twice, once in a worker that had run other seeds before, once as two fresh
    `train.py` processes (fit, then test of the best checkpoint): identical metrics."""
    final = sweep20["final"].values()
    warm = [r for r in final if any(o.worker == r.worker and o.started < r.started for o in final)]
    record = max(warm, key=lambda r: r.started)
    root = tmp_path / "standalone"
    common = [*CONFIGS, *tiny(mnist_root), f"--seed_everything={record.seed}", f"--trainer.default_root_dir={root}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the sweep ran with --threads 1
    train = [sys.executable, str(ROOT / "train.py")]
    subprocess.run([*train, "fit", *common], cwd=ROOT, env=env, check=True, capture_output=True)
    (summary_path,) = root.glob("mnist_classifier/*/summary.json")
    best = json.loads(summary_path.read_text())["best_checkpoint"]
    subprocess.run([*train, "test", *common, f"--ckpt_path={best}"], cwd=ROOT, env=env, check=True, capture_output=True)
    assert outcome_of(json.loads(summary_path.read_text()))["metrics"] == record.metrics


@pytest.mark.slow
def test_report_of_a_real_sweep(sweep20, capsys):
    assert main(["report", "tiny", "--root", str(sweep20["root"]), "--wandb", "off"]) == 0
    rows = {r["metric"]: r for r in _csv(sweep20["folder"] / "report" / "statistics.csv")}
    values = np.array([r.metrics["test/loss"] for r in sweep20["final"].values()])
    assert int(rows["test/loss"]["n"]) == 20
    assert float(rows["test/loss"]["mean"]) == pytest.approx(values.mean(), abs=1e-9)


@pytest.mark.slow
def test_failing_crashing_and_hanging_seeds_are_recorded_and_the_rest_finish(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_TEST_FAULTS", "0:raise,1:crash,2:hang")
    args = ["run", *CONFIGS, "--seeds=0-4", "--jobs=2", "--threads=1", "--timeout=30", "--name=faulty"]
    args += [f"--root={tmp_path}", *tiny(mnist_root), "--trainer.callbacks+=seed_faults.SeedFaults"]
    assert main(args) == 1  # some seeds failed
    final = records(tmp_path / "faulty")
    assert final[0].status == "failed" and "injected fault: this seed raises" in final[0].error
    assert final[1].status == "failed" and "exited with code 3" in final[1].error
    assert final[2].status == "failed" and "timed out after 30 s" in final[2].error
    assert final[3].status == final[4].status == "finished"
    workers = {r.worker for r in final.values()}
    assert len(workers) >= 3  # the crashed worker was replaced while seeds were left
    assert not any(alive(pid) for pid in workers)  # the hung one was killed, the others ended


@pytest.mark.slow
def test_a_bad_override_stops_the_sweep_instead_of_failing_every_seed(mnist_root, tmp_path, capsys):
    args = ["run", *CONFIGS, "--seeds=0-9", "--jobs=1", "--name=typo", f"--root={tmp_path}", *tiny(mnist_root)]
    assert main([*args, "--model.backbone=vgg99"]) == 2
    err = capsys.readouterr().err
    assert "all failed with the same error" in err and "vgg99" in err
    statuses = [r.status for r in records(tmp_path / "typo").values()]
    assert statuses.count("failed") == 3 and statuses.count("finished") == 0
    # the advice works: the same command with the override fixed takes the sweep over (nothing finished)
    assert main([*args, "--seeds=0-1", "--model.backbone=mlp"]) == 0
    final = records(tmp_path / "typo")
    assert final[0].status == final[1].status == "finished"


@pytest.fixture(scope="module")
def two_kinds(tmp_path_factory, mnist_root):
    """Two real sweeps of 2 seeds under OMP_NUM_THREADS=1, each seed's torch threads written down by
    ThreadProbe: 'cnn', the classifier, with the default thread count; 'anomaly', the AutoEncoder
    anomaly detector (normal digit 0), with --threads 3."""
    root = tmp_path_factory.mktemp("kinds")
    probe = root / "threads.jsonl"
    common = ["--seeds=0-1", "--jobs=1", "--figures=none", f"--root={root}", *tiny(mnist_root)]
    common.append("--trainer.callbacks+=seed_faults.ThreadProbe")
    anomaly = ["--config", str(ROOT / "configs" / "mnist_anomaly_ae.yaml"), "--config", CSV]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        patch.setenv(THREADS_PROBE_ENV, str(probe))
        codes = {
            "cnn": main(["run", *CONFIGS, "--name=cnn", *common]),
            "anomaly": main(["run", *anomaly, "--name=anomaly", "--threads=3", *common]),
        }
    threads = [json.loads(line) for line in probe.read_text().splitlines()]
    return {"root": root, "codes": codes, "threads": threads, "records": {n: records(root / n) for n in codes}}


@pytest.mark.slow
def test_seed_workers_run_omp_num_threads_torch_threads_and_threads_overrides_it(two_kinds):
    """torch.get_num_threads() inside each seed's fit and test (ThreadProbe). Before the fix a worker
    ran cores / jobs threads (2 on the 2-core machine) under OMP_NUM_THREADS=1; on a 1-core machine
    the first sweep cannot tell the two apart, the --threads one still can."""
    assert two_kinds["codes"] == {"cnn": 0, "anomaly": 0}
    seen = [(s["seed"], s["stage"], s["threads"], s["omp"]) for s in two_kinds["threads"]]
    assert seen == [
        *[(seed, stage, 1, "1") for seed in (0, 1) for stage in ("fit", "test")],
        # --threads wins over OMP_NUM_THREADS, and what the worker starts (DDP ranks) is told the same
        *[(seed, stage, 3, "3") for seed in (0, 1) for stage in ("fit", "test")],
    ]


@pytest.mark.slow
def test_report_shows_an_anomaly_models_auroc_without_being_asked(two_kinds, capsys):
    root, finished = two_kinds["root"], two_kinds["records"]["anomaly"]
    assert main(["report", "anomaly", "--root", str(root), "--wandb", "off"]) == 0
    rows = {r["metric"]: r for r in _csv(root / "anomaly" / "report" / "statistics.csv")}
    auroc = np.array([finished[seed].metrics["test/auroc"] for seed in (0, 1)])
    assert int(rows["test/auroc"]["n"]) == 2
    assert float(rows["test/auroc"]["mean"]) == pytest.approx(auroc.mean(), abs=1e-12)
    out = capsys.readouterr().out
    assert "Primary metric (the model's own measure of success, its anomaly score's AUROC): `test/auroc`" in out
    assert "--data.max_train_samples=100 " in out  # the overrides with their values, not their names only
    # the classifier's report is what it was: its primary metric, test/acc, is among the defaults
    assert main(["report", "cnn", "--root", str(root), "--wandb", "off"]) == 0
    rows = _csv(root / "cnn" / "report" / "statistics.csv")
    assert [r["metric"] for r in rows] == ["val/loss", "val/acc", "test/loss", "test/acc"]


@pytest.mark.slow
@pytest.mark.parametrize("order", [("cnn", "anomaly"), ("anomaly", "cnn")])
def test_compare_of_a_classifier_and_an_anomaly_sweep_is_refused_naming_what_they_share(two_kinds, order, capsys):
    """Both sweeps log test/loss, of two different models; the default used to compare those."""
    root = two_kinds["root"]
    assert main(["compare", *order, "--root", str(root)]) == 2
    err = capsys.readouterr().err
    primary = "test/acc" if order[0] == "cnn" else "test/auroc"
    own = {"cnn": "cnn: test/acc", "anomaly": "anomaly: test/auroc"}
    assert f"compare decides on {primary} (by default the primary metric of the first sweep, {order[0]})" in err
    assert f"but {order[1]} has no finished seed with it" in err
    assert f"Each sweep's primary metric: {own[order[0]]}; {own[order[1]]};" in err
    assert "The metrics both sweeps share: test/loss, val/loss." in err
    assert "Traceback" not in err
    out = root / "comparisons" / "--".join(order)
    assert not out.exists()  # refused before anything was written
    # the way out the paragraph names: a shared metric, given on purpose
    assert main(["compare", *order, "--root", str(root), "--metric", "test/loss"]) == 0
    (row,) = _csv(out / "comparison.csv")
    assert row["metric"] == "test/loss"


@pytest.mark.parametrize(
    ("omp", "flag", "said"),
    [
        ("two", [], "OMP_NUM_THREADS is 'two'"),
        ("0", [], "OMP_NUM_THREADS is '0'"),
        ("1", ["--threads=0"], "--threads is 0"),
    ],
)
def test_a_thread_count_that_is_not_one_or_more_is_one_paragraph(omp, flag, said, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert main(["run", "--config", CLASSIFIER, "--seeds=0", "--name=t", f"--root={tmp_path}", *flag]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "t" / "registry.sqlite").exists()  # refused before a worker or a record


def test_a_changed_sweep_is_refused_rather_than_mixed(tmp_path, capsys):
    with Registry(tmp_path / "cnn") as registry:
        registry.set_meta(name="cnn", identity={"configs": [], "overrides": {"data.augment": True}})
        registry.add_pending([0])
        registry.put(SeedRecord(0, status="finished"))  # a finished seed makes the settings binding
    assert main(["run", "--config", CLASSIFIER, "--seeds=0-1", "--name=cnn", f"--root={tmp_path}"]) == 2
    assert "was started with other settings" in capsys.readouterr().err


def test_a_second_launcher_on_the_same_sweep_is_refused(tmp_path, capsys):
    (tmp_path / "cnn").mkdir()
    with sweep_lock(tmp_path / "cnn"):
        assert main(["run", "--config", CLASSIFIER, "--seeds=0-1", "--name=cnn", f"--root={tmp_path}"]) == 2
    assert f"(pid {os.getpid()})" in capsys.readouterr().err


def test_one_seed_for_wandb_agents_logs_group_job_type_tags_seed_and_commit(
    mnist_root, tmp_path, monkeypatch, fresh_wandb
):
    """`cnnlab-seeds one` as a W&B agent runs it, W&B offline (no credentials)."""
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(sys, "argv", ["cnnlab-seeds"])
    args = [
        "--config",
        CLASSIFIER,
        *tiny(mnist_root),
        "--experiment=group-xyz",
        f"--trainer.default_root_dir={tmp_path}",
    ]
    assert main(["one", *args, "--seed_everything=3"]) == 0  # as `wandb agent` runs configs/sweeps/*.yaml
    (summary_path,) = (tmp_path / "group-xyz").glob("*-seed3/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["seed"] == 3 and "test/acc" in evaluation_of_best(summary)["metrics"]
    logger = summary["config"]["trainer"]["logger"]["init_args"]
    assert (logger["group"], logger["job_type"]) == ("group-xyz", "seed")
    assert logger["tags"] == ["cnnlab-seeds", "mnist_classifier"]
    (offline,) = summary_path.parent.glob("wandb/offline-run-*")
    assert summary["wandb"]["id"] in offline.name
    record = next(offline.glob("*.wandb")).read_bytes()  # protobuf records: strings appear verbatim
    assert b"group-xyz" in record and b"cnnlab-seeds" in record
    assert b"git_commit" in record and summary["git_commit"].encode() in record


def agent_command(sweep: dict, seed: int) -> list[str]:
    """The command `wandb agent` runs for one job of a sweep config, rendered by wandb's own code
    (wandb/wandb_agent.py, Agent._command_run), the interpreter being this one."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    values = sweep_utils.create_sweep_command_args({"args": {"seed_everything": {"value": seed}}})
    values |= {"env": ["/usr/bin/env"], "interpreter": [sys.executable], "program": [sweep["program"]]}
    command = []
    for chunk in sweep_utils.create_sweep_command(list(sweep["command"])):
        command += (values.get(chunk[2:-1]) or []) if chunk.startswith("${") else [chunk]
    return command


@pytest.mark.slow
@pytest.mark.parametrize("name", ["seeds.yaml", "seeds_noaug.yaml"])
def test_wandb_sweep_configs_run_one_seed_of_an_experiment_per_agent_job(name, mnist_root, tmp_path, monkeypatch):
    """One agent job of each shipped W&B sweep, run as the agent runs it (W&B offline, no credentials;
    tiny data and the runs' folder appended): one run of the grid's seed in the sweep's experiment, fit
    and test of its best checkpoint, grouped by the sweep's name, with the sweep's own overrides."""
    import yaml

    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = yaml.safe_load((ROOT / "configs" / "sweeps" / name).read_text())
    seed = sweep["parameters"]["seed_everything"]["values"][-1]
    command = [*agent_command(sweep, seed), *tiny(mnist_root), f"--trainer.default_root_dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = [p for p in tmp_path.glob("*/*") if p.is_dir()]
    assert [(r.parent.name, r.name.rsplit("-", 1)[-1]) for r in runs] == [(sweep["name"], f"seed{seed}")]
    summary = summary_of(runs[0])
    assert (summary["seed"], summary["status"]) == (seed, "finished")
    assert "test/acc" in evaluation_of_best(summary)["metrics"]  # the best checkpoint was tested
    assert summary["config"]["trainer"]["logger"]["init_args"]["group"] == sweep["name"]
    assert list(runs[0].glob("wandb/offline-run-*"))
    augment = summary["config"]["data"]["init_args"]["augment"]
    assert augment is (name != "seeds_noaug.yaml")  # the sweep's own override reached the run


def test_one_seed_without_an_explicit_seed_is_refused(capsys):
    assert main(["one", "--config", CLASSIFIER]) == 2
    assert "explicit integer model seed" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["report", "--help"], ["compare", "--help"]])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main(command)
    assert info.value.code == 0 and "usage:" in capsys.readouterr().out


def test_one_has_help_without_running_anything(capsys):
    assert main(["one", "--help"]) == 0
    assert "usage: cnnlab-seeds one" in capsys.readouterr().out


def test_report_from_wandb_without_credentials_is_one_paragraph(tmp_path, monkeypatch, capsys, fresh_wandb):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert main(["report", "mnist-cnn", "--from-wandb", "me/cnnlab", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "wandb has no credentials" in err and "wandb login" in err and "Traceback" not in err


def test_report_names_the_seeds_it_left_out_of_a_metric_for_a_non_finite_value():
    from cnnlab.seeds.report import SweepResults, markdown, statistics_rows

    records = [
        SeedRecord(seed, status="finished", attempts=1, metrics={"test/acc": value})
        for seed, value in ((0, 0.91), (1, float("nan")), (2, 0.93), (3, 0.92))
    ]
    results = SweepResults("s", records, source="registry")
    rows = statistics_rows(results, ["test/acc"])
    assert rows[0]["n"] == 3
    text = markdown(results, ["test/acc"], rows, "distributions.png")
    assert "Left out of test/acc (not a finite number): seed 1." in text


def test_workers_that_cannot_start_stop_the_sweep_with_one_paragraph(tmp_path, monkeypatch, capsys):
    """Two workers in a row that end before they are ready (here: a Python that exits at once) mean none
    can run a seed: one paragraph with their output, exit 2, and every seed left to run again."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'cannot import torch: broken install' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    args = ["run", *CONFIGS, "--seeds=0-2", "--jobs=1", "--threads=1", "--name=broken", f"--root={tmp_path}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "2 worker processes in a row exited with code 3 before they could run a seed" in err
    assert "cannot import torch: broken install" in err and "Traceback" not in err
    assert {r.status for r in records(tmp_path / "broken").values()} == {"pending"}


# -- --backend ray, where Ray is not needed (tests/test_seeds_ray.py runs it) ----------------------


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--backend=ray", "--gpus=0"], "--gpus shares this machine's GPUs out to the local pool's workers"),
        (["--address=127.0.0.1:6379"], "--address is for --backend ray"),
        (["--cpus-per-seed=2", "--gpus-per-seed=1"], "--cpus-per-seed, --gpus-per-seed are for --backend ray"),
    ],
)
def test_flags_of_the_other_backend_are_refused(flags, said, mnist_root, tmp_path, capsys):
    """Exit 2 with the paragraph that names the flag, before the sweep folder exists."""
    args = ["run", *CONFIGS, "--seeds=0-1", "--name=flags", f"--root={tmp_path}", *flags]
    assert main([*args, *tiny(mnist_root)]) == 2
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err
    assert not (tmp_path / "flags").exists()


def test_without_ray_the_backend_is_refused_naming_the_extra(monkeypatch, mnist_root, tmp_path, capsys):
    """Exit 2, and the paragraph says how to install the extra."""
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is not installed
    args = ["run", *CONFIGS, "--seeds=0-1", "--name=noray", f"--root={tmp_path}", "--backend=ray"]
    assert main([*args, *tiny(mnist_root)]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[ray]"' in err and "Traceback" not in err
    assert not (tmp_path / "noray").exists()

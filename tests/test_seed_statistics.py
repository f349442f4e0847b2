"""Honest statistics at every number of seeds (issue 20): the interval of the mean that report shows
covers the true mean 93-97% of the time from 3 to 100 seeds (of skewed values, either way, from 10 on),
names its method and warns at few seeds; compare --paired lists the seeds it drops and draws only the
seeds it decides on; Hedges' g."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from cnnlab.seeds import compare, stats
from cnnlab.seeds.command import main
from cnnlab.seeds.registry import Registry, SeedRecord


def sweep_on_disk(root: Path, name: str, values: dict[int, float], failed: tuple[int, ...] = ()) -> None:
    """A sweep whose finished seeds have test/acc `values[seed]` (test/loss = 1 - it) and whose `failed`
    seeds failed."""
    with Registry(root / name) as registry:
        registry.set_meta(name=name, identity={"configs": [{"path": "x.yaml"}], "overrides": {}})
        for seed, value in values.items():
            metrics = {"test/acc": value, "test/loss": 1 - value}
            registry.put(SeedRecord(seed, status="finished", attempts=1, metrics=metrics, monitor="val/acc"))
        for seed in failed:
            registry.put(SeedRecord(seed, status="failed", attempts=1, error="RuntimeError: boom"))


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path) as handle:
        return list(csv.DictReader(handle))


# -- the interval of the mean: coverage by simulation ---------------------------------------------------------

# Normal values, lognormal sigma=0.25 (skewness 0.78: a classifier's seeds with now and then a bad one) and
# exponential values (skewness 2), drawn with a fixed generator, so each coverage is one deterministic
# number. Measured here (2026-12-02, 2000 draws a cell; Student t at 3 and 5 seeds, the bootstrap-t from 10):
#   normal:            n=3 95.0%, n=5 94.8%, n=10 94.9%, n=30 95.0%, n=100 95.0%
#   lognormal s=0.25:  n=3 94.3%, n=5 94.0%, n=10 94.3%, n=30 95.0%, n=100 95.2%
#   exponential:       n=10 95.0%, n=30 94.5% (Student t on the same draws: 91.2%, 93.2%)
# A left tail is the mirror image (test_the_bootstrap_t_interval_mirrors_with_the_values): 1 - these
# exponential draws cover exactly as often. The full table, with 10,000 draws, left tails and heavier
# ones: benchmarks/interval_coverage.py. The BCa bootstrap that report used before covers 72% at n=3 and
# 90% at n=10 on normal data. One standard error is 0.5 points at 2000 draws, so 93-97% fails a method
# that is 2 points off; the gain over Student t on the same draws is a paired difference, its standard
# error 0.3-0.45 points.
DRAWS = {
    "normal": lambda rng, shape: rng.normal(0.98, 0.004, shape),
    "lognormal": lambda rng, shape: rng.lognormal(0, 0.25, shape),
    "exponential": lambda rng, shape: rng.exponential(1, shape),
}
TRUE_MEAN = {"normal": 0.98, "lognormal": float(np.exp(0.25**2 / 2)), "exponential": 1.0}


def coverage(distribution: str, n: int, reps: int = 2000) -> tuple[float, float]:
    """How often the interval report shows, and Student's t on the same draws, hold the true mean. The
    bootstrap-t runs on 500 draws at a time (each resampled as mean_interval resamples one), so a cell
    takes seconds, not minutes."""
    draws = DRAWS[distribution](np.random.default_rng(20 + n), (reps, n))
    if stats.mean_interval_method(n) == stats.BOOTSTRAP_T:
        low, high = np.concatenate([stats.bootstrap_t_interval(draws[i : i + 500]) for i in range(0, reps, 500)], 1)
        for row in (0, reps - 1):  # the vectorised intervals are mean_interval's
            assert stats.mean_interval(draws[row]) == pytest.approx((low[row], high[row], stats.BOOTSTRAP_T), abs=1e-12)
    else:
        low, high = np.array([stats.mean_interval(values)[:2] for values in draws]).T
    t_low, t_high = sps.t.interval(0.95, n - 1, loc=draws.mean(1), scale=sps.sem(draws, axis=1))
    mean = TRUE_MEAN[distribution]
    return float(np.mean((low <= mean) & (mean <= high))), float(np.mean((t_low <= mean) & (mean <= t_high)))


@pytest.mark.parametrize("distribution", ["normal", "lognormal"])
@pytest.mark.parametrize("n", [3, 5, 10, 30, 100])
def test_the_reported_interval_of_the_mean_covers_95_percent_at_any_number_of_seeds(distribution, n):
    method = stats.mean_interval(DRAWS[distribution](np.random.default_rng(0), n))[2]
    assert method == (stats.STUDENT_T if n < 10 else stats.BOOTSTRAP_T)
    assert 0.93 <= coverage(distribution, n)[0] <= 0.97


@pytest.mark.parametrize(("n", "gain"), [(10, 0.025), (30, 0.008)])  # measured: 3.8 and 1.3 points
def test_the_bootstrap_t_covers_skewed_seeds(n, gain):
    """Where Student's t covers 90-93% of exponential values, the bootstrap-t leans with the skew and
    covers 93-97%."""
    reported, student = coverage("exponential", n)
    assert 0.93 <= reported <= 0.97
    assert reported - student >= gain


def test_the_bootstrap_t_interval_mirrors_with_the_values():
    """A left tail (a bad seed) gets what a right tail gets, mirrored: the interval of -x is minus the
    interval of x, reversed."""
    values = np.random.default_rng(9).exponential(1, 15)
    low, high, how = stats.mean_interval(values)
    assert how == stats.BOOTSTRAP_T and high - values.mean() > values.mean() - low  # it leans to the tail
    assert stats.mean_interval(-values) == pytest.approx((-high, -low, stats.BOOTSTRAP_T), abs=1e-12)


def test_the_bootstrap_t_gives_way_to_student_t_where_the_seeds_barely_vary():
    """Eleven equal values and one other: a third of the resamples have no spread, so the bootstrap-t is
    infinite on one side, and the report shows the t-interval instead (and a width of 0 without spread)."""
    values = [0.5] * 11 + [0.6]
    assert np.isinf(stats.bootstrap_t_interval(values)[1])
    assert stats.mean_interval(values) == (*stats.t_interval(np.array(values)), stats.STUDENT_T)
    assert stats.mean_interval([0.5] * 12) == (0.5, 0.5, stats.STUDENT_T)


def test_the_small_n_warning_tells_the_truth_about_skewed_seeds():
    """The warning says a t-interval at 3-10 seeds covers about 88-90% of exponential data (the benchmark's
    10,000 draws: 88.6% at n=3, 88.4% at n=5, 90.0% at n=10); measured here 87.4% at n=5 (3000 draws)."""
    rng = np.random.default_rng(5)
    hits = sum(low <= 1.0 <= high for low, high, _ in (stats.mean_interval(rng.exponential(1, 5)) for _ in range(3000)))
    assert 0.86 <= hits / 3000 <= 0.92


# -- report --------------------------------------------------------------------------------------------------


def test_report_of_three_seeds_shows_a_t_interval_and_warns(tmp_path, capsys):
    """The case that was found: BCa at n=3 gave the seeds' own min and max as the 95% interval."""
    values = {0: 0.97, 1: 0.985, 2: 0.99}
    sweep_on_disk(tmp_path, "three", values)
    assert main(["report", "three", "--root", str(tmp_path), "--wandb", "off", "--metrics", "test/acc"]) == 0
    (row,) = _csv(tmp_path / "three" / "report" / "statistics.csv")
    acc = np.array(list(values.values()))
    low, high = sps.t.interval(0.95, 2, loc=acc.mean(), scale=sps.sem(acc))
    assert row["interval"] == "Student t"
    assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high), abs=1e-12)
    assert float(row["ci_low"]) < 0.97 and float(row["ci_high"]) > 0.99  # wider than the seeds' range
    out = capsys.readouterr().out
    assert "| Student t |" in out
    assert "Warning: with only 3 seeds the 95% interval is a t-interval 4.30 standard errors either side" in out


def test_report_of_ten_seeds_names_the_bootstrap_t_and_does_not_warn(tmp_path, capsys):
    acc = np.random.default_rng(3).normal(0.98, 0.004, size=stats.BOOTSTRAP_T_MIN_N)
    sweep_on_disk(tmp_path, "many", dict(enumerate(acc)))
    assert main(["report", "many", "--root", str(tmp_path), "--wandb", "off", "--metrics", "test/acc"]) == 0
    (row,) = _csv(tmp_path / "many" / "report" / "statistics.csv")
    assert row["interval"] == "bootstrap-t"
    low, high = map(float, stats.bootstrap_t_interval(acc))
    assert (float(row["ci_low"]), float(row["ci_high"])) == pytest.approx((low, high), abs=1e-12)
    assert (low, high) != pytest.approx(stats.t_interval(acc), abs=1e-4)  # not the t-interval by another name
    out = capsys.readouterr().out
    assert "| bootstrap-t |" in out and "Warning" not in out


# -- compare --------------------------------------------------------------------------------------------------


def test_unpaired_compare_at_few_seeds_uses_and_names_welchs_interval(tmp_path, capsys):
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.970, 0.004, 8), rng.normal(0.975, 0.008, 6)
    sweep_on_disk(tmp_path, "a", dict(enumerate(a)))
    sweep_on_disk(tmp_path, "b", dict(enumerate(b)))
    assert main(["compare", "a", "b", "--root", str(tmp_path)]) == 0
    (row,) = _csv(tmp_path / "comparisons" / "a--b" / "comparison.csv")
    va, vb = a.var(ddof=1) / 8, b.var(ddof=1) / 6
    df = (va + vb) ** 2 / (va**2 / 7 + vb**2 / 5)
    half = sps.t.ppf(0.975, df) * np.sqrt(va + vb)
    assert row["interval"] == "Welch t"
    assert float(row["ci_low"]) == pytest.approx(b.mean() - a.mean() - half, abs=1e-12)
    assert float(row["ci_high"]) == pytest.approx(b.mean() - a.mean() + half, abs=1e-12)
    out = capsys.readouterr().out
    assert "95% Welch t-interval of the difference" in out and "| Welch t |" in out
    assert "Warning: with only 6 seeds on a side the 95% interval is a t-interval" in out


def test_paired_compare_lists_dropped_seeds_and_every_figure_uses_the_verdicts_seeds(tmp_path, capsys, monkeypatch):
    """The case that was found: the table was paired while the overlay drew every seed of each sweep.
    Here seed 3 failed in `new`, seed 10 ran only in `base` and 11 only in `new`, and the seeds that
    only one sweep has are far apart, so an overlay of all seeds would put the means elsewhere."""
    rng = np.random.default_rng(6)
    base = dict(enumerate(rng.normal(0.980, 0.002, 10))) | {10: 0.90}
    new = {s: v + rng.normal(0.002, 0.001) for s, v in base.items() if s not in (3, 10)} | {11: 0.999}
    sweep_on_disk(tmp_path, "base", base)
    sweep_on_disk(tmp_path, "new", new, failed=(3,))
    drawn = {}

    def spy(name, draw):
        def wrapped(sweeps, *args):
            drawn[name] = [dict(zip(*s.values("test/acc"), strict=True)) for s in sweeps]
            return draw(sweeps, *args)

        return wrapped

    monkeypatch.setattr(compare, "distribution_figure", spy("overlay", compare.distribution_figure))
    monkeypatch.setattr(compare, "paired_figure", spy("paired", compare.paired_figure))
    assert main(["compare", "base", "new", "--root", str(tmp_path), "--paired"]) == 0
    out = capsys.readouterr().out
    assert "dropped 3: seed 3 (failed in new); seed 10 (not run in new); seed 11 (not run in base)." in out
    assert "the 9 seeds with a finite test/acc in every sweep (0-2, 4-9)" in out
    (row,) = _csv(tmp_path / "comparisons" / "base--new" / "comparison.csv")
    assert int(row["n_a"]) == int(row["n_b"]) == 9
    kept = [s for s in range(10) if s != 3]
    assert float(row["diff"]) == pytest.approx(np.mean([new[s] - base[s] for s in kept]), abs=1e-12)
    for figure in ("overlay", "paired"):
        seeds_a, seeds_b = drawn[figure]
        assert sorted(seeds_a) == sorted(seeds_b) == kept, figure
        assert [seeds_a[s] for s in kept] == [base[s] for s in kept]


def test_paired_plot_joins_each_seeds_two_values(tmp_path):
    sweep_on_disk(tmp_path, "a", {0: 0.95, 1: 0.96, 2: 0.97, 5: 0.90})
    sweep_on_disk(tmp_path, "b", {0: 0.96, 1: 0.95, 2: 0.99, 7: 0.99})
    from cnnlab.seeds.report import load_sweep

    sweeps = [load_sweep(name, tmp_path) for name in ("a", "b")]
    chosen = compare.seeds_to_compare(sweeps, "test/acc", paired=True)
    figure = compare.paired_figure(chosen.sweeps, "test/acc")
    (ax,) = figure.axes
    lines = np.array(sorted(tuple(line.get_ydata()) for line in ax.lines))
    means = (np.mean([0.95, 0.96, 0.97]), np.mean([0.96, 0.95, 0.99]))  # seeds 5 and 7 are in one sweep only
    assert lines == pytest.approx(np.array(sorted([(0.95, 0.96), (0.96, 0.95), (0.97, 0.99), means])))
    assert ax.get_title() == "b better on 2 of 3 seeds"
    paths = compare.write_comparison(sweeps, "test/acc", tmp_path / "out", paired=True)
    assert paths["paired_figure"].name == "paired_seeds.png"
    assert figure.get_suptitle().startswith("paired seeds:")
    assert "![paired seeds](paired_seeds.png)" in paths["markdown"].read_text()


# -- Hedges' g -------------------------------------------------------------------------------------------------


def test_paired_hedges_g_is_the_corrected_d_z_and_its_interval_agrees_with_the_paired_t_test():
    a = np.array([0.9821, 0.9835, 0.9810, 0.9829, 0.9840])
    for shift in ([0.0010, 0.0040, -0.0005, 0.0020, 0.0012], [0.0010, 0.0030, 0.0002, 0.0020, 0.0012]):
        b = a + np.array(shift)
        d = stats.difference(a, b, paired=True, method="t")
        df = len(a) - 1
        # d_z * sqrt(n) is the paired t statistic; Hedges' J is about 1 - 3 / (4 df - 1) (Hedges 1981)
        assert d.effect == "Hedges' g_z"
        assert d.g / (1 - 3 / (4 * df - 1)) * np.sqrt(len(a)) == pytest.approx(sps.ttest_rel(b, a).statistic, rel=0.01)
        # the noncentral-t interval of the effect excludes zero exactly when the t-test rejects
        assert (d.g_low > 0) == (d.p_t < 0.05) == (d.ci_low > 0)
        assert d.g_low < d.g < d.g_high


def test_unpaired_hedges_g_uses_the_pooled_std():
    a, b = np.array([1.0, 2.0, 3.5, 2.5, 2.2]), np.array([3.0, 4.0, 2.9, 5.0, 3.3, 3.8])
    g, low, high = stats.hedges_g(a, b)
    student = sps.ttest_ind(b, a, equal_var=True)  # the pooled-variance t is d_s * sqrt(n_a n_b / (n_a + n_b))
    df = len(a) + len(b) - 2
    assert g / (1 - 3 / (4 * df - 1)) * np.sqrt(5 * 6 / 11) == pytest.approx(student.statistic, rel=0.01)
    assert (low > 0) == (student.pvalue < 0.05) and low < g < high
    assert np.isnan(stats.hedges_g([1.0, 1.0, 1.0], [2.0, 2.0, 2.0])[0])  # no spread: no standardised effect


def test_compare_table_shows_hedges_g_with_its_interval(tmp_path, capsys):
    rng = np.random.default_rng(8)
    a = rng.normal(0.97, 0.004, 12)
    sweep_on_disk(tmp_path, "a", dict(enumerate(a)))
    sweep_on_disk(tmp_path, "b", dict(enumerate(a + rng.normal(0.003, 0.002, 12))))
    assert main(["compare", "a", "b", "--root", str(tmp_path), "--paired"]) == 0
    (row,) = _csv(tmp_path / "comparisons" / "a--b" / "comparison.csv")
    out = capsys.readouterr().out
    g, low, high = float(row["g"]), float(row["g_low"]), float(row["g_high"])
    assert row["effect"] == "Hedges' g_z" and low < g < high
    assert f"| Hedges' g_z {g:.2f} ({low:.2f} to {high:.2f}) |" in out
    assert f"Hedges' g_z = {g:.2f} (95% noncentral-t interval {low:.2f} to {high:.2f})" in out


def test_report_logs_the_intervals_method_to_wandb(tmp_path, monkeypatch, fresh_wandb):
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep_on_disk(tmp_path, "cnn", {0: 0.97, 1: 0.98, 2: 0.985})
    assert main(["report", "cnn", "--root", str(tmp_path), "--wandb", "on", "--metrics", "test/acc"]) == 0
    (table,) = (tmp_path / "cnn" / "report" / "wandb").glob("offline-run-*/files/media/table/seeds/statistics*.json")
    logged = json.loads(table.read_text())
    (row,) = [dict(zip(logged["columns"], data, strict=True)) for data in logged["data"]]
    assert row["metric"] == "test/acc" and row["interval"] == "Student t"

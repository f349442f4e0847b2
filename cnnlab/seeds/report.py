"""A sweep's report: each final metric's distribution over the seeds (histogram and density estimate,
the "final loss / accuracy over N runs" figure), statistics with an interval of the mean that names its
method (t at few seeds, BCa bootstrap at many: stats.mean_interval), a warning at few seeds, and the best
seed, written as PNG, Markdown and CSV from the registry (no server needed); logged to W&B as a
summary table when online. Results can also be read from the W&B API by group.
"""

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

from cnnlab.errors import CnnlabError
from cnnlab.seeds import stats
from cnnlab.seeds.registry import REGISTRY, Registry, SeedRecord

DEFAULT_METRICS = ("val/loss", "val/acc", "test/loss", "test/acc")
ANOMALY_METRIC = "test/auroc"  # an anomaly run's model logs its primary score's AUROC under this name
MAX_BINS = 40
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


@dataclass
class SweepResults:
    """The seeds of one sweep, from its registry or from W&B."""

    name: str
    records: list[SeedRecord]
    source: str
    meta: dict = field(default_factory=dict)

    @property
    def finished(self) -> list[SeedRecord]:
        return [r for r in self.records if r.status == "finished"]

    @property
    def metric_names(self) -> set[str]:
        """Every metric some finished seed recorded."""
        return set().union(*(r.metrics for r in self.finished)) if self.finished else set()

    def values(self, metric: str) -> tuple[list[int], np.ndarray]:
        """Seeds and values of a metric over the finished seeds that have a finite value of it."""
        pairs = [(r.seed, r.metrics[metric]) for r in self.finished if _finite(r.metrics.get(metric))]
        return [s for s, _ in pairs], np.array([v for _, v in pairs], dtype=float)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def sweep_dir(name: str, root: str | Path) -> Path:
    """A sweep named `name` under `root`, or `name` itself when it is a sweep's directory."""
    path = Path(name)
    if (path / REGISTRY).is_file():
        return path
    return Path(root) / name


def load_sweep(name: str, root: str | Path = "runs") -> SweepResults:
    folder = sweep_dir(name, root)
    with Registry(folder, create=False) as registry:
        return SweepResults(folder.name, registry.records(), str(registry.path), registry.meta())


def wandb_api():
    """wandb's public API, or one paragraph where wandb has no credentials to read runs with."""
    from cnnlab.wandb_logger import wandb_has_credentials

    if not wandb_has_credentials():
        raise CnnlabError(
            "--from-wandb reads the sweep's runs from the W&B server, but wandb has no credentials on this "
            "machine. Log in first (`wandb login`, or set WANDB_API_KEY), or report from the registry on the "
            "machine that ran the sweep: cnnlab-seeds report NAME (no server needed)."
        )
    import wandb

    try:
        return wandb.Api()
    except Exception as err:  # wandb's own types: network, auth, usage
        raise CnnlabError(f"W&B's API could not start: {err}. Check the network and the credentials.") from err


def load_from_wandb(project: str, group: str, api=None) -> SweepResults:
    """The runs of one W&B group (a sweep's name) as seed records, for sweeps run by `wandb agent`
    on machines whose disks we cannot see. `project` is "entity/project". A seed's test logs into its
    training run (`test/*` in its summary); a test that is a run of its own (job type test, naming its
    training run: cnnlab before one run per seed) fills in only what the training run lacks."""
    if api is None:
        api = wandb_api()
    by_seed: dict[int, SeedRecord] = {}
    tests: dict[str, dict[str, float]] = {}
    runs = list(api.runs(project, filters={"group": group}))
    for run in runs:
        config = dict(run.config)
        if run.job_type in ("test", "validate") and config.get("training_run"):
            tests[config["training_run"]] = {
                k: float(v) for k, v in dict(run.summary).items() if k.startswith("test/") and _finite(v)
            }
    for run in runs:
        config = dict(run.config)
        if run.job_type in ("report", "test", "validate", "predict") or config.get("seed") is None:
            continue
        metrics = {
            k: float(v)
            for k, v in dict(run.summary).items()
            if "/" in k and not k.startswith("_") and _finite(v) and not isinstance(v, bool)
        }
        metrics = tests.get(run.id, {}) | metrics
        done = run.state == "finished" and any(k.startswith(("test/", "val/")) for k in metrics)
        checkpoint = (config.get("cnnlab") or {}).get("checkpoint") or {}
        monitor = checkpoint.get("monitor")
        record = SeedRecord(
            seed=int(config["seed"]),
            status="finished" if done else ("failed" if run.state in ("failed", "crashed") else "running"),
            metrics=metrics,
            wandb_id=run.id,
            wandb_project=project,
            monitor=monitor,
            mode=checkpoint.get("mode"),
            best_score=metrics.get(monitor) if monitor else None,
            git_commit=config.get("git_commit"),
        )
        earlier = by_seed.get(record.seed)
        if earlier is None or (record.status == "finished" and earlier.status != "finished"):
            by_seed[record.seed] = record
    if not by_seed:
        raise CnnlabError(
            f"W&B has no seed runs in group '{group}' of {project}. Check the entity/project and the group "
            "(a sweep's runs are grouped by its --name / --experiment), and that the runs were synced."
        )
    return SweepResults(group, [by_seed[s] for s in sorted(by_seed)], f"wandb:{project}/{group}")


def primary_metric(results: SweepResults) -> str | None:
    """The model's own measure of success in a sweep, on test: an anomaly model's `test/auroc`, else
    the test counterpart of the checkpoint monitor (a classifier's test/acc, a UNet's test/psnr or
    test/miou, an autoencoder's test/loss); None where the records say neither.

    Read from the seeds' records (summary.json and its test record, or the W&B runs), not from the
    model class: the report imports no model and may read runs of other machines; the class's
    `primary_score` names a score ('combined'), not a metric, and becomes one only where the model was
    tested on a split with normal classes, which is exactly when a record holds `test/auroc` (by the
    protocol, the primary score's AUROC). The monitor is what the run chose its best weights by, so it
    is the model's measure for every other model; for anomaly models it is usually val/loss (the loss
    of the normal validation images), which is why test/auroc is looked for first."""
    have = results.metric_names
    if ANOMALY_METRIC in have:
        return ANOMALY_METRIC
    monitors = Counter(r.monitor for r in results.finished if r.monitor)
    if not monitors:
        return None
    monitor = monitors.most_common(1)[0][0]
    on_test = "test/" + monitor.split("/", 1)[-1]
    for candidate in (on_test, monitor):
        if candidate in have:
            return candidate
    return None


def primary_metrics(results: SweepResults) -> list[str]:
    """A sweep's primary metric with its validation counterpart where recorded (val/acc, test/acc)."""
    primary = primary_metric(results)
    if primary is None:
        return []
    on_val = "val/" + primary.split("/", 1)[-1]
    return [m for m in dict.fromkeys((on_val, primary)) if m in results.metric_names]


def metrics_to_report(results: list[SweepResults], requested: list[str] | None = None) -> list[str]:
    """The requested metrics, or the final val/test loss and accuracy that the sweeps have and each
    sweep's primary metric (an anomaly model's test/auroc, a UNet's test/psnr: primary_metric)."""
    have = [res.metric_names for res in results]
    common = set.intersection(*have) if have else set()
    if requested:
        missing = [m for m in requested if m not in common]
        if missing:
            raise CnnlabError(
                f"Metric(s) {', '.join(missing)} are not in the finished seeds of "
                f"{', '.join(r.name for r in results)}. Available: {', '.join(sorted(common)) or 'none'}."
            )
        return list(requested)
    chosen = [m for m in DEFAULT_METRICS if m in common]
    for res in results:
        chosen += [m for m in primary_metrics(res) if m in common and m not in chosen]
    if not chosen:
        chosen = sorted(m for m in common if m.startswith(("val/", "test/")))
    if not chosen:
        names = ", ".join(r.name for r in results)
        raise CnnlabError(
            f"No finished seed with val/ or test/ metrics in {names}, so there is nothing to report yet. Run "
            "the sweep (cnnlab-seeds run ...) until some seeds finish; failed seeds and their errors are listed "
            "in the registry."
        )
    return chosen


def lower_is_better(metric: str) -> bool:
    name = metric.rsplit("/", 1)[-1].lower()
    return any(word in name for word in ("loss", "err", "nll", "mse", "mae", "perplexity"))


def best_seed(results: SweepResults) -> SeedRecord | None:
    """The best finished seed by its checkpoint monitor (validation, never test: choosing on the
    test set would make the reported test number optimistic)."""
    scored = [r for r in results.finished if r.monitor and _finite(r.best_score)]
    if not scored:
        return None
    minimise = scored[0].mode == "min" if scored[0].mode else lower_is_better(scored[0].monitor)
    return (min if minimise else max)(scored, key=lambda r: r.best_score)


def fmt(value: float) -> str:
    if value is None or not _finite(value):
        return "-"
    return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.3e}"


INTERVAL_NAMES = {  # a Distribution's or Difference's `interval`, as the text names it
    stats.BCA: "BCa bootstrap interval",
    stats.STUDENT_T: "Student t-interval",
    stats.PAIRED_T: "paired t-interval",
    stats.WELCH_T: "Welch t-interval",
    stats.BOOTSTRAP_T: "bootstrap-t interval",
    "t": "t-interval",
}


def interval_rule() -> str:
    """The rule of stats.mean_interval_method (the interval of one mean) in words, with where it comes from."""
    return (
        f"Student's t-interval below {stats.BOOTSTRAP_T_MIN_N} seeds and the bootstrap-t ({stats.RESAMPLES:,} "
        f"resamples) from {stats.BOOTSTRAP_T_MIN_N} on, the rule measured to cover the true mean 93-97% of the time "
        "on normal, mildly skewed and, from 10 seeds, exponentially skewed values (benchmarks/interval_coverage.py)"
    )


def difference_rule() -> str:
    """The rule of stats.interval_method (the interval of a difference of means) in words."""
    return (
        f"a t-interval (paired or Welch) below {stats.BOOTSTRAP_MIN_N} seeds and a BCa bootstrap "
        f"({stats.RESAMPLES:,} resamples) from {stats.BOOTSTRAP_MIN_N} on (benchmarks/interval_coverage.py: in a "
        "difference equal skews cancel, and Welch's t covers 95-96% where a two-sample bootstrap-t covers 92-94%)"
    )


def small_n_warning(n: int, df: float, side: str = "") -> str:
    """The warning report and compare give below stats.SMALL_N seeds: what the few seeds do to the interval."""
    if n < 2 or not df > 0:
        return (
            f"Warning: with only {n} seed{side} there is no seed-to-seed spread to measure, so there is no "
            f"interval: the one shown is the value itself. Run at least {stats.SMALL_N} seeds per sweep "
            "(30 or more for a trustworthy interval)."
        )
    quantile = float(student_t.ppf(0.5 + stats.CONFIDENCE / 2, df))
    return (
        f"Warning: with only {n} seeds{side} the 95% interval is a t-interval {quantile:.2f} standard errors "
        f"either side (t with {df:.3g} degrees of freedom; 1.96 with many seeds), so it is wide, and it is "
        "only as good as the assumption that the seeds' values spread roughly normally: where they are "
        "skewed (a rare bad seed) it covers the true mean less often than 95% (about 88-90% at 3 to 9 "
        "seeds of exponential data, 81-84% for a heavier lognormal tail: benchmarks/interval_coverage.py), "
        f"and no interval can show a tail that {n} seeds did not sample. Run at least {stats.SMALL_N} seeds "
        "per sweep (30 or more for a trustworthy interval)."
    )


# -- figures -----------------------------------------------------------------------------------


def plot_distribution(ax, values: np.ndarray, edges: np.ndarray, color: str, label: str) -> None:
    """Histogram (as a density) with a Gaussian kernel density estimate on top."""
    from scipy.stats import gaussian_kde

    ax.hist(values, bins=edges, density=True, alpha=0.45, color=color, label=label)
    if len(values) > 2 and np.ptp(values) > 0:
        grid = np.linspace(edges[0], edges[-1], 300)
        ax.plot(grid, gaussian_kde(values)(grid), color=color, linewidth=1.8)
    ax.axvline(values.mean(), color=color, linestyle="--", linewidth=1)


def shared_edges(columns: list[np.ndarray]) -> np.ndarray:
    """Bins shared by overlaid histograms, as fine as numpy's 'auto' rule makes them for the
    narrowest distribution (so two well-separated sweeps do not get five bins each)."""
    values = np.concatenate(columns)
    low, high = float(values.min()), float(values.max())
    if high == low:
        low, high = low - 0.5 * (abs(low) or 1) * 1e-3, high + 0.5 * (abs(high) or 1) * 1e-3
    widths = [np.diff(np.histogram_bin_edges(c, bins="auto"))[0] for c in columns if len(c) > 1 and np.ptp(c) > 0]
    bins = int(np.ceil((high - low) / min(widths))) if widths else 5
    pad = (high - low) * 0.05
    return np.linspace(low - pad, high + pad, min(max(bins, 5), MAX_BINS) + 1)


def distribution_figure(sweeps: list[SweepResults], metrics: list[str]):
    """One panel per metric, every sweep's distribution overlaid in it."""
    from matplotlib.figure import Figure

    cols = 2 if len(metrics) > 1 else 1
    rows = math.ceil(len(metrics) / cols)
    figure = Figure(figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, cols)).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        columns = [res.values(metric) for res in sweeps]
        edges = shared_edges([v for _, v in columns if len(v)])
        for i, (res, (_, values)) in enumerate(zip(sweeps, columns, strict=True)):
            if len(values):
                label = f"{res.name} (n={len(values)}, mean {fmt(values.mean())})"
                plot_distribution(ax, values, edges, COLORS[i % len(COLORS)], label)
        ax.set_xlabel(f"final {metric}")
        ax.set_ylabel("density")
        ax.set_title(f"{metric} over {' / '.join(str(len(v)) for _, v in columns)} seeds", fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return figure


# -- the report ----------------------------------------------------------------------------------


def statistics_rows(results: SweepResults, metrics: list[str]) -> list[dict]:
    rows = []
    for metric in metrics:
        seeds, values = results.values(metric)
        if len(values):
            rows.append({"metric": metric, **asdict(stats.describe(values, seeds))})
    return rows


def seed_rows(results: SweepResults, metrics: list[str]) -> list[dict]:
    rows = []
    for r in results.records:
        row = {"seed": r.seed, "status": r.status, "attempts": r.attempts}
        row |= {m: r.metrics.get(m) for m in metrics}
        row |= {
            "seconds": r.seconds,
            "node": r.node,  # where it ran: the host, and on Ray the node's id
            "node_id": r.node_id,
            "device": r.device,
            "data_seed": r.data_seed,
            "run_dir": r.run_dir,
            "best_checkpoint": r.best_checkpoint,
            "wandb_id": r.wandb_id,
            "git_commit": r.git_commit,
            "error": (r.error or "").splitlines()[0] if r.error else None,
        }
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["seed"])
        writer.writeheader()
        writer.writerows(rows)


def markdown(results: SweepResults, metrics: list[str], rows: list[dict], figure: str) -> str:
    n_total, n_done = len(results.records), len(results.finished)
    lines = [f"# Seed sweep `{results.name}`: {n_done} of {n_total} seeds finished", ""]
    identity = results.meta.get("identity") or {}
    if identity:
        configs = ", ".join(f"`{c['path']}`" for c in identity.get("configs", []))
        given = identity.get("overrides") or {}  # {setting: value} (sweep.py's override_values)
        shown = [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in given.items()]
        overrides = " ".join(shown) or "none"
        lines.append(f"Config: {configs}; overrides: `{overrides}`.")
    data_seeds = sorted({r.data_seed for r in results.finished if r.data_seed is not None})
    commits = sorted({r.git_commit for r in results.finished if r.git_commit})
    if data_seeds:
        lines.append(f"Data seed (train/val split): {', '.join(map(str, data_seeds))}; the model seed varies.")
    if commits:
        lines.append(f"Git commit: {', '.join(c[:12] for c in commits)}.")
    lines.append(f"Source: `{results.source}`.")
    primary = primary_metric(results)
    if primary is not None:
        how = "its anomaly score's AUROC" if primary == ANOMALY_METRIC else "the checkpoint monitor's metric"
        lines.append(f"Primary metric (the model's own measure of success, {how}): `{primary}`.")
    lines += [
        "",
        "| metric | n | mean | std | median | 95% CI of the mean | interval | min (seed) | max (seed) |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row['metric']} | {row['n']} | {fmt(row['mean'])} | {fmt(row['std'])} | {fmt(row['median'])} | "
            f"{fmt(row['ci_low'])} to {fmt(row['ci_high'])} | {row['interval']} | "
            f"{fmt(row['min'])} ({row['min_seed']}) | {fmt(row['max'])} ({row['max_seed']}) |"
        )
    lines += [
        "",
        f"std is the seed-to-seed spread (ddof=1); the interval of the mean is {interval_rule()}; a t-interval "
        "also where the values do not vary.",
        "",
    ]
    for metric in metrics:  # a finished seed whose value is NaN or inf is left out of that metric: say which
        left_out = [r.seed for r in results.finished if metric in r.metrics and not _finite(r.metrics[metric])]
        if left_out:
            lines += [
                f"Left out of {metric} (not a finite number): seed {', '.join(map(str, left_out))}.",
                "",
            ]
    fewest = min((row["n"] for row in rows), default=0)
    if rows and fewest < stats.SMALL_N:
        lines += [small_n_warning(fewest, fewest - 1), ""]
    best = best_seed(results)
    if best is not None:
        shown = ", ".join(f"{m} {fmt(best.metrics.get(m))}" for m in metrics if m in best.metrics)
        lines.append(
            f"Best seed by {best.monitor} (the checkpoint monitor, {best.mode or 'auto'}; chosen on validation, "
            f"not test): **seed {best.seed}** ({shown}). Checkpoint: `{best.best_checkpoint or '-'}`."
        )
        lines.append("")
    failed = [r for r in results.records if r.status != "finished"]
    if failed:
        lines.append(f"Not finished ({len(failed)}):")
        lines.append("")
        for r in failed[:20]:
            error = (r.error or "").splitlines()[0] if r.error else ""
            lines.append(f"- seed {r.seed}: {r.status}{': ' + error if error else ''}")
        if len(failed) > 20:
            lines.append(f"- ... and {len(failed) - 20} more (seeds.csv)")
        lines.append("")
    lines += [f"![distributions]({figure})", ""]
    return "\n".join(lines)


def write_report(results: SweepResults, out: Path, metrics: list[str]) -> dict[str, Path]:
    """PNG + Markdown + CSV into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rows = statistics_rows(results, metrics)
    paths = {
        "figure": out / "distributions.png",
        "markdown": out / "summary.md",
        "statistics": out / "statistics.csv",
        "seeds": out / "seeds.csv",
    }
    distribution_figure([results], metrics).savefig(paths["figure"], dpi=110)
    paths["markdown"].write_text(markdown(results, metrics, rows, paths["figure"].name))
    write_csv(paths["statistics"], rows)
    write_csv(paths["seeds"], seed_rows(results, metrics))
    return paths


# -- W&B -------------------------------------------------------------------------------------


def wandb_online() -> bool:
    """Whether a report would reach the server, decided as wandb decides (cnnlab/wandb_logger.py)."""
    from cnnlab.wandb_logger import decide_offline  # imports Lightning: only asked when needed

    return not decide_offline(None)


def log_to_wandb(results: SweepResults, metrics: list[str], paths: dict[str, Path], out: Path) -> str:
    """One W&B run of job type `report` in the sweep's group: the statistics and per-seed tables,
    the figure, and per metric n, mean, CI and the CI's method in its summary. Returns where it went."""
    import wandb

    projects = {r.wandb_project for r in results.records if r.wandb_project}
    project = projects.pop() if len(projects) == 1 else "cnnlab"
    run = wandb.init(
        project=project.split("/")[-1],
        group=results.name,
        job_type="report",
        name=f"{results.name}/report",
        config={"sweep": results.name, "seeds": len(results.records), "finished": len(results.finished)},
        dir=str(out),
    )
    try:
        for key, path in (("statistics", paths["statistics"]), ("seeds", paths["seeds"])):
            with open(path) as handle:
                table = list(csv.reader(handle))
            run.log({f"seeds/{key}": wandb.Table(columns=table[0], data=table[1:])})
        run.log({"seeds/distributions": wandb.Image(str(paths["figure"]))})
        for row in statistics_rows(results, metrics):
            for key in ("n", "mean", "std", "median", "ci_low", "ci_high", "interval", "min", "max"):
                run.summary[f"{row['metric']}/{key}"] = row[key]
        where = run.url or f"offline run {run.id} in {out}/wandb/"
    finally:
        run.finish()
    return where

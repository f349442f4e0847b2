"""Compare two or more sweeps on one metric: each against the first, the difference of means with a
BCa bootstrap interval, Welch's t-test and a permutation test (Holm-adjusted when there are several),
the distributions overlaid, and a one-paragraph verdict that never says more than its tests do.
"""

from dataclasses import asdict
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.seeds import stats
from cnnlab.seeds.report import (
    SweepResults,
    distribution_figure,
    fmt,
    lower_is_better,
    metrics_to_report,
    primary_metric,
    write_csv,
)

FALLBACK_METRICS = ("test/acc", "test/loss", "val/acc", "val/loss")  # where a sweep's records name no primary


def pick_metric(sweeps: list[SweepResults], metric: str | None) -> str:
    """`metric`, or the first sweep's primary metric (test/acc of a classifier, test/auroc of an anomaly
    model): refused, naming the metrics the sweeps share, where a sweep lacks it. A default that fell
    back to any metric both sides happen to have would compare, say, the test/loss of a classifier with
    that of an autoencoder: two numbers that measure different things."""
    for sweep in sweeps:
        metrics_to_report([sweep])  # a sweep with no finished seed is explained as such
    if metric:
        chosen, why = metric, "--metric"
    else:
        base = sweeps[0]
        chosen = primary_metric(base) or next((m for m in FALLBACK_METRICS if m in base.metric_names), None)
        if chosen is None:
            chosen = sorted(m for m in base.metric_names if m.startswith(("val/", "test/")))[0]
        why = f"by default the primary metric of the first sweep, {base.name}"
    lacking = [s for s in sweeps if chosen not in s.metric_names]
    if lacking:
        raise CnnlabError(refusal(sweeps, chosen, why, lacking))
    return chosen


def refusal(sweeps: list[SweepResults], metric: str, why: str, lacking: list[SweepResults]) -> str:
    """One paragraph: which sweep lacks the metric, what each one measures, what they share."""
    shared = sorted(set.intersection(*(s.metric_names for s in sweeps)))
    shared = [m for m in shared if m.startswith(("val/", "test/"))] or shared
    own = "; ".join(f"{s.name}: {primary_metric(s) or 'not recorded'}" for s in sweeps)
    every = "both" if len(sweeps) == 2 else f"all {len(sweeps)}"
    return (
        f"compare decides on {metric} ({why}), but {', '.join(s.name for s in lacking)} "
        f"{'has' if len(lacking) == 1 else 'have'} no finished seed with it, so there is nothing to compare it "
        f"with. Each sweep's primary metric: {own}; sweeps whose primary metrics differ are different kinds of "
        f"model, and a metric they merely share (such as test/loss) measures different things on each side. "
        f"The metrics {every} sweeps share: {', '.join(shared) or 'none'}. Compare sweeps of the same kind of "
        "model, or give --metric with one of the shared metrics where it means the same on every side."
    )


def paired_values(a: SweepResults, b: SweepResults, metric: str):
    seeds_a, values_a = a.values(metric)
    seeds_b, values_b = b.values(metric)
    common = sorted(set(seeds_a) & set(seeds_b))
    if len(common) < 2:
        raise CnnlabError(
            f"--paired needs the same seeds in both sweeps, but {a.name} and {b.name} share {len(common)} "
            f"finished seed(s) with {metric}. Run both over the same --seeds, or compare unpaired."
        )
    index_a, index_b = dict(zip(seeds_a, values_a, strict=True)), dict(zip(seeds_b, values_b, strict=True))
    return [index_a[s] for s in common], [index_b[s] for s in common], common


def compare(sweeps: list[SweepResults], metric: str, paired: bool = False) -> list[dict]:
    """One row per sweep after the first: its difference from the first."""
    if len(sweeps) < 2:
        raise CnnlabError("compare needs at least two sweeps: cnnlab-seeds compare BASELINE OTHER [OTHER ...].")
    base = sweeps[0]
    rows = []
    for other in sweeps[1:]:
        if paired:
            a, b, _ = paired_values(base, other, metric)
        else:
            a, b = base.values(metric)[1], other.values(metric)[1]
        if len(a) < 2 or len(b) < 2:
            raise CnnlabError(
                f"{metric}: {base.name} has {len(a)} and {other.name} {len(b)} finished seeds; a comparison needs "
                "at least 2 on each side (30 or more for a trustworthy interval)."
            )
        rows.append(
            {"baseline": base.name, "sweep": other.name, "metric": metric, **asdict(stats.difference(a, b, paired))}
        )
    adjusted = stats.holm([r["p_t"] for r in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["p_t_holm"] = p
    return rows


def _p(value: float, resamples: int | None = None) -> str:
    if value != value:  # NaN: no variation at all
        return "undefined"
    floor = 2 / (resamples + 1) if resamples else 0.0  # the smallest two-sided p the permutations can show
    if resamples and value <= floor * 1.001:
        return f"<= {floor:.1g}"
    return f"{value:.2g}" if value >= 1e-4 else f"{value:.1e}"


def _p_is(value: float, resamples: int | None = None) -> str:
    """'p = 0.012' or 'p <= 0.0002' (at the permutations' resolution)."""
    text = _p(value, resamples)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def verdict(row: dict, several: bool = False) -> str:
    """The comparison in one paragraph a reader can act on."""
    metric, base, other = row["metric"], row["baseline"], row["sweep"]
    diff, low, high = row["diff"], row["ci_low"], row["ci_high"]
    if "acc" in metric.rsplit("/", 1)[-1]:  # accuracy differences read best in percentage points

        def number(v: float) -> str:
            return f"{100 * v:.2f}"

        unit = " percentage points"
    else:
        number, unit = fmt, ""
    higher = diff > 0
    better = higher != lower_is_better(metric)
    test = "a paired t-test" if row["paired"] else "Welch's t-test"
    p_t = row["p_t_holm"] if several else row["p_t"]
    interval = "BCa bootstrap interval" if row.get("interval", "BCa bootstrap") == "BCa bootstrap" else "t-interval"
    text = (
        f"On {metric}, {other} (mean {fmt(row['mean_b'])}, n={row['n_b']}) is "
        f"{'higher' if higher else 'lower'} than {base} (mean {fmt(row['mean_a'])}, n={row['n_a']}) by "
        f"{number(abs(diff))}{unit}, 95% {interval} of the difference {number(low)} to {number(high)}{unit}"
        f"{' (per-seed differences over the same seeds)' if row['paired'] else ''}; {test} {_p_is(p_t)}"
        f"{' (Holm-adjusted)' if several else ''}, permutation test {_p_is(row['p_permutation'], row['resamples'])}. "
    )
    excludes = low > 0 or high < 0
    tests_reject = p_t < stats.ALPHA and row["p_permutation"] < stats.ALPHA
    if excludes and tests_reject:
        near, far = sorted((abs(low), abs(high)))
        text += (
            f"The interval excludes zero and both tests reject at {stats.ALPHA:g}: {other if better else base} "
            f"is better on {metric}, by {number(near)} to {number(far)}{unit}."
        )
    elif excludes:
        text += (
            f"No clear difference: the interval excludes zero, but the tests do not reject at {stats.ALPHA:g}, so "
            f"the evidence is not consistent; more seeds would decide. A real difference, if any, is likely within "
            f"{number(max(abs(low), abs(high)))}{unit}."
        )
    else:
        text += (
            f"No clear difference: the interval includes zero, so at these numbers of seeds the data cannot tell "
            f"the two apart on {metric}; a real difference, if any, is likely within "
            f"{number(max(abs(low), abs(high)))}{unit}."
        )
    if min(row["n_a"], row["n_b"]) < stats.SMALL_N:
        text += (
            f" Warning: with only {min(row['n_a'], row['n_b'])} seeds on a side the interval and the tests are rough; "
            f"run at least {stats.SMALL_N} seeds per sweep (30 or more for a trustworthy interval)."
        )
    text += (
        f" For scale, the seed-to-seed spread (std) is {fmt(row['std_a'])} for {base} "
        f"and {fmt(row['std_b'])} for {other}."
    )
    return text


def write_comparison(sweeps: list[SweepResults], metric: str, out: Path, paired: bool = False) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(sweeps, metric, paired)
    several = len(rows) > 1
    paths = {"figure": out / "overlay.png", "markdown": out / "comparison.md", "table": out / "comparison.csv"}
    shown = [metric]
    partner = metric.replace("acc", "loss") if "acc" in metric else metric.replace("loss", "acc")
    if partner != metric and partner in metrics_to_report(sweeps):
        shown.append(partner)
    distribution_figure(sweeps, shown).savefig(paths["figure"], dpi=110)
    write_csv(paths["table"], rows)
    lines = [f"# {' vs '.join(s.name for s in sweeps)} on {metric}", ""]
    lines += [
        "| sweep | n | mean | std | difference from " + sweeps[0].name + " | 95% CI | p (t-test) | p (permutation) |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    first = rows[0]
    lines.append(f"| {sweeps[0].name} | {first['n_a']} | {fmt(first['mean_a'])} | {fmt(first['std_a'])} | | | | |")
    for row in rows:
        p_t = row["p_t_holm"] if several else row["p_t"]
        lines.append(
            f"| {row['sweep']} | {row['n_b']} | {fmt(row['mean_b'])} | {fmt(row['std_b'])} | {fmt(row['diff'])} | "
            f"{fmt(row['ci_low'])} to {fmt(row['ci_high'])} | {_p(p_t)} | "
            f"{_p(row['p_permutation'], row['resamples'])} |"
        )
    lines.append("")
    for row in rows:
        lines += [verdict(row, several), ""]
    lines += [f"![overlaid distributions]({paths['figure'].name})", ""]
    paths["markdown"].write_text("\n".join(lines))
    return paths

"""Compare two or more sweeps on one metric: each against the first, the difference of means with its
interval (t at few seeds, BCa bootstrap at many: stats.interval_method), Welch's (or the paired) t-test
and a permutation test (Holm-adjusted when there are several), Hedges' g with its interval, the
distributions overlaid (and, paired, one line per seed), and a one-paragraph verdict that never says
more than its tests do. Paired, every number and figure uses the same seeds, and the dropped ones are listed.
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.seeds import stats
from cnnlab.seeds.report import (
    INTERVAL_NAMES,
    SweepResults,
    difference_rule,
    distribution_figure,
    fmt,
    lower_is_better,
    metrics_to_report,
    primary_metric,
    small_n_warning,
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


@dataclass
class Seeds:
    """The seeds a comparison uses: every table row, verdict and figure is made from `sweeps`."""

    sweeps: list[SweepResults]  # paired: only the seeds with a finite metric in every sweep
    paired: bool
    common: list[int]  # paired: those seeds, sorted; unpaired: empty (each sweep keeps its own)
    dropped: dict[int, str]  # paired: seed -> why it was left out ("failed in B", "not run in A")


def seeds_to_compare(sweeps: list[SweepResults], metric: str, paired: bool) -> Seeds:
    """Unpaired: every finished seed of each sweep. Paired: the seeds with a finite `metric` in every
    sweep (the same set for every pair, so several sweeps against one baseline stay comparable), the
    others dropped with the reason; a figure drawn from the sweeps as loaded would show seeds the
    verdict never saw (the overlay of all seeds once put A below B while the paired table had A ahead)."""
    if not paired:
        return Seeds(sweeps, False, [], {})
    have = [set(sweep.values(metric)[0]) for sweep in sweeps]
    common = sorted(set.intersection(*have))
    dropped = {}
    for seed in sorted(set.union(*have) - set(common)):
        why = []
        for sweep, seeds in zip(sweeps, have, strict=True):
            if seed not in seeds:
                record = next((r for r in sweep.records if r.seed == seed), None)
                if record is None:
                    why.append(f"not run in {sweep.name}")
                elif record.status != "finished":
                    why.append(f"{record.status} in {sweep.name}")
                else:
                    why.append(f"no finite {metric} in {sweep.name}")
        dropped[seed] = ", ".join(why)
    if len(common) < 2:
        names = " and ".join(s.name for s in sweeps)
        raise CnnlabError(
            f"--paired needs the same seeds in every sweep, but {names} share {len(common)} finished seed(s) "
            f"with {metric} ({len(dropped)} seed(s) finished in some but not all). Run all over the same "
            "--seeds, or compare unpaired."
        )
    keep = set(common)
    only = [SweepResults(s.name, [r for r in s.records if r.seed in keep], s.source, s.meta) for s in sweeps]
    return Seeds(only, True, common, dropped)


def seed_ranges(seeds: list[int]) -> str:
    """0, 1, 2, 3, 7, 9, 10 -> '0-3, 7, 9-10'."""
    runs: list[list[int]] = []
    for seed in sorted(seeds):
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _aligned(base: SweepResults, other: SweepResults, metric: str, chosen: Seeds):
    """The two sides' values: paired, in the order of the common seeds; unpaired, each sweep's own."""
    if not chosen.paired:
        return base.values(metric)[1], other.values(metric)[1]
    by_seed = [dict(zip(*s.values(metric), strict=True)) for s in (base, other)]
    return tuple(np.array([side[seed] for seed in chosen.common]) for side in by_seed)


def compare(sweeps: list[SweepResults], metric: str, paired: bool = False) -> list[dict]:
    """One row per sweep after the first: its difference from the first, the interval picked by the
    smaller side's number of seeds (stats.interval_method), and the seeds a paired comparison dropped."""
    if len(sweeps) < 2:
        raise CnnlabError("compare needs at least two sweeps: cnnlab-seeds compare BASELINE OTHER [OTHER ...].")
    chosen = seeds_to_compare(sweeps, metric, paired)
    base = chosen.sweeps[0]
    dropped = "; ".join(f"{seed} ({why})" for seed, why in chosen.dropped.items())
    rows = []
    for other in chosen.sweeps[1:]:
        a, b = _aligned(base, other, metric, chosen)
        if len(a) < 2 or len(b) < 2:
            raise CnnlabError(
                f"{metric}: {base.name} has {len(a)} and {other.name} {len(b)} finished seeds; a comparison needs "
                "at least 2 on each side (30 or more for a trustworthy interval)."
            )
        method = stats.interval_method(min(len(a), len(b)))
        difference = stats.difference(a, b, paired, method=method)
        rows.append(
            {"baseline": base.name, "sweep": other.name, "metric": metric, **asdict(difference), "dropped": dropped}
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


EFFECT_MEANING = {
    stats.EFFECT_PAIRED: "the mean per-seed difference over the standard deviation of the per-seed differences "
    "(d_z, the effect the paired t-test measures)",
    stats.EFFECT_UNPAIRED: "the difference of means over the pooled seed-to-seed standard deviation (Cohen's d_s)",
}


def _g(row: dict) -> str:
    if row["g"] != row["g"]:  # NaN: no spread, or too few seeds for the corrected estimate
        return "undefined"
    return f"{row['g']:.2f} ({row['g_low']:.2f} to {row['g_high']:.2f})"


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
    interval = INTERVAL_NAMES.get(row["interval"], row["interval"])
    if diff == 0:
        return (
            f"On {metric}, {other} (mean {fmt(row['mean_b'])}, n={row['n_b']}) and {base} (mean "
            f"{fmt(row['mean_a'])}, n={row['n_a']}) are equal on average: no difference to call."
        )
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
    if row["g"] == row["g"]:
        text += (
            f" Standardised, {row['effect']} = {row['g']:.2f} (95% noncentral-t interval {row['g_low']:.2f} to "
            f"{row['g_high']:.2f}): {EFFECT_MEANING[row['effect']]}, bias-corrected."
        )
    else:
        text += f" {row['effect']} is undefined here (no spread, or too few seeds to correct it)."
    fewest = min(row["n_a"], row["n_b"])
    if fewest < stats.SMALL_N:
        text += " " + small_n_warning(fewest, row["df"], " on a side")
    text += (
        f" For scale, the seed-to-seed spread (std) is {fmt(row['std_a'])} for {base} "
        f"and {fmt(row['std_b'])} for {other}."
    )
    return text


def paired_figure(sweeps: list[SweepResults], metric: str):
    """The slope graph of a paired comparison: one panel per sweep after the first, one line per seed
    from its value in the first sweep to its value in the other, green where the other is better."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    base, others = sweeps[0], sweeps[1:]
    figure = Figure(figsize=(4.4 * len(others), 4.4), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(others))).ravel()
    on_a = dict(zip(*base.values(metric), strict=True))
    for ax, other in zip(axes, others, strict=True):
        on_b = dict(zip(*other.values(metric), strict=True))
        seeds = sorted(on_a.keys() & on_b.keys())
        better = 0
        for seed in seeds:
            a, b = on_a[seed], on_b[seed]
            wins = b != a and (b < a) == lower_is_better(metric)
            better += wins
            color = "tab:gray" if a == b else ("tab:green" if wins else "tab:red")
            ax.plot([0, 1], [a, b], color=color, alpha=0.6, linewidth=1, marker="o", markersize=3)
            if len(seeds) <= 12:  # more labels than that only hide the lines
                ax.annotate(str(seed), (1, b), xytext=(4, 0), textcoords="offset points", va="center", fontsize=6)
        means = [float(np.mean([on_a[s] for s in seeds])), float(np.mean([on_b[s] for s in seeds]))]
        ax.plot([0, 1], means, color="black", linewidth=2.5, marker="s")
        ax.set_xticks([0, 1], [base.name, other.name])
        ax.set_xlim(-0.25, 1.25)
        ax.set_ylabel(f"final {metric}")
        ax.set_title(f"{other.name} better on {better} of {len(seeds)} seeds", fontsize=10)
        ax.legend(
            handles=[
                Line2D([], [], color="tab:green", label=f"{other.name} better"),
                Line2D([], [], color="tab:red", label=f"{other.name} worse"),
                Line2D([], [], color="black", linewidth=2.5, marker="s", label="means"),
            ],
            fontsize=7,
        )
    figure.suptitle(f"paired seeds: {metric}, one line per seed", fontsize=11)
    return figure


def write_comparison(sweeps: list[SweepResults], metric: str, out: Path, paired: bool = False) -> dict[str, Path]:
    """The table, verdicts and figures, all from the same seeds (seeds_to_compare)."""
    rows = compare(sweeps, metric, paired)
    chosen = seeds_to_compare(sweeps, metric, paired)  # the seeds compare() used, for the figures
    out.mkdir(parents=True, exist_ok=True)
    several = len(rows) > 1
    paths = {"figure": out / "overlay.png", "markdown": out / "comparison.md", "table": out / "comparison.csv"}
    shown = [metric]
    partner = metric.replace("acc", "loss") if "acc" in metric else metric.replace("loss", "acc")
    if partner != metric and partner in metrics_to_report(chosen.sweeps):
        shown.append(partner)
    distribution_figure(chosen.sweeps, shown).savefig(paths["figure"], dpi=110)
    if paired:
        paths["paired_figure"] = out / "paired_seeds.png"
        paired_figure(chosen.sweeps, metric).savefig(paths["paired_figure"], dpi=110)
    write_csv(paths["table"], rows)
    base = sweeps[0].name
    lines = [f"# {' vs '.join(s.name for s in sweeps)} on {metric}", ""]
    lines += [
        f"| sweep | n | mean | std | difference from {base} | 95% CI | interval | Hedges' g (95% CI) | "
        "p (t-test) | p (permutation) |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |",
    ]
    first = rows[0]
    lines.append(f"| {base} | {first['n_a']} | {fmt(first['mean_a'])} | {fmt(first['std_a'])} | | | | | | |")
    for row in rows:
        p_t = row["p_t_holm"] if several else row["p_t"]
        lines.append(
            f"| {row['sweep']} | {row['n_b']} | {fmt(row['mean_b'])} | {fmt(row['std_b'])} | {fmt(row['diff'])} | "
            f"{fmt(row['ci_low'])} to {fmt(row['ci_high'])} | {row['interval']} | {row['effect']} {_g(row)} | "
            f"{_p(p_t)} | {_p(row['p_permutation'], row['resamples'])} |"
        )
    effect = stats.EFFECT_PAIRED if paired else stats.EFFECT_UNPAIRED
    lines += [
        "",
        f"The interval of the difference is {difference_rule()}, counting the smaller side's seeds. "
        f"{effect}: {EFFECT_MEANING[effect]}, times Hedges' small-sample correction; its interval inverts the "
        "noncentral t distribution (Steiger & Fouladi 1997, exact for normal values).",
        "",
    ]
    if paired:
        dropped = "; ".join(f"seed {seed} ({why})" for seed, why in chosen.dropped.items())
        lines += [
            f"Paired by seed: the {len(chosen.common)} seeds with a finite {metric} in every sweep "
            f"({seed_ranges(chosen.common)}) make every number and figure here; "
            + (f"dropped {len(chosen.dropped)}: {dropped}." if dropped else "none dropped."),
            "",
        ]
    for row in rows:
        lines += [verdict(row, several), ""]
    lines += [f"![overlaid distributions]({paths['figure'].name})", ""]
    if paired:
        lines += [f"![paired seeds]({paths['paired_figure'].name})", ""]
    paths["markdown"].write_text("\n".join(lines))
    return paths

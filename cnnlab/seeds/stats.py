"""Statistics of seed distributions: a summary with a confidence interval of the mean, and the
difference between two sweeps with its interval, Welch's (or the paired) t-test and a permutation test,
all from scipy.stats. Intervals are BCa bootstraps (Efron 1987: bias-corrected and accelerated, which
keeps its coverage where a percentile bootstrap of a few skewed values does not), falling back to the
t-interval where BCa cannot be formed (constant values). A difference counts as clear only when the
interval excludes zero and both tests reject at ALPHA: the verdict never outruns its own tests.
Resampling uses a fixed generator, so the same numbers always give the same interval.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
RESAMPLES = 10_000
RNG_SEED = 0
SMALL_N = 10  # fewer seeds than this on a side: the verdict says its numbers are rough


@dataclass
class Distribution:
    """One metric over the seeds of one sweep."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1): the seed-to-seed spread
    median: float
    ci_low: float  # bootstrap confidence interval of the mean
    ci_high: float
    min: float
    min_seed: int
    max: float
    max_seed: int
    interval: str  # how ci_low/ci_high were made: "BCa bootstrap" or "t"


@dataclass
class Difference:
    """mean(b) - mean(a) for one metric, with how sure we are of it."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    std_a: float
    std_b: float
    diff: float
    ci_low: float
    ci_high: float
    t: float  # Welch's t (unpaired) or the paired t statistic
    df: float
    p_t: float
    p_permutation: float
    paired: bool
    resamples: int
    interval: str  # "BCa bootstrap" or "t"
    clear: bool  # the interval excludes zero and both tests reject at ALPHA


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _t_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    mean = float(values.mean())
    if len(values) < 2 or np.ptp(values) == 0:
        return mean, mean
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=stats.sem(values))
    return float(low), float(high)


def _bca(samples: tuple, statistic, confidence: float, resamples: int, seed: int) -> tuple[float, float] | None:
    """scipy's BCa bootstrap interval, or None where it cannot be formed (no spread, too few values)."""
    if any(len(s) < 2 for s in samples) or np.ptp(np.concatenate(samples)) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns and returns NaN for a degenerate distribution
        result = stats.bootstrap(
            samples,
            statistic,
            confidence_level=confidence,
            n_resamples=resamples,
            method="BCa",
            vectorized=True,
            rng=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    return None if not (math.isfinite(low) and math.isfinite(high)) else (float(low), float(high))


def mean_ci(
    values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = RNG_SEED
) -> tuple[float, float, str]:
    """Interval of the mean: BCa bootstrap, else the t-interval; and which of the two it is."""
    values = np.asarray(values, dtype=float)
    bca = _bca((values,), np.mean, confidence, resamples, seed)
    return (*bca, "BCa bootstrap") if bca is not None else (*_t_interval(values, confidence), "t")


def describe(values, seeds, confidence: float = CONFIDENCE, resamples: int = RESAMPLES) -> Distribution:
    values = np.asarray(values, dtype=float)
    seeds = list(seeds)
    if len(values) == 0 or len(values) != len(seeds):
        raise ValueError(f"need one value per seed, got {len(values)} values for {len(seeds)} seeds")
    low, high, interval = mean_ci(values, confidence, resamples)
    return Distribution(
        n=len(values),
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        median=float(np.median(values)),
        ci_low=low,
        ci_high=high,
        min=float(values.min()),
        min_seed=int(seeds[int(values.argmin())]),
        max=float(values.max()),
        max_seed=int(seeds[int(values.argmax())]),
        interval=interval,
    )


def difference(
    a, b, paired: bool = False, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = RNG_SEED
) -> Difference:
    """mean(b) - mean(a). Unpaired: each side resampled on its own, Welch's t-test (no equal-variance
    assumption), permutation of the sweep labels. Paired (a[i], b[i] share a seed): the per-seed
    differences resampled, the paired t-test, random sign flips of the differences. `clear` only
    where the interval excludes zero and both tests give p < 1 - confidence."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 values on each side, got {len(a)} and {len(b)}")
    if paired and len(a) != len(b):
        raise ValueError("paired comparison needs the same seeds on both sides")
    rng = np.random.default_rng(seed)
    if paired:
        test = stats.ttest_rel(b, a)
        bca = _bca((b - a,), np.mean, confidence, resamples, seed)
        interval = bca or _t_interval(b - a, confidence)
    else:
        test = stats.ttest_ind(b, a, equal_var=False)
        bca = _bca((b, a), _mean_difference, confidence, resamples, seed)
        interval = bca or _welch_interval(a, b, confidence, float(test.df))
    low, high = interval

    constant = np.ptp(np.concatenate([a, b])) == 0
    permutation = (
        None
        if constant
        else stats.permutation_test(
            (b, a),
            _mean_difference,
            permutation_type="samples" if paired else "independent",
            vectorized=True,
            n_resamples=resamples,
            alternative="two-sided",
            rng=rng,
        )
    )
    p_permutation = 1.0 if permutation is None else float(permutation.pvalue)
    return Difference(
        n_a=len(a),
        n_b=len(b),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        std_a=float(a.std(ddof=1)),
        std_b=float(b.std(ddof=1)),
        diff=float(b.mean() - a.mean()),
        ci_low=low,
        ci_high=high,
        t=float(test.statistic),
        df=float(test.df),
        p_t=float(test.pvalue),
        p_permutation=p_permutation,
        paired=paired,
        resamples=resamples,
        interval="BCa bootstrap" if bca is not None else "t",
        clear=(low > 0 or high < 0) and float(test.pvalue) < 1 - confidence and p_permutation < 1 - confidence,
    )


def _welch_interval(a: np.ndarray, b: np.ndarray, confidence: float, df: float) -> tuple[float, float]:
    diff = float(b.mean() - a.mean())
    scale = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if scale == 0 or not math.isfinite(df):
        return diff, diff
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * scale
    return diff - half, diff + half


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (several sweeps compared with one baseline)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        value = pvalues[i] if math.isnan(pvalues[i]) else min(1.0, (len(pvalues) - rank) * pvalues[i])
        running = max(running, value) if not math.isnan(value) else running
        adjusted[i] = value if math.isnan(value) else running
    return adjusted

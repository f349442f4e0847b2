"""Statistics of seed distributions: summary with a bootstrap confidence interval of the mean, and
the difference between two sweeps with a bootstrap interval, Welch's t-test and a permutation test.
Resampling uses a fixed generator, so the same numbers always give the same interval.
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 10_000
RNG_SEED = 0
CHUNK = 1000  # resamples drawn at a time: bounds memory at CHUNK x n indices for n in the thousands


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

    @property
    def excludes_zero(self) -> bool:
        return self.ci_low > 0 or self.ci_high < 0


def _resampled_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    n = len(values)
    means = np.empty(resamples)
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        means[start : start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
    return means


def _percentile_interval(estimates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(
    values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = RNG_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (Efron & Tibshirani 1993, ch. 13)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float(values.mean())
    return _percentile_interval(_resampled_means(values, resamples, np.random.default_rng(seed)), confidence)


def describe(values, seeds, confidence: float = CONFIDENCE, resamples: int = RESAMPLES) -> Distribution:
    values = np.asarray(values, dtype=float)
    seeds = list(seeds)
    if len(values) == 0 or len(values) != len(seeds):
        raise ValueError(f"need one value per seed, got {len(values)} values for {len(seeds)} seeds")
    low, high = bootstrap_mean_ci(values, confidence, resamples)
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
    )


def difference(
    a, b, paired: bool = False, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = RNG_SEED
) -> Difference:
    """mean(b) - mean(a). Unpaired: each side resampled on its own, Welch's t-test (no equal-variance
    assumption), permutation of the sweep labels. Paired (a[i], b[i] share a seed): the per-seed
    differences resampled, the paired t-test, random sign flips of the differences."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 values on each side, got {len(a)} and {len(b)}")
    if paired and len(a) != len(b):
        raise ValueError("paired comparison needs the same seeds on both sides")
    rng = np.random.default_rng(seed)
    if paired:
        estimates = _resampled_means(b - a, resamples, rng)
        test = stats.ttest_rel(b, a)
    else:
        estimates = _resampled_means(b, resamples, rng) - _resampled_means(a, resamples, rng)
        test = stats.ttest_ind(b, a, equal_var=False)
    low, high = _percentile_interval(estimates, confidence)

    def mean_difference(x, y, axis):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    constant = np.ptp(np.concatenate([a, b])) == 0
    permutation = (
        None
        if constant
        else stats.permutation_test(
            (b, a),
            mean_difference,
            permutation_type="samples" if paired else "independent",
            vectorized=True,
            n_resamples=resamples,
            alternative="two-sided",
            rng=rng,
        )
    )
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
        p_permutation=1.0 if permutation is None else float(permutation.pvalue),
        paired=paired,
        resamples=resamples,
    )


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

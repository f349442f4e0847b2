"""Statistics of seed distributions: a summary with a confidence interval of the mean, and the
difference between two sweeps with its interval, Welch's (or the paired) t-test, a permutation test
and Hedges' g, from scipy.stats and a small bootstrap-t. Which interval depends on the number of seeds:
for a mean (mean_interval_method) Student's t below BOOTSTRAP_T_MIN_N and the bootstrap-t from there on;
for a difference (interval_method) t-intervals below BOOTSTRAP_MIN_N and BCa from there on. A difference
counts as clear only when the interval excludes zero and both tests reject at ALPHA: the verdict never
outruns its own tests. Resampling uses a fixed generator, so the same numbers always give the same interval.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
RESAMPLES = 10_000
RNG_SEED = 0
SMALL_N = 10  # fewer seeds than this (on a side): report and compare warn that the interval is rough

# Below this many seeds (on the smaller side) compare's interval of a difference of means is the paired or
# Welch t-interval, from it on a BCa bootstrap. Chosen on the interval of one mean (benchmarks/README.md,
# "Interval coverage (issue 20)": the rule report used before the bootstrap-t): a bootstrap takes the few
# seeds' spread for the whole truth, so BCa undercovers at few seeds whatever the data (normal: 71.6% at
# n=3, 89.9% at n=10, 93.3% at n=30) while t covers 94.8-95.4%; from 70 BCa is within 0.6 points of t.
# Differences keep it: where both sweeps' values have the same skew it cancels in their difference, and a
# two-sample bootstrap-t covered 92.4-94.4% of differences of exponential or bad-seed values at 10-30 seeds
# a side where Welch's t covers 95.1-96.2% (a one-off simulation for issue 20, 10,000 draws a cell, not in
# benchmarks/).
BOOTSTRAP_MIN_N = 70

# Below this many seeds the interval of one mean is Student's t, from it on the bootstrap-t. Measured by
# benchmarks/interval_coverage.py (benchmarks/README.md, "Interval coverage (issue 20)", 10,000 samples
# a cell): the bootstrap-t takes its quantiles from the studentized resamples instead of Student's t, so
# its interval leans with the skew, and from 10 to 100 seeds it covers 93.8-95.2% of exponential values
# (skewness 2, to the right or to the left) where t covers 89.8-94.5%, and 94.7-95.3% of normal values
# at 1.00-1.07 times t's width. Below 10 it has too few distinct resamples to learn the skew from: at 5
# normal seeds 1.6 times t's width for the same coverage, at 3 seeds infinite (a ninth of the resamples
# repeat one value and have no t*).
BOOTSTRAP_T_MIN_N = 10

BCA = "BCa bootstrap"
STUDENT_T = "Student t"  # the t-interval of one mean
BOOTSTRAP_T = "bootstrap-t"  # the studentized bootstrap interval of one mean
PAIRED_T = "paired t"  # the t-interval of the mean per-seed difference
WELCH_T = "Welch t"  # the t-interval of a difference of means with unequal variances


@dataclass
class Distribution:
    """One metric over the seeds of one sweep."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1): the seed-to-seed spread
    median: float
    ci_low: float  # confidence interval of the mean, made as `interval` says
    ci_high: float
    min: float
    min_seed: int
    max: float
    max_seed: int
    interval: str  # how ci_low/ci_high were made: "Student t" or "bootstrap-t"


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
    interval: str  # "BCa bootstrap", "paired t" or "Welch t"
    clear: bool  # the interval excludes zero and both tests reject at ALPHA
    effect: str  # which standardised effect `g` is: EFFECT_PAIRED or EFFECT_UNPAIRED
    g: float  # Hedges' g: the difference in standard deviations, bias-corrected; NaN where undefined
    g_low: float  # its confidence interval (noncentral t)
    g_high: float


# Paired: the mean per-seed difference over the std of the per-seed differences (d_z, the effect the
# paired t-test measures: t = d_z * sqrt(n)). Unpaired: the difference of means over the pooled std
# (d_s). Both with Hedges' small-sample correction J(df), since d overestimates the effect at few seeds
# (by 1/J: a third at 4 seeds a side paired, df = 3).
EFFECT_PAIRED = "Hedges' g_z"
EFFECT_UNPAIRED = "Hedges' g_s"


def interval_method(n: int) -> str:
    """The interval compare uses for a difference of means with n seeds on its smaller side: "t" (paired
    or Welch) below BOOTSTRAP_MIN_N, else BCA."""
    return BCA if n >= BOOTSTRAP_MIN_N else "t"


def mean_interval_method(n: int) -> str:
    """The interval report uses for a mean of n values: STUDENT_T below BOOTSTRAP_T_MIN_N, else BOOTSTRAP_T."""
    return BOOTSTRAP_T if n >= BOOTSTRAP_T_MIN_N else STUDENT_T


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def t_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Student's t-interval of the mean (of width 0 where the values do not vary)."""
    mean = float(values.mean())
    if len(values) < 2 or np.ptp(values) == 0:
        return mean, mean
    # stats.t.interval(confidence, n - 1, loc=mean, scale=stats.sem(values)), without the argument
    # checking that made it and sem take 1 ms a call: the coverage simulations call it 10^4-10^5 times
    half = (
        float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * float(values.std(ddof=1)) / math.sqrt(len(values))
    )
    return mean - half, mean + half


def bootstrap_t_interval(
    values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = RNG_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """The studentized (bootstrap-t) interval of the mean of each row of `values` (the last axis is the
    seeds): the quantiles of t* = (mean* - mean) / se* over resamples of the row stand in for Student's t
    quantiles (Efron & Tibshirani 1993, ch. 12.5), which makes the interval second-order accurate where
    the values are skewed (Hall 1988). Every row is resampled with the same indices from `seed`, as
    separate calls would be. NaN for a row without spread."""
    values = np.asarray(values, dtype=float)
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    se = values.std(axis=-1, ddof=1) / math.sqrt(n) if n > 1 else np.zeros_like(mean)
    # resample deviations from the mean: accuracies such as 0.98 +- 0.004 keep their digits in the squares
    deviations = values - mean[..., None]
    # each resample as counts of each seed: its mean and variance are two matrix products, so a coverage
    # simulation evaluates thousands of rows at once
    drawn = np.random.default_rng(seed).integers(0, n, (resamples, n)) + n * np.arange(resamples)[:, None]
    counts = np.bincount(drawn.ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)
    # in place where it can be: a simulation's 500 x 10,000 t* are 40 MB a pass
    mean_star = deviations @ counts.T
    mean_star /= n
    se_star = deviations**2 @ counts.T
    se_star /= n
    se_star -= mean_star**2  # the resample's variance (ddof=0): E*[d^2] - E*[d]^2, d centred, so no cancellation
    np.maximum(se_star, 0.0, out=se_star)
    se_star /= n - 1  # (variance * n / (n - 1)) / n: the squared standard error with ddof=1
    np.sqrt(se_star, out=se_star)
    # a resample of one repeated value has no spread (but for rounding): its t* is infinite, on the side of
    # its mean. Where such resamples are more than the tail (a few distinct values, as [0.5] * 11 + [0.6]),
    # the interval is infinite and mean_interval shows the t-interval; leaving them out instead would drop
    # one side's resamples and pull that end of the interval in to the mean itself
    se_star[se_star <= 1e-9 * se[..., None]] = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        t_star = np.divide(mean_star, se_star, out=mean_star)  # x / 0 is +-inf; 0 / 0 (no spread at all) NaN
    tail = (1 - confidence) / 2
    # NaN only in a row without spread (its interval is NaN anyway); nanquantile is slow, so only then.
    # numpy warns of an all-NaN row and of inf - inf where a quantile falls among infinite t*
    quantile = np.nanquantile if np.isnan(t_star).any() else np.quantile
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        t_low, t_high = quantile(t_star, [tail, 1 - tail], axis=-1)
    # ... and returns NaN for a quantile between two infinite t*, or an infinite and a finite one: that end
    # of the interval is infinite
    t_low, t_high = np.where(np.isnan(t_low), -np.inf, t_low), np.where(np.isnan(t_high), np.inf, t_high)
    # a right-skewed sample has a long lower tail of t* (a resample that drew the large values has a large
    # se* too), so the interval reaches further above the mean than below: mean - t* quantile * se
    with np.errstate(invalid="ignore"):  # inf * 0 in a row without spread, NaN below
        low, high = mean - t_high * se, mean - t_low * se
    spread = se > 0
    return np.where(spread, low, np.nan), np.where(spread, high, np.nan)


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
    """The BCa bootstrap interval of the mean at any n (the t-interval where BCa cannot be formed), and
    which of the two it is. What report shows is mean_interval, which does not use it: BCa covers less
    than the bootstrap-t wherever both were measured (0.3-1.8 points at 70-100 seeds, 72% at 3 normal
    seeds: benchmarks/interval_coverage.py)."""
    values = np.asarray(values, dtype=float)
    bca = _bca((values,), np.mean, confidence, resamples, seed)
    return (*bca, BCA) if bca is not None else (*t_interval(values, confidence), "t")


def mean_interval(
    values, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = RNG_SEED
) -> tuple[float, float, str]:
    """The interval of the mean that report shows, and its method: Student's t-interval below
    BOOTSTRAP_T_MIN_N values, the bootstrap-t from there on (Student t again where values do not vary)."""
    values = np.asarray(values, dtype=float)
    if mean_interval_method(len(values)) == BOOTSTRAP_T and np.ptp(values) > 0:
        low, high = bootstrap_t_interval(values, confidence, resamples, seed)
        if math.isfinite(low) and math.isfinite(high):
            return float(low), float(high), BOOTSTRAP_T
    return (*t_interval(values, confidence), STUDENT_T)


def describe(values, seeds, confidence: float = CONFIDENCE, resamples: int = RESAMPLES) -> Distribution:
    values = np.asarray(values, dtype=float)
    seeds = list(seeds)
    if len(values) == 0 or len(values) != len(seeds):
        raise ValueError(f"need one value per seed, got {len(values)} values for {len(seeds)} seeds")
    low, high, interval = mean_interval(values, confidence, resamples)
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
    a,
    b,
    paired: bool = False,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = RNG_SEED,
    method: str = BCA,
) -> Difference:
    """mean(b) - mean(a). Unpaired: each side resampled on its own, Welch's t-test (no equal-variance
    assumption), permutation of the sweep labels. Paired (a[i], b[i] share a seed): the per-seed
    differences resampled, the paired t-test, random sign flips of the differences. `method` BCA or "t"
    (the paired or Welch t-interval; compare picks it with interval_method). `clear` only where the
    interval excludes zero and both tests give p < 1 - confidence."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 values on each side, got {len(a)} and {len(b)}")
    if paired and len(a) != len(b):
        raise ValueError("paired comparison needs the same seeds on both sides")
    if method not in (BCA, "t"):
        raise ValueError(f"method is {BCA!r} or 't', not {method!r}")
    rng = np.random.default_rng(seed)
    if paired:
        test = stats.ttest_rel(b, a)
        bca = _bca((b - a,), np.mean, confidence, resamples, seed) if method == BCA else None
        low, high = bca or t_interval(b - a, confidence)
    else:
        test = stats.ttest_ind(b, a, equal_var=False)
        bca = _bca((b, a), _mean_difference, confidence, resamples, seed) if method == BCA else None
        low, high = bca or _welch_interval(a, b, confidence, float(test.df))

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
    g, g_low, g_high = hedges_g(a, b, paired, confidence)
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
        interval=BCA if bca is not None else (PAIRED_T if paired else WELCH_T),
        clear=(low > 0 or high < 0) and float(test.pvalue) < 1 - confidence and p_permutation < 1 - confidence,
        effect=EFFECT_PAIRED if paired else EFFECT_UNPAIRED,
        g=g,
        g_low=g_low,
        g_high=g_high,
    )


def _welch_interval(a: np.ndarray, b: np.ndarray, confidence: float, df: float) -> tuple[float, float]:
    diff = float(b.mean() - a.mean())
    scale = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
    if scale == 0 or not math.isfinite(df):
        return diff, diff
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * scale
    return diff - half, diff + half


def hedges_g(a, b, paired: bool = False, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Hedges' g of mean(b) - mean(a) (g_z paired, g_s unpaired: EFFECT_PAIRED, EFFECT_UNPAIRED) and its
    confidence interval, found by inverting the noncentral t distribution of d * sqrt(n_eff) (Steiger &
    Fouladi 1997; exact for normal values, where a bootstrap of a ratio of a few values is not). The
    interval is of the population effect, so it is not shrunk by J as the point estimate is. NaN
    where undefined: no spread, or too few seeds for a corrected estimate (df < 2)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired:
        diffs = b - a
        df, scale = len(diffs) - 1, math.sqrt(len(diffs))
        spread = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
    else:
        df, scale = len(a) + len(b) - 2, math.sqrt(len(a) * len(b) / (len(a) + len(b)))
        pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / df if df > 0 else 0.0
        spread = math.sqrt(pooled)
    if df < 2 or spread == 0 or not math.isfinite(spread):
        return math.nan, math.nan, math.nan
    d = float(b.mean() - a.mean()) / spread
    # Hedges' exact correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)), ~ 1 - 3/(4 df - 1)
    j = math.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    t = d * scale
    tail = (1 - confidence) / 2
    low, high = _noncentrality(t, df, 1 - tail), _noncentrality(t, df, tail)
    return j * d, low / scale, high / scale


def _noncentrality(t: float, df: float, p: float) -> float:
    """The noncentrality nc with nct.cdf(t, df, nc) == p (the cdf falls as nc grows); NaN if not found."""

    def excess(nc: float) -> float:
        return float(stats.nct.cdf(t, df, nc)) - p

    step = max(5.0, abs(t))
    low, high = t - step, t + step
    for _ in range(20):  # widen until the root is bracketed: heavy tails at few degrees of freedom
        if excess(low) > 0 and excess(high) < 0:
            return float(optimize.brentq(excess, low, high, xtol=1e-10))
        step *= 2
        low, high = t - step, t + step
    return math.nan


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

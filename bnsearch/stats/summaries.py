"""One arm over its seeds: location, spread, failures and intervals that cover at small n."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
NAN = float("nan")
ACCURACY = (0.0, 100.0)  # an arm's accuracy, in points


@contextlib.contextmanager
def quiet():
    """Silence what scipy and numpy say about degenerate data (n < 2, ties, zero sd)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        yield


def finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def t_interval(estimate: float, se: float, df: float, confidence: float,
               bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """Student-t interval, cut to ``bounds`` (accuracy lies in 0..100: an interval reaching past
    100 covers nothing more by it, and no reader believes it)."""
    if not (math.isfinite(se) and df > 0):
        return NAN, NAN
    half = float(stats.t.isf((1 - confidence) / 2, df)) * se
    return max(estimate - half, bounds[0]), min(estimate + half, bounds[1])


def example_variance(correct: np.ndarray) -> float:
    """Variance (points²) of the per-example means of a (seeds, examples) 0/1 or contrast matrix,
    over the examples: the test set's share of the sampling error, divided by the example count."""
    columns = 100 * np.asarray(correct, dtype=float).mean(axis=0)
    return float(columns.var(ddof=1) / columns.size) if columns.size > 1 else NAN


def satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Welch-Satterthwaite degrees of freedom of a sum of variance parts (variance, df)."""
    total = sum(v for v, _ in parts)
    denominator = sum(v * v / df for v, df in parts if df > 0)
    return total * total / denominator if denominator > 0 else NAN


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    n: int
    n_failed: int
    failure_rate: float  # failed / (n + n_failed)
    mean: float
    sd: float
    median: float
    iqm: float  # mean of the middle 50%: robust to a finite outlier
    min: float
    max: float
    ci_low: float  # Student-t interval of the mean over seeds (covers ~0.95 at any n >= 2)
    ci_high: float
    test_ci_low: float = NAN  # the same, with the fixed test set's sampling error added
    test_ci_high: float = NAN


def summarize(values, *, arm="", failed=0, confidence=1 - ALPHA, correct: np.ndarray | None = None) -> ArmSummary:
    """Summarize one arm's finite replicate values; ``failed`` counts the runs that failed.

    ``correct`` (seeds x test examples, 1 where a finished run was right) adds a second
    interval whose variance has the test set's part too (the two-way seeds x examples variance)."""
    v = finite(values)
    n, total = len(v), len(v) + failed
    rate = failed / total if total else NAN
    if n == 0:
        return ArmSummary(arm, 0, failed, rate, *[NAN] * 8)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if n >= 2 else NAN
    lo, hi = t_interval(mean, sd / math.sqrt(n), n - 1, confidence, ACCURACY) if n >= 2 else (NAN, NAN)
    test_lo = test_hi = NAN
    if correct is not None and n >= 2 and len(correct) == n:
        seed_part, example_part = sd * sd / n, example_variance(correct)
        df = satterthwaite([(seed_part, n - 1), (example_part, np.shape(correct)[1] - 1)])
        test_lo, test_hi = t_interval(mean, math.sqrt(seed_part + example_part), df, confidence, ACCURACY)
    return ArmSummary(arm, n, failed, rate, mean, sd, float(np.median(v)), float(stats.trim_mean(v, 0.25)),
                      float(v.min()), float(v.max()), lo, hi, test_lo, test_hi)

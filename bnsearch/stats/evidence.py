"""What one comparison's data say at one look: the estimate, its standard error, and a p-value
for each claim the comparison can make.

A comparison is a contrast over arms: ``a - b``, or for an interaction ``(a1 - a2) - (b1 - b2)``.
Paired by seed (the same seeds, data order and initialisation in every arm) when at least two
seeds finished in all its arms; otherwise the arms are independent (Welch). The claims:

- *zero*, H0: Δ = 0, two-sided; rejected, the arms differ. When a run failed (diverged,
  collapsed), the 2-arm test is rank-based on every seed that ran, a failure the worst outcome
  (Wilcoxon signed-rank paired, Mann-Whitney otherwise; Lachin's worst-rank analysis), so an
  arm cannot gain by losing its bad seeds;
- *equivalent*, H0: |Δ| >= SESOI (TOST); rejected, the arms are the same within the SESOI.
  Never claimable when the arms' failure rates differ by more than ``FAILURE_TOLERANCE``;
- *apart*, H0: |Δ| < SESOI; rejected, the arms differ by more than the SESOI.

With per-example test results the standard error has the fixed test set's sampling error in
it too: the two-way (seeds x test examples) variance, var(seed means)/seeds + var(example
means)/examples, the closed form of Owen's pigeonhole bootstrap (conservative by the
interaction term), with Welch-Satterthwaite degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from bnsearch.stats.summaries import NAN, example_variance, quiet, satterthwaite

FAILURE_TOLERANCE = 0.1  # failure rates further apart than this rule out "equivalent"
WORST = -1e9  # a failed run's value in rank tests: below every accuracy


@dataclass(frozen=True)
class Evidence:
    estimate: float  # the contrast, accuracy points, over the seeds that finished
    se: float  # seed-only, or with the test set's error when ``with_test_set``
    df: float
    seed_se: float  # seed-only, always
    seed_df: float
    n: int  # seeds entering (paired: finished in every arm of the contrast)
    paired: bool
    with_test_set: bool
    failure_rates: tuple[float, ...]  # per arm of the contrast, over the seeds that ran
    p_zero: float
    p_equivalent: float
    p_apart: float
    zero_test: str  # "paired t", "Welch t", "worst-rank Wilcoxon", "worst-rank Mann-Whitney"
    degenerate: str = ""  # why no claim can be tested, or ""
    blocked: str = ""  # why "equivalent" cannot be claimed, or ""


def _sf(t, df):
    return special.stdtr(df, -t)  # P(T > t)


def claim_p_values(estimate, se, df, sesoi) -> tuple[float, float, float]:
    """(p_zero, p_equivalent, p_apart) of a t statistic; zero and apart are two-sided."""
    if not (np.isfinite(se) and se > 0 and df > 0):
        return NAN, NAN, NAN
    p_zero = 2 * _sf(abs(estimate) / se, df)
    p_equivalent = max(_sf((estimate + sesoi) / se, df), _sf((sesoi - estimate) / se, df))
    p_apart = min(1.0, 2 * min(_sf((estimate - sesoi) / se, df), _sf((-sesoi - estimate) / se, df)))
    return float(p_zero), float(p_equivalent), float(p_apart)


def contrast_evidence(values: np.ndarray, weights: np.ndarray, sesoi: float, ran: np.ndarray | None = None,
                      correct: list[np.ndarray | None] | None = None) -> Evidence:
    """``values``: seeds x arms of the contrast (points, NaN where the run failed); ``ran``: the
    same shape, False where an arm never ran that seed (default: every run ran). ``correct``: per
    arm, the (seeds x examples) per-example results on the same rows (rows that did not finish are
    ignored), or None."""
    values, w = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    ran = np.ones(values.shape, dtype=bool) if ran is None else np.asarray(ran, dtype=bool)
    finished = ran & np.isfinite(values)
    failed = ran & ~finished
    runs = ran.sum(axis=0)
    rates = tuple(float(f / r) if r else NAN for f, r in zip(failed.sum(axis=0), runs))
    complete = finished.all(axis=1)
    paired = int(complete.sum()) >= 2
    examples = correct is not None and all(c is not None for c in correct)
    parts: list[tuple[float, float]] = []
    if paired:
        d = values[complete] @ w
        n, estimate = len(d), float(d.mean())
        parts.append((float(d.var(ddof=1)) / n, n - 1))
        if examples:
            contrast = sum(wj * np.asarray(c, dtype=float)[complete] for wj, c in zip(w, correct))
            parts.append((example_variance(contrast), contrast.shape[1] - 1))
    else:
        survivors = [values[finished[:, j], j] for j in range(len(w))]
        n = min((len(s) for s in survivors), default=0)
        estimate = float(sum(wj * s.mean() for wj, s in zip(w, survivors))) if n else NAN
        if n >= 2:
            parts += [(wj * wj * float(s.var(ddof=1)) / len(s), len(s) - 1) for wj, s in zip(w, survivors)]
            if examples:
                means = sum(wj * np.asarray(c, dtype=float)[finished[:, j]].mean(axis=0) for j, (wj, c) in enumerate(zip(w, correct)))
                parts.append((example_variance(means[None, :]), len(means) - 1))
    seed_parts = parts[:1] if paired else parts[: len(w)]
    seed_se = math.sqrt(sum(v for v, _ in seed_parts)) if seed_parts else NAN
    seed_df = satterthwaite(seed_parts) if seed_parts else NAN
    se = math.sqrt(sum(v for v, _ in parts)) if parts else NAN
    df = satterthwaite(parts) if parts else NAN
    with quiet():
        p_zero, p_equivalent, p_apart = claim_p_values(estimate, se, df, sesoi)
    zero_test = "paired t" if paired else "Welch t"
    degenerate = ""
    if not parts:
        degenerate = "fewer than 2 finished seeds per arm"
    elif se == 0:
        degenerate = "zero variance: every seed gives the same result"
    if failed.any() and len(w) == 2:
        zero_test, p_zero = _worst_rank(values, ran)
        degenerate = "" if math.isfinite(p_zero) else degenerate or "every seed that ran failed in both arms"
    blocked = ""
    if failed.any() and np.nanmax(rates) - np.nanmin(rates) > FAILURE_TOLERANCE:
        blocked = (f"failure rates {' vs '.join(f'{r:.0%}' for r in rates)} differ by more than "
                   f"{FAILURE_TOLERANCE:.0%}")
        p_equivalent = NAN
    if degenerate and not math.isfinite(p_zero):
        p_zero = p_equivalent = p_apart = NAN
    return Evidence(estimate, se, df, seed_se, seed_df, n, paired, examples and bool(parts), rates, p_zero,
                    p_equivalent, p_apart, zero_test, degenerate, blocked)


def _worst_rank(values: np.ndarray, ran: np.ndarray) -> tuple[str, float]:
    """The two-sided rank test of one arm against the other on every seed that ran, a failure
    below every value (two-sided, so the contrast's orientation does not matter)."""
    v = np.where(np.isfinite(values), values, WORST)
    both = ran.all(axis=1)
    with quiet():
        if both.sum() >= 2:  # the seeds both arms ran: paired
            d = v[both, 0] - v[both, 1]
            return "worst-rank Wilcoxon", signed_rank_p(d)
        return "worst-rank Mann-Whitney", float(stats.mannwhitneyu(v[ran[:, 0], 0], v[ran[:, 1], 1]).pvalue)


def signed_rank_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of per-seed differences (zeros dropped): exact without
    ties, else the normal approximation with the tie correction (scipy's fallback for ties is a
    permutation test, 0.2 s a call)."""
    d = d[d != 0]
    if not len(d):
        return NAN
    exact = len(np.unique(np.abs(d))) == len(d) and len(d) <= 50
    return float(stats.wilcoxon(d, method="exact" if exact else "approx").pvalue)

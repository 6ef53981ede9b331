"""Planning: the seeds a claim needs, and the smallest effect the seeds that ran can detect."""

from __future__ import annotations

import math

from scipy import stats
from statsmodels.stats.power import TTestIndPower, TTestPower

from bnsearch.stats.summaries import ALPHA, NAN, quiet

POWER = 0.8
SEEDS_CAP = 10_000  # planning answer when the effect is too small (or the sd unknown) to plan
KINDS = ("difference", "equivalence")
SD_CONFIDENCE = 0.8  # plan with the sd's upper 80% confidence bound, not the estimate


def _power(effect, n, *, paired, alpha, alternative="two-sided") -> float:
    with quiet():
        if paired:  # a one-sample t-test on the per-seed differences
            p = TTestPower().power(effect, nobs=n, alpha=alpha, alternative=alternative)
        else:
            p = TTestIndPower().power(effect, nobs1=n, alpha=alpha, alternative=alternative)
    # statsmodels gives NaN when the noncentrality is huge, i.e. when power is ~1 (n >= 2)
    return 1.0 if math.isnan(p) else float(p)


def sd_upper_bound(sd: float, n: int, confidence: float = SD_CONFIDENCE) -> float:
    """One-sided upper confidence bound of an sd estimated from ``n`` values (chi-square)."""
    if not (math.isfinite(sd) and n >= 2):
        return NAN
    return float(sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1)))


def seeds_needed(sd, sesoi, *, paired, kind, alpha=ALPHA, power=POWER, family=1, sd_seeds=None, at_least=0,
                 test_set_se=0.0) -> int:
    """Seeds per arm for ``power`` to detect ``sesoi`` (difference) or show equivalence.

    ``sd`` is of the differences when paired, pooled otherwise. The test runs at ``alpha /
    family`` (each claim of a family of that many comparisons). When ``sd_seeds`` says how many
    seeds the sd came from, its upper 80% confidence bound is planned with, so that the plan is not
    built on a lucky small sd. Equivalence uses the usual TOST approximation: with a true
    difference of 0 both one-sided tests must pass, so each gets alpha one-sided and power
    ``1 - (1 - power) / 2``. Never below ``at_least`` (the seeds already run, plus one).
    ``test_set_se`` is the part of the standard error that the fixed test set contributes, which
    more seeds do not shrink: when it alone leaves the SESOI out of reach, the answer is SEEDS_CAP.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if sd_seeds is not None:
        sd = sd_upper_bound(sd, sd_seeds)
    alpha = alpha / family
    if not (math.isfinite(sd) and sd >= 0 and sesoi > 0):
        return SEEDS_CAP
    if sd == 0:
        return max(2, at_least)  # noise-free: the fewest seeds that give a t-test at all
    alternative, target = "two-sided", power
    if kind == "equivalence":
        alternative, target = "larger", 1 - (1 - power) / 2

    def enough(n):
        if test_set_se > 0:  # normal approximation with the test set's share of the error added
            z = stats.norm.isf(alpha / 2 if alternative == "two-sided" else alpha) + stats.norm.ppf(target)
            return sesoi / math.sqrt(sd * sd / n + test_set_se**2) >= z
        return _power(sesoi / sd, n, paired=paired, alpha=alpha, alternative=alternative) >= target

    if test_set_se > 0 and not enough(SEEDS_CAP):
        return SEEDS_CAP
    hi = 2  # power rises with n: double until enough, then bisect down to the smallest n
    while not enough(hi):
        if hi >= SEEDS_CAP:
            return SEEDS_CAP
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return max(min(hi, SEEDS_CAP), at_least)


def minimum_detectable_effect(sd, n, *, paired, alpha=ALPHA, power=POWER, ratio=1.0) -> float:
    """Smallest true difference (points) detected with ``power`` at ``n`` seeds per arm.

    ``ratio`` is n_b / n_a for unpaired arms of unequal size.
    """
    if not (math.isfinite(sd) and n >= 2):
        return NAN
    if sd == 0:
        return 0.0
    with quiet():
        if paired:
            d = TTestPower().solve_power(None, nobs=n, alpha=alpha, power=power)
        else:
            d = TTestIndPower().solve_power(None, nobs1=n, alpha=alpha, power=power, ratio=ratio)
    return float(d * sd)

"""Statistics over replicate results: summaries, pairwise tests, power and verdicts.

Pure functions on values in accuracy points (97.3, not 0.973). The protocol:

1. Summarize each arm: mean, sd, median, interquartile mean (IQM), min/max, a 95% BCa
   bootstrap CI of the mean, and the failure rate (diverged, collapsed or crashed runs count against
   the arm and are excluded from every other figure).
2. Compare two arms. When two or more seeds finished in both, the runs are paired on them
   (same data order, same init), so the tests work on per-seed differences; otherwise the
   arms are independent and the t-test is Welch's. A single primary test decides: the t-test for a claimed
   difference, TOST (two one-sided tests) for a claimed equivalence. A rank test, a
   permutation test, P(A>B) and Hedges' g describe the same contrast without leaning on
   normality.
3. Correct the primary p-values with Holm across the sweep's declared comparisons.
4. Judge each claim against its smallest effect size of interest (SESOI, in points):
   a difference is *supported* when its Holm p < alpha and *refuted* when TOST shows the
   arms equal within +-SESOI; an equivalence is *supported* when its Holm TOST p < alpha
   and *refuted* when the CI of the difference lies wholly outside +-SESOI. Anything else
   is *inconclusive*, reported with the seeds per arm that 80% power would take.
5. Calibrate: A/A splits of one arm's replicates show how often the same test rejects
   when nothing differs; a rate well above alpha means the p-values can't be trusted.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import gammaln
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.proportion import proportion_confint
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

ALPHA = 0.05
POWER = 0.8
SEEDS_CAP = 10_000  # planning answer when the effect is too small (or the sd unknown) to plan
KINDS = ("difference", "equivalence")
_NAN = float("nan")


@contextlib.contextmanager
def _quiet():
    """Silence what scipy and numpy say about degenerate data (n < 2, ties, zero sd)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        yield


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


# --- one arm ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmSummary:
    arm: str
    n: int
    n_failed: int
    failure_rate: float  # failed / (n + n_failed)
    mean: float
    sd: float
    median: float
    iqm: float  # mean of the middle 50%: robust to a diverged-but-finite outlier
    min: float
    max: float
    ci_low: float  # BCa bootstrap CI of the mean
    ci_high: float


def summarize(values, *, arm="", failed=0, confidence=0.95, seed=0) -> ArmSummary:
    """Summarize one arm's finite replicate values; ``failed`` counts the runs that failed."""
    v = _finite(values)
    n, total = len(v), len(v) + failed
    rate = failed / total if total else _NAN
    if n == 0:
        return ArmSummary(arm, 0, failed, rate, *[_NAN] * 8)
    mean = float(v.mean())
    lo = hi = mean  # a single value or identical values: the bootstrap has nothing to resample
    if n >= 2 and np.ptp(v) > 0:
        with _quiet():
            res = stats.bootstrap((v,), np.mean, confidence_level=confidence, method="BCa",
                                  rng=seed)
        lo, hi = map(float, res.confidence_interval)
    sd = float(v.std(ddof=1)) if n >= 2 else _NAN
    iqm = float(stats.trim_mean(v, 0.25))
    return ArmSummary(arm, n, failed, rate, mean, sd, float(np.median(v)), iqm,
                      float(v.min()), float(v.max()), lo, hi)


# --- power -----------------------------------------------------------------------------------


def _power(effect, n, *, paired, alpha, alternative="two-sided") -> float:
    with _quiet():
        if paired:  # a one-sample t-test on the per-seed differences
            p = TTestPower().power(effect, nobs=n, alpha=alpha, alternative=alternative)
        else:
            p = TTestIndPower().power(effect, nobs1=n, alpha=alpha, alternative=alternative)
    # statsmodels gives NaN when the noncentrality is huge, i.e. when power is ~1 (n >= 2)
    return 1.0 if math.isnan(p) else float(p)


def seeds_needed(sd, sesoi, *, paired, kind, alpha=ALPHA, power=POWER) -> int:
    """Seeds per arm for ``power`` to detect ``sesoi`` (difference) or show equivalence.

    ``sd`` is of the differences when paired, pooled otherwise. Equivalence uses the usual
    TOST approximation: with a true difference of 0 both one-sided tests must pass, so each
    gets alpha one-sided and power ``1 - (1 - power) / 2``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not (math.isfinite(sd) and sd >= 0 and sesoi > 0):
        return SEEDS_CAP
    if sd == 0:
        return 2  # noise-free: the fewest seeds that give a t-test at all
    alternative, target = "two-sided", power
    if kind == "equivalence":
        alternative, target = "larger", 1 - (1 - power) / 2

    def enough(n):
        return _power(sesoi / sd, n, paired=paired, alpha=alpha, alternative=alternative) >= target

    hi = 2  # power rises with n: double until enough, then bisect down to the smallest n
    while not enough(hi):
        if hi >= SEEDS_CAP:
            return SEEDS_CAP
        hi *= 2
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return min(hi, SEEDS_CAP)


def minimum_detectable_effect(sd, n, *, paired, alpha=ALPHA, power=POWER, ratio=1.0) -> float:
    """Smallest true difference (points) detected with ``power`` at ``n`` seeds per arm.

    ``ratio`` is n_b / n_a for unpaired arms of unequal size.
    """
    if not (math.isfinite(sd) and n >= 2):
        return _NAN
    if sd == 0:
        return 0.0
    with _quiet():
        if paired:
            d = TTestPower().solve_power(None, nobs=n, alpha=alpha, power=power)
        else:
            d = TTestIndPower().solve_power(None, nobs1=n, alpha=alpha, power=power, ratio=ratio)
    return float(d * sd)


# --- two arms --------------------------------------------------------------------------------


def holm(p_values) -> list[float]:
    """Holm-adjusted p-values; NaNs (tests that could not run) stay NaN and don't count."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out.tolist()


def _t_test(a, b, *, paired, axis=-1):
    if paired:
        return stats.ttest_rel(a, b, axis=axis)
    return stats.ttest_ind(a, b, equal_var=False, axis=axis)


def _superiority(a, b, axis=-1):
    """P(A>B) + P(tie)/2 over all (a_i, b_j) pairs, i.e. Mann-Whitney U / (n_a n_b)."""
    a, b = np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1)
    d = a[..., :, None] - b[..., None, :]
    return ((d > 0) + 0.5 * (d == 0)).mean(axis=(-2, -1))


def _hedges_g(a, b, *, paired) -> float:
    """Hedges' g: unpaired, d over the pooled sd; paired, g_av (d over the mean of the sds).

    The bias correction is the exact J(df) = G(df/2) / (sqrt(df/2) G((df-1)/2)), with
    df = n_a + n_b - 2, or n - 1 when paired; it is undefined below df = 2.
    """
    na, nb = len(a), len(b)
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    if paired:
        scale, df = (sa + sb) / 2, na - 1
    else:
        scale, df = np.sqrt(((na - 1) * sa**2 + (nb - 1) * sb**2) / (na + nb - 2)), na + nb - 2
    if df < 2:
        return _NAN
    j = math.exp(gammaln(df / 2) - gammaln((df - 1) / 2)) / math.sqrt(df / 2)
    return float(j * (a.mean() - b.mean()) / scale)  # zero sd: +-inf, or NaN for 0/0


@dataclass(frozen=True)
class PairResult:
    a: str
    b: str
    kind: str  # "difference" | "equivalence"
    paired: bool
    n_a: int
    n_b: int
    difference: float  # mean(a) - mean(b), points
    ci_low: float  # t-interval of the difference (paired t or Welch)
    ci_high: float
    test: str  # "paired t" | "Welch t"
    p_value: float
    rank_test: str  # "Wilcoxon signed-rank" | "Mann-Whitney U"
    rank_p: float
    permutation_p: float  # mean difference; sign flips when paired, relabelling otherwise
    p_superiority: float  # P(A>B) + P(tie)/2
    p_superiority_ci: tuple[float, float]  # percentile bootstrap
    hedges_g: float  # paired: g_av; unpaired: pooled-sd g
    sesoi: float
    tost_p: float  # TOST against (-sesoi, +sesoi)
    sd: float  # sd of the differences when paired, pooled sd otherwise
    mde: float  # minimum detectable effect at the current n, points
    seeds_needed: int  # per arm, for POWER at sesoi (see seeds_needed)
    p_adjusted: float = _NAN  # Holm across the family, of the primary p
    verdict: str = ""  # "supported" | "refuted" | "inconclusive"
    explanation: str = ""

    @property
    def primary_p(self) -> float:
        """The p-value that decides: the t-test for a difference, TOST for an equivalence."""
        return self.p_value if self.kind == "difference" else self.tost_p


def compare(a, b, *, a_name="a", b_name="b", paired: bool, sesoi=0.5, kind="difference",
            alpha=ALPHA, seed=0) -> PairResult:
    """Compare arm ``a`` with arm ``b``; judged as a family of one (see :func:`analyze`)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if paired and len(a) != len(b):
        raise ValueError(f"paired arms need one value per seed in each: {len(a)} != {len(b)}")
    na, nb = len(a), len(b)
    if min(na, nb) >= 2:
        with _quiet():
            stat = _contrast(a, b, paired=paired, sesoi=sesoi, alpha=alpha, seed=seed)
    else:  # no test is defined: leave NaN, so the verdict is inconclusive
        stat = dict.fromkeys(_CONTRAST, _NAN) | {"p_superiority_ci": (_NAN, _NAN)}
        if na and nb:
            stat["difference"] = float(a.mean() - b.mean())
    result = PairResult(
        a_name, b_name, kind, paired, na, nb, test="paired t" if paired else "Welch t",
        rank_test="Wilcoxon signed-rank" if paired else "Mann-Whitney U", sesoi=sesoi,
        seeds_needed=seeds_needed(stat["sd"], sesoi, paired=paired, kind=kind, alpha=alpha),
        **stat)
    return _judge(result, result.primary_p, alpha=alpha, family=1)


_CONTRAST = ("difference", "ci_low", "ci_high", "p_value", "rank_p", "permutation_p",
             "p_superiority", "p_superiority_ci", "hedges_g", "tost_p", "sd", "mde")


def _contrast(a, b, *, paired, sesoi, alpha, seed) -> dict:
    """Every statistic of :class:`PairResult` that depends on the data (n >= 2 per arm)."""
    na, nb = len(a), len(b)
    t = _t_test(a, b, paired=paired)
    ci = t.confidence_interval(1 - alpha)
    if paired:
        rank_p = stats.wilcoxon(a, b).pvalue
        tost_p = ttost_paired(a, b, -sesoi, sesoi)[0]
        sd = (a - b).std(ddof=1)
        mde = minimum_detectable_effect(sd, na, paired=True, alpha=alpha)
    else:
        rank_p = stats.mannwhitneyu(a, b).pvalue
        tost_p = ttost_ind(a, b, -sesoi, sesoi, usevar="unequal")[0]
        sd = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
        mde = minimum_detectable_effect(sd, na, paired=False, alpha=alpha, ratio=nb / na)
    perm = stats.permutation_test(
        (a, b), lambda x, y, axis: x.mean(axis) - y.mean(axis), vectorized=True, rng=seed,
        permutation_type="samples" if paired else "independent")  # samples: sign flips
    sup = stats.bootstrap((a, b), _superiority, paired=paired, vectorized=True, batch=1000,
                          method="percentile", confidence_level=1 - alpha, rng=seed)
    return {
        "difference": float(a.mean() - b.mean()), "ci_low": float(ci.low),
        "ci_high": float(ci.high), "p_value": float(t.pvalue), "rank_p": float(rank_p),
        "permutation_p": float(perm.pvalue), "p_superiority": float(_superiority(a, b)),
        "p_superiority_ci": tuple(map(float, sup.confidence_interval)),
        "hedges_g": _hedges_g(a, b, paired=paired), "tost_p": float(tost_p), "sd": float(sd),
        "mde": mde,
    }


def _fmt_p(p) -> str:
    return "< 0.0001" if p < 1e-4 else f"= {p:.2g}"


def _judge(r: PairResult, p_adjusted, *, alpha, family) -> PairResult:
    """Fill the verdict and its plain-words explanation from the adjusted primary p."""
    p = f"{'Holm ' if family > 1 else ''}p {_fmt_p(p_adjusted)}"
    ci = f"{1 - alpha:.0%} CI {r.ci_low:.2f} to {r.ci_high:.2f}"
    ci = ci if math.isfinite(r.ci_low) else "no CI"
    within = f"within ±{r.sesoi:g} points"
    same = f"{r.a} and {r.b} are equivalent {within} (difference {r.difference:.2f}, {ci}; TOST"
    if r.kind == "difference" and p_adjusted < alpha:
        verb = "beats" if r.difference > 0 else "trails"
        verdict = "supported"
        why = f"{r.a} {verb} {r.b} by {abs(r.difference):.2f} points ({ci}; {r.test}, {p})"
        if abs(r.difference) < r.sesoi:  # real, but is it big enough to matter? say so
            why += f", though by less than the ±{r.sesoi:g}-point smallest effect of interest"
    elif r.kind == "difference" and r.tost_p < alpha:
        verdict, why = "refuted", f"{same} p {_fmt_p(r.tost_p)})"
    elif r.kind == "equivalence" and p_adjusted < alpha:
        verdict, why = "supported", f"{same}, {p})"
    elif r.kind == "equivalence" and (r.ci_low > r.sesoi or r.ci_high < -r.sesoi):
        verdict, why = "refuted", f"{r.a} and {r.b} differ by more than ±{r.sesoi:g} points ({ci})"
    else:
        name = r.test if r.kind == "difference" else "TOST"
        test = f"{name}, {p}" if math.isfinite(p_adjusted) else "no test"
        verdict = "inconclusive"
        why = (f"{r.a} minus {r.b} is {r.difference:.2f} points ({ci}; {test}), showing neither "
               f"a difference nor equivalence {within}")
    explanation = f"{why}: {verdict}"
    if verdict == "inconclusive" and not math.isfinite(r.sd):
        explanation += "; at least 2 finished seeds per arm are needed to estimate how many would settle it"
    elif verdict == "inconclusive" and r.seeds_needed >= SEEDS_CAP:
        explanation += f"; more than {SEEDS_CAP} seeds per arm would be needed: the seeds spread too widely for this SESOI"
    elif verdict == "inconclusive":  # always say what it would take
        explanation += f"; about {r.seeds_needed} seeds per arm would settle it"
    return replace(r, p_adjusted=float(p_adjusted), verdict=verdict, explanation=explanation + ".")


# --- a sweep ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    metric: str
    alpha: float
    arms: list[ArmSummary]
    pairs: list[PairResult]
    aa: dict[str, float] = field(default_factory=dict)  # A/A false-positive rate per arm


def _arm_values(final: pd.DataFrame, arm) -> pd.Series:
    """One arm's values by seed, NaN where the run failed."""
    rows = final[final["arm"] == arm]
    if rows["seed"].duplicated().any():
        raise ValueError(f"arm {arm!r} has more than one row for a seed")
    bad = rows["failed"].astype(bool) | ~np.isfinite(rows["value"].astype(float))
    return rows["value"].astype(float).where(~bad).set_axis(rows["seed"].to_numpy())


def analyze(final: pd.DataFrame, comparisons, *, metric="test_accuracy", alpha=ALPHA,
            seed=0) -> Analysis:
    """Summarize every arm, run every comparison, Holm across them, then judge.

    ``final`` has one row per replicate run: ``arm``, ``seed``, ``value`` (points, NaN when
    failed) and ``failed``. Two arms are paired on the seeds both finished, when there are two
    or more such seeds.
    """
    values = {arm: _arm_values(final, arm) for arm in pd.unique(final["arm"])}
    arms = [summarize(v.dropna(), arm=str(arm), failed=int(v.isna().sum()), seed=seed)
            for arm, v in values.items()]
    empty = pd.Series(dtype=float)
    pairs = []
    for c in comparisons:
        va, vb = values.get(c.a, empty), values.get(c.b, empty)
        # Align by seed; a seed that failed in either arm drops out of both.
        both = pd.concat([va, vb], axis=1, join="inner").dropna()
        paired = len(both) >= 2  # fewer shared seeds than that: test the arms as independent
        xa, xb = (both.iloc[:, 0], both.iloc[:, 1]) if paired else (va.dropna(), vb.dropna())
        pairs.append(compare(xa, xb, a_name=c.a, b_name=c.b, paired=paired, sesoi=c.sesoi,
                             kind=c.kind, alpha=alpha, seed=seed))
    adjusted = holm([p.primary_p for p in pairs])
    pairs = [_judge(p, q, alpha=alpha, family=len(pairs)) for p, q in zip(pairs, adjusted)]
    # Calibrate Welch's test on disjoint halves of each arm: an exact A/A, nothing differs.
    aa = {str(arm): aa_false_positive_rate(v.dropna(), v.notna().sum() // 2, alpha=alpha,
                                           seed=seed)[0]
          for arm, v in values.items() if v.notna().sum() >= 4}
    return Analysis(metric, alpha, arms, pairs, aa)


# --- calibration -----------------------------------------------------------------------------


def _rejection_rate(values, n_per_arm, p_values: Callable, *, draws, alpha, seed):
    """Rate of p < alpha over ``draws`` pseudo-arm pairs split from ``values``, Wilson CI.

    ``p_values(x, y)`` tests each row of two (draws, n_per_arm) arrays.
    """
    v, n = _finite(values), int(n_per_arm)
    rng = np.random.default_rng(seed)
    if len(v) >= 2 * n:  # disjoint halves: the pseudo-arms are exchangeable, as under H0
        idx = rng.random((draws, len(v))).argsort(axis=1)[:, : 2 * n]
        x, y = v[idx[:, :n]], v[idx[:, n:]]
    else:  # too few values: draw both pseudo-arms from the empirical distribution
        x, y = rng.choice(v, (draws, n)), rng.choice(v, (draws, n))
    with _quiet():
        hits = int(np.sum(np.asarray(p_values(x, y)) < alpha))  # NaN (constant draws): no
    lo, hi = proportion_confint(hits, draws, alpha=0.05, method="wilson")
    return hits / draws, float(lo), float(hi)


def aa_false_positive_rate(values, n_per_arm, *, draws=2000, alpha=ALPHA, seed=0,
                           paired=False) -> tuple[float, float, float]:
    """A/A calibration: how often the report's difference test rejects on one arm split in two.

    Returns (rate of p < alpha, Wilson 95% CI low, high). A calibrated test gives ~alpha.
    """
    def p_values(x, y):
        return _t_test(x, y, paired=paired, axis=1).pvalue

    return _rejection_rate(values, n_per_arm, p_values, draws=draws, alpha=alpha, seed=seed)


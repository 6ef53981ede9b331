"""What describes a comparison besides the test that decides it: a rank test and a
permutation test, same-seed P(A>B) with a Wilson interval, Hedges' g, and Fisher's exact test of
the failure rates. Paired by seed when the evidence is (every statistic on the per-seed contrast);
otherwise over the two arms' runs."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from bnsearch.stats.evidence import WORST, Evidence, signed_rank_p
from bnsearch.stats.summaries import NAN, quiet


def describe(values: np.ndarray, ran: np.ndarray, weights: np.ndarray, ev: Evidence) -> dict:
    """``values``/``ran``: seeds x the comparison's arms, as :func:`contrast_evidence` takes them."""
    out = {"rank_test": "-", "rank_p": NAN, "permutation_p": NAN, "p_superiority": NAN,
           "p_superiority_ci": (NAN, NAN), "hedges_g": NAN, "sd": NAN, "failure_p": NAN}
    w = np.asarray(weights, dtype=float)
    done = ran & np.isfinite(values)
    two_arms = len(w) == 2
    worst = np.where(done, values, WORST)  # a failure loses to every run that finished
    with quiet():
        if two_arms and len(values):
            failures = (ran & ~done).sum(axis=0)
            out["failure_p"] = float(stats.fisher_exact([failures, ran.sum(axis=0) - failures])[1])
        if ev.paired:
            d = values[done.all(axis=1)] @ w
            out["sd"] = float(d.std(ddof=1))
            out["rank_test"], out["rank_p"] = "Wilcoxon signed-rank", signed_rank_p(d)
            out["permutation_p"] = float(stats.permutation_test((d,), np.mean, permutation_type="samples", rng=0).pvalue)
            complete = values[done.all(axis=1)]
            # two arms: g_av, over the mean of the arms' sds; an interaction: g_z, over the contrast's sd
            scale = complete.std(axis=0, ddof=1).mean() if two_arms else d.std(ddof=1)
            out["hedges_g"] = hedges_j(len(d) - 1) * float(d.mean()) / scale if scale > 0 else NAN
            wins_on = worst[ran.all(axis=1)] @ w if two_arms else d  # same-seed wins on every seed both ran
            wins = float(((wins_on > 0) + 0.5 * (wins_on == 0)).sum())
            out["p_superiority"] = wins / len(wins_on)
            out["p_superiority_ci"] = tuple(map(float, proportion_confint(wins, len(wins_on), method="wilson")))
        elif two_arms and len(values):
            first, second = (0, 1) if w[0] > 0 else (1, 0)
            pairs = worst[ran[:, first], first][:, None] - worst[ran[:, second], second][None, :]
            out["p_superiority"] = float(((pairs > 0) + 0.5 * (pairs == 0)).mean()) if pairs.size else NAN
            x, y = values[done[:, first], first], values[done[:, second], second]
            if min(len(x), len(y)) >= 2:
                nx, ny = len(x), len(y)
                pooled = math.sqrt(((nx - 1) * x.var(ddof=1) + (ny - 1) * y.var(ddof=1)) / (nx + ny - 2))
                out["sd"] = pooled
                out["rank_test"], out["rank_p"] = "Mann-Whitney U", float(stats.mannwhitneyu(x, y).pvalue)
                out["permutation_p"] = float(stats.permutation_test(
                    (x, y), lambda p, q, axis: p.mean(axis) - q.mean(axis), vectorized=True, rng=0).pvalue)
                out["hedges_g"] = hedges_j(nx + ny - 2) * float(x.mean() - y.mean()) / pooled if pooled > 0 else NAN
    if ev.zero_test.startswith("worst-rank"):
        out["rank_test"], out["rank_p"] = ev.zero_test, ev.p_zero
    return out


def hedges_j(df: int) -> float:
    """Hedges' exact small-sample correction J(df); undefined below df = 2."""
    if df < 2:
        return NAN
    return math.exp(math.lgamma(df / 2) - math.lgamma((df - 1) / 2)) / math.sqrt(df / 2)

"""Tuning-budget curves (Dodge et al. 2019, "Show your work"): the expected best validation
score of an arm after k search trials, for k = 1..N, from the N trials the search ran.

E[max of k draws] over the empirical distribution of the trials' scores v_(1) <= ... <= v_(N):
sum_i v_(i) [(i/N)^k - ((i-1)/N)^k], with the band ± the sd of that maximum. An arm whose
curve rises late is harder to tune: a verdict at one budget may not hold at another. The trials
are treated as draws from the arm's search space; a model-based sampler (TPE) and early stopping
make them less alike than that, so the curve describes this search rather than random search.
"""

from __future__ import annotations

import numpy as np

from bnsearch.stats.summaries import finite


def expected_best(scores, *, maximize=True) -> tuple[np.ndarray, np.ndarray]:
    """(expected best score after k trials, its sd) for k = 1..N."""
    v = np.sort(finite(scores))
    if not maximize:
        v = -v[::-1]
    n = len(v)
    if n == 0:
        return np.array([]), np.array([])
    cdf = np.arange(n + 1) / n
    mean, second = np.empty(n), np.empty(n)
    for start in range(0, n, 256):  # rows of k at a time: an n x n matrix would not fit at 100,000 trials
        k = np.arange(start + 1, min(start + 256, n) + 1)[:, None]
        weights = cdf[1:] ** k - cdf[:-1] ** k  # P(the max of k draws is v_(i)), one row per k
        mean[start:start + len(k)], second[start:start + len(k)] = weights @ v, weights @ v**2
    sd = np.sqrt(np.maximum(second - mean**2, 0.0))
    return (mean if maximize else -mean), sd

"""Group-sequential design: looks at planned seed counts, Lan-DeMets alpha spending.

A plan looks at the results after ``looks[0]``, ``looks[1]``, ... seeds per arm. At look k a
claim tested at one-sided level ``a`` is decided when its one-sided p falls below the nominal
level the spending function allows there: over all looks the chance of a false decision stays
``a``, however the data fall (Lan & DeMets 1983). The boundaries come from the joint normal law
of the test statistics across looks, corr(Z_i, Z_j) = sqrt(t_i / t_j) with t the information
fraction n_k / n_K, integrated with scipy's multivariate normal CDF. p-values from t-tests at
few seeds are mapped onto these boundaries through their p-value, the usual small-sample
approximation. Futility bounds are non-binding: stopping for futility can only lower the error.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

SPENDING = ("obrien_fleming", "pocock")


def spent(a: float, t: float, spending: str = "obrien_fleming") -> float:
    """One-sided alpha spent by information fraction ``t`` (Lan-DeMets forms)."""
    if t <= 0:
        return 0.0
    if spending == "obrien_fleming":
        return float(2 * stats.norm.sf(stats.norm.isf(a / 2) / math.sqrt(min(t, 1.0))))
    if spending == "pocock":
        return float(a * math.log(1 + (math.e - 1) * min(t, 1.0)))
    raise ValueError(f"spending must be one of {SPENDING}, not {spending!r}")


@functools.lru_cache(maxsize=None)
def nominal_levels(a: float, fractions: tuple[float, ...], spending: str = "obrien_fleming") -> tuple[float, ...]:
    """Per look, the one-sided nominal level under which a one-sided p decides the claim."""
    t = np.asarray(fractions, dtype=float)
    cov = np.sqrt(np.minimum.outer(t, t) / np.maximum.outer(t, t))
    bounds: list[float] = []
    for k in range(len(t)):
        target = spent(a, t[k], spending) - spent(a, t[k - 1], spending) if k else spent(a, t[0], spending)
        if k == 0:
            bounds.append(float(stats.norm.isf(target)))
            continue
        law = stats.multivariate_normal(np.zeros(k + 1), cov[: k + 1, : k + 1])
        earlier = stats.multivariate_normal(np.zeros(k), cov[:k, :k]).cdf(bounds, rng=0) if k > 1 else stats.norm.cdf(bounds[0])

        def excess(c):  # P(no crossing before k, crossing at k) - what this look may spend
            return earlier - law.cdf([*bounds, c], rng=0) - target

        bounds.append(float(optimize.brentq(excess, 0.0, 12.0, xtol=1e-6)))
    return tuple(float(stats.norm.sf(c)) for c in bounds)


@dataclass(frozen=True)
class Plan:
    """Seeds per arm at each look; the last look is the plan's whole seed budget."""

    looks: tuple[int, ...]
    spending: str = "obrien_fleming"

    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.looks[-1] for n in self.looks)

    def levels(self, a: float) -> tuple[float, ...]:
        """One-sided nominal levels per look for a claim given one-sided level ``a``."""
        if len(self.looks) == 1:
            return (a,)
        return nominal_levels(round(a, 12), self.fractions(), self.spending)

    def look_at(self, seeds: int) -> int:
        """Index of the last look that ``seeds`` seeds per arm reach (-1: none yet)."""
        return sum(n <= seeds for n in self.looks) - 1


def conditional_power(z: float, t: float, level: float) -> float:
    """Chance that a one-sided statistic now at ``z`` (information fraction ``t``) ends above the
    final boundary for one-sided ``level``, if the effect stays what it is now (current trend)."""
    if not (math.isfinite(z) and 0 < t < 1):
        return float("nan")
    c = stats.norm.isf(level)
    drift = z / math.sqrt(t)  # the effect per unit information, estimated from the data so far
    b = z * math.sqrt(t) + drift * (1 - t)  # where the Brownian motion is expected to end
    return float(stats.norm.sf((c - b) / math.sqrt(1 - t)))

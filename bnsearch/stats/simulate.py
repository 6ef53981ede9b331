"""Operating characteristics of the verdict procedure, measured by running it on simulated sweeps.

Each simulated sweep has a base arm and one arm per effect; every arm shares a seed effect (as
seeds do when they fix data order and initialisation), so the per-seed differences to the base
are normal with sd ``sd`` around the arm's effect. The comparisons (each arm against the base)
go through :func:`bnsearch.stats.verdicts.decide` with the plan, family and tests the report uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnsearch.spec import Comparison
from bnsearch.stats.summaries import ALPHA
from bnsearch.stats.sequential import Plan
from bnsearch.stats.verdicts import CLAIMS, Data, decide


@dataclass(frozen=True)
class Characteristics:
    draws: int
    any_supported: float  # share of sweeps with at least one "supported" verdict
    supported: tuple[float, ...]  # per comparison
    refuted: tuple[float, ...]
    mean_seeds: float  # seeds per arm the sweep ran before the plan stopped


def simulate(effects, sd: float, plan: Plan, *, kind="difference", sesoi=0.5, alpha=ALPHA, draws=2000,
             seed=0) -> Characteristics:
    rng = np.random.default_rng(seed)
    arms = ["base", *(f"arm{i}" for i in range(len(effects)))]
    comparisons = [Comparison(arm, "base", kind, sesoi) for arm in arms[1:]]
    n = plan.looks[-1]
    supported = np.zeros((draws, len(effects)), dtype=bool)
    refuted = np.zeros_like(supported)
    seeds = np.zeros(draws)
    shift = np.concatenate([[0.0], np.asarray(effects, dtype=float)])
    for i in range(draws):
        values = 97 + rng.normal(0, 0.5, (n, 1)) + shift + rng.normal(0, sd / np.sqrt(2), (n, len(arms)))
        data = Data(np.arange(n), arms, values, np.ones(values.shape, dtype=bool))
        steps = [decide(c, data, plan, alpha, len(comparisons)) for c in comparisons]
        verdicts = [CLAIMS[kind].get(s[-1].decided, "") for s in steps]
        supported[i], refuted[i] = [v == "supported" for v in verdicts], [v == "refuted" for v in verdicts]
        closed = all(s[-1].decided or s[-1].futile for s in steps)
        seeds[i] = max(s[-1].seeds for s in steps) if closed else n
    return Characteristics(draws, float(supported.any(axis=1).mean()), tuple(supported.mean(axis=0)),
                           tuple(refuted.mean(axis=0)), float(seeds.mean()))

"""Spec distributions → an Optuna define-by-run space and sampler. The only Optuna import.

Each arm gets its own space (BN parameters only where the arm has BN) and its own sampler,
so every arm is tuned by its own study with the same budget.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna

from bnsearch.spec import Choice, ComplementLogUniform, Distribution, IntUniform, LogUniform, Uniform


class SearchSpace:
    """A picklable define-by-run function: suggests every dimension, returns the derived values.

    ``ComplementLogUniform`` dimensions are suggested as ``one_minus_<name>`` on a log scale
    and returned as ``<name>``, so both show in the trial's config.
    """

    def __init__(self, dims: Mapping[str, Distribution]):
        self.dims = dict(dims)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        derived = {}
        for name, dist in self.dims.items():
            if isinstance(dist, Choice):
                trial.suggest_categorical(name, list(dist.values))
            elif isinstance(dist, LogUniform):
                trial.suggest_float(name, dist.low, dist.high, log=True)
            elif isinstance(dist, Uniform):
                trial.suggest_float(name, dist.low, dist.high)
            elif isinstance(dist, IntUniform):
                trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, ComplementLogUniform):
                complement = trial.suggest_float(f"one_minus_{name}", 1 - dist.high, 1 - dist.low, log=True)
                derived[name] = 1 - complement
            else:
                raise TypeError(f"{name}: unsupported distribution {dist!r}")
        return derived


def make_sampler(kind: str, dims: Mapping[str, Distribution], seed: int, trials: int) -> optuna.samplers.BaseSampler:
    """``tpe`` (default; multivariate, group-aware, constant liar for parallel trials),
    ``random``, or ``grid`` (Choice dimensions only, cycled in a seeded order)."""
    if kind == "tpe":
        with warnings.catch_warnings():  # `group` is marked experimental, stable since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed,
                n_startup_trials=max(2, min(10, trials // 3)),
                multivariate=True,
                group=True,
                constant_liar=True,
            )
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return _AskTellGridSampler({n: list(d.values) for n, d in dims.items()}, seed=seed)
    raise ValueError(f"unknown sampler {kind!r}")


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler calls ``study.stop()`` once the grid is covered, which is only legal inside
    ``study.optimize``; under Ray's ask/tell it raises. Tune counts the trials instead (a grid
    smaller than the budget is revisited)."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def quiet() -> None:
    """Optuna logs every trial at INFO; Tune already shows progress."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

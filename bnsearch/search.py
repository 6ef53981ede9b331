"""Spec distributions → an Optuna define-by-run space and sampler. The only Optuna import.

Each arm gets its own space (BN parameters only where the arm has BN) and its own sampler,
so every arm is tuned by its own study with the same budget.
"""

from __future__ import annotations

import random
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


IMPORTANCE_TRIALS = 500


def param_importances(configs: list[Mapping[str, Any]], values: list[float], seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each varying hyperparameter for ``values`` (one per trial), as
    Optuna computes it; {} when there is too little to go on.

    Distributions are rebuilt from the observed values: numbers on a log scale when they are
    positive and span a decade or more, anything else as categories. Past
    ``IMPORTANCE_TRIALS`` trials, fANOVA sees that many drawn at random with ``seed``: its
    forests cost seconds per thousand trials, and the estimate is settled long before.
    """
    if len(configs) > IMPORTANCE_TRIALS:
        chosen = random.Random(seed).sample(range(len(configs)), IMPORTANCE_TRIALS)
        configs, values = [configs[i] for i in chosen], [values[i] for i in chosen]
    names = sorted({k for c in configs for k in c})
    distributions = {}
    for name in names:
        seen = [c[name] for c in configs if name in c]
        if len(seen) < len(configs) or len({repr(v) for v in seen}) < 2:
            continue  # constant, or absent from some trials
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in seen):
            low, high = float(min(seen)), float(max(seen))
            distributions[name] = optuna.distributions.FloatDistribution(low, high, log=low > 0 and high / low >= 10)
        else:
            distributions[name] = optuna.distributions.CategoricalDistribution(sorted({json_safe(v) for v in seen}, key=repr))
    if not distributions or len(values) < 3 or len(set(values)) < 2:
        return {}
    quiet()
    study = optuna.create_study()
    for config, value in zip(configs, values):
        params = {n: (float(config[n]) if isinstance(d, optuna.distributions.FloatDistribution) else json_safe(config[n]))
                  for n, d in distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=value))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}


def json_safe(value: Any) -> Any:
    """Optuna categories must be None, bool, int, float or str."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)

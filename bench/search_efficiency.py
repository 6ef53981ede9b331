"""Search efficiency on a tabular benchmark: every configuration of a grid is trained once, for
real, with bnsearch's training loop; the strategies are then replayed against those learning
curves, so each can be run over many search seeds at no training cost.

Measure: epochs spent until a configuration within 0.5 points of the grid optimum has been
trained to the full budget, for TPE + ASHA (bnsearch's default: its TPE settings from
bnsearch.search, Optuna's asynchronous successive halving with bnsearch's default grace 1 and
reduction factor 2), random search and the full grid in a random order; median over seeds.
"""

from __future__ import annotations

import itertools
import statistics

import optuna

GRID = {"learning_rate": (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1), "batch_size": (32, 128), "bn_epsilon": (1e-5, 1e-3)}
QUICK_GRID = {"learning_rate": GRID["learning_rate"], "batch_size": (32, 128)}
TOLERANCE = 0.5  # accuracy points
SEEDS = 11


def learning_curves(grid: dict, epochs: int) -> dict[tuple, list[float]]:
    """Validation accuracy (points) per epoch of every grid configuration: MLP 64-64 with BN
    before ReLU, Adam, MNIST-1D (5,000 samples), seed 0."""
    from bnsearch import train

    train.setup_tensorflow(2)
    names = list(grid)
    curves = {}
    for values in itertools.product(*grid.values()):
        config = {"hidden_sizes": (64, 64), "bn_placement": "before", "optimizer": "adam", "seed": 0, **dict(zip(names, values))}
        seen = []
        train.run(config, model="mlp", dataset="mnist1d", dataset_args={}, max_epochs=epochs,
                  report=lambda metrics, checkpoint: seen.append(100 * metrics["val_accuracy"]))
        curves[values] = seen
    return curves


def replay(study: optuna.Study, curves: dict, names: list[str], grid: dict, epochs: int, good: float, max_trials: int) -> int | None:
    """Ask/tell over the table until a full-budget trial is good; the epochs it took (None if
    never within ``max_trials``)."""
    spent = 0
    for _ in range(max_trials):
        trial = study.ask({n: optuna.distributions.CategoricalDistribution(grid[n]) for n in names})
        curve = curves[tuple(trial.params[n] for n in names)]
        for epoch, value in enumerate(curve, start=1):
            spent += 1
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, curve[-1])
            if curve[-1] >= good:
                return spent
    return None


def run(quick: bool = False) -> dict:
    from bnsearch import search
    from bnsearch.spec import Choice

    grid, epochs = (QUICK_GRID, 4) if quick else (GRID, 8)
    names = list(grid)
    curves = learning_curves(grid, epochs)
    optimum = max(c[-1] for c in curves.values())
    good = optimum - TOLERANCE
    grid_epochs = len(curves) * epochs
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def tpe_asha(seed):
        sampler = search.make_sampler("tpe", {n: Choice(v) for n, v in grid.items()}, seed, len(curves))
        return optuna.create_study(direction="maximize", sampler=sampler,
                                   pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))

    strategies = {
        "tpe+asha": tpe_asha,
        "random": lambda seed: optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed),
                                                   pruner=optuna.pruners.NopPruner()),
        "grid": lambda seed: optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner(),
                                                 sampler=search.make_sampler("grid", {n: Choice(v) for n, v in grid.items()}, seed, len(curves))),
    }
    out = {}
    for name, make in strategies.items():
        spent = [replay(make(seed), curves, names, grid, epochs, good, max_trials=2 * len(curves)) for seed in range(SEEDS)]
        found = [s for s in spent if s is not None]
        median = statistics.median([s if s is not None else 2 * grid_epochs for s in spent])
        out[name] = {"median_epochs": median, "median_fraction": median / grid_epochs, "found": f"{len(found)}/{SEEDS}"}
    return {"configurations": len(curves), "epochs": epochs, "grid_epochs": grid_epochs, "optimum": optimum,
            "within": sum(c[-1] >= good for c in curves.values()), "strategies": out}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))

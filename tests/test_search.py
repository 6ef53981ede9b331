import math

import numpy as np
import optuna

from bnsearch import search
from bnsearch.spec import Choice, ComplementLogUniform, IntUniform, LogUniform, Uniform


def sample(dims, n, sampler="random"):
    study = optuna.create_study(sampler=search.make_sampler(sampler, dims, seed=0, trials=n))
    space, out = search.SearchSpace(dims), []
    for _ in range(n):
        trial = study.ask()
        derived = space(trial)
        out.append({**trial.params, **derived})
        study.tell(trial, 0.0)
    return out


def test_every_distribution_stays_in_its_bounds():
    dims = {"learning_rate": LogUniform(1e-4, 1e-1), "x": Uniform(0.2, 0.4), "batch_size": IntUniform(8, 64, log=True),
            "optimizer": Choice(("sgd", "adam")), "bn_momentum": ComplementLogUniform(0.9, 0.999)}
    for p in sample(dims, 50):
        assert 1e-4 <= p["learning_rate"] <= 1e-1 and 0.2 <= p["x"] <= 0.4 and 8 <= p["batch_size"] <= 64
        assert p["optimizer"] in ("sgd", "adam")
        assert 0.9 <= p["bn_momentum"] <= 0.999 and math.isclose(p["one_minus_bn_momentum"], 1 - p["bn_momentum"])


def test_momentum_is_searched_on_a_log_scale_of_its_complement():
    values = [p["bn_momentum"] for p in sample({"bn_momentum": ComplementLogUniform(0.9, 0.999)}, 400)]
    # log10(1 - m) is uniform on [-3, -1]: a third of draws above 0.99 would fail on a linear scale
    share_above = sum(v > 0.99 for v in values) / len(values)
    assert 0.4 < share_above < 0.6
    assert abs(sum(math.log10(1 - v) for v in values) / len(values) + 2) < 0.1


def test_grid_covers_every_combination():
    dims = {"learning_rate": Choice((0.1, 0.01)), "batch_size": Choice((32, 64, 128))}
    drawn = sample(dims, 8, "grid")  # a budget beyond the grid revisits it instead of failing
    assert len({(p["learning_rate"], p["batch_size"]) for p in drawn[:6]}) == 6


def test_tpe_is_seeded():
    dims = {"learning_rate": LogUniform(1e-4, 1e-1)}
    assert sample(dims, 5, "tpe") == sample(dims, 5, "tpe")


def test_importance_finds_the_hyperparameter_that_matters():
    rng = np.random.default_rng(0)
    configs = [{"learning_rate": float(10 ** rng.uniform(-4, -1)), "batch_size": int(rng.choice([32, 128])), "sizes": [32, 32]}
               for _ in range(30)]
    values = [-abs(np.log10(c["learning_rate"]) + 2.5) + rng.normal(0, 0.01) for c in configs]  # only lr matters
    importance = search.param_importances(configs, values)
    assert set(importance) == {"learning_rate", "batch_size"}  # the constant one is left out
    assert importance["learning_rate"] > 0.8 > importance["batch_size"]
    assert search.param_importances(configs[:2], values[:2]) == {}

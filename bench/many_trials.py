"""A thousand tiny trials through bnsearch's own Tune path, MLflow tracking on: what each trial
costs beyond its training, and what a searcher's suggestion costs as a study grows.

    python bench/many_trials.py [--trials 1000] [--untracked] [--tune-alone] [--tpe-at 100 1000 5000]

The sweep: the registered MLP (one hidden layer of 16; BN before ReLU or none) on scikit-learn's
digits, one epoch per trial, random search over learning rate and batch size with the
project's ArmSearcher (2 arms: none, before), no early stopping, one CPU per trial, local Ray,
a local SQLite store. Work = Σ the trials' training time (``train_time_s``); floor = work / slots;
overhead per trial = (wall x slots - work) / trials, in slot-seconds: everything but the
training steps (Ray and TensorFlow start-up, building and evaluating each model, MLflow, Tune).
Ray's release test, for scale: 10,000 one-second trials on 16 CPUs in 715 s against a floor of
625 s, 0.14 slot-seconds per trial (its limit: 800 s, 0.28).

``--untracked`` runs the same trials again without MLflow, so that its share shows;
``--tune-alone`` runs as many trials that only report, through Tune as bnsearch runs it (local
Ray, reused actors, the JSON logger only, 2 slots): the floor of Tune's own cost per trial;
``--tpe-at`` times Optuna's TPE sampler (as bnsearch configures it) per suggestion in studies
that hold that many finished trials already.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SLOTS = 2


def tiny_sweep(trials: int):
    from bnsearch.spec import Budget, Choice, LogUniform, Resources, Sweep

    return Sweep(name="many", model="mlp", dataset="digits",
                 scientific={"bn_placement": ("none", "before")}, model_args={"hidden_sizes": (16,)},
                 nuisance={"learning_rate": LogUniform(3e-3, 3e-2), "batch_size": Choice((32, 64))},
                 fixed={"optimizer": "adam"},
                 budget=Budget(trials_per_arm=trials // 2, max_epochs=1, early_stopping=False, sampler="random",
                               max_concurrent_trials=SLOTS, seeds=2, looks=()),
                 resources=Resources(cpu=1))


def run_trials(trials: int, track: bool) -> dict:
    import ray

    from bnsearch import tracking, trainable

    sweep = tiny_sweep(trials)
    with tempfile.TemporaryDirectory(prefix="bnsearch-many-") as storage:
        uri = tracking.default_tracking_uri(storage)
        tracker = tracking.SweepTracker(uri, "many", artifact_root=tracking.local_artifact_root(uri, storage))
        tracker.start_sweep("many", params={}, tags={}, artifacts={})
        start = time.perf_counter()  # Ray's start-up included: a user pays it too
        outcome = trainable.run_phase(sweep, "search", tracker=tracker, sweep_id="many", storage=storage, track=track,
                                      log_file=Path(storage) / "tune.log")
        wall = time.perf_counter() - start
        runs = len(tracker.child_runs()) if track else 0
        ray.shutdown()
    if not outcome.ok or len(outcome.trials) != trials:
        raise RuntimeError(f"{len(outcome.trials)} of {trials} trials ran, ok={outcome.ok}")
    work = sum(t["train_time_s"] for t in outcome.trials)
    return {"trials": trials, "tracked": track, "mlflow_runs": runs, "wall_s": wall, "work_s": work, "floor_s": work / SLOTS,
            "overhead_slot_s_per_trial": (wall * SLOTS - work) / trials}


def tune_alone(trials: int) -> dict:
    """``trials`` trials that train nothing and report once, through Tune as bnsearch runs it."""
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    def report_once(config):
        tune.report({"accuracy": config["x"]})

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    with tempfile.TemporaryDirectory(prefix="bnsearch-tune-alone-") as storage:
        start = time.perf_counter()  # Ray's start-up included, as in run_trials
        tuner = tune.Tuner(
            tune.with_resources(report_once, {"cpu": 1}), param_space={"x": tune.uniform(0, 1)},
            tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=SLOTS, reuse_actors=True),
            run_config=tune.RunConfig(name="alone", storage_path=storage, callbacks=[JsonLoggerCallback()], verbose=0))
        grid = tuner.fit()
        wall = time.perf_counter() - start
        ray.shutdown()
    if grid.errors or len(grid) != trials:
        raise RuntimeError(f"{len(grid)} of {trials} trials ran, {len(grid.errors)} errors")
    return {"trials": trials, "wall_s": wall, "overhead_slot_s_per_trial": wall * SLOTS / trials}


def tpe_cost(finished: int, asks: int = 20) -> float:
    """Seconds per TPE suggestion (as bnsearch configures the sampler) in a study that holds
    ``finished`` trials already."""
    import math
    import random

    import optuna

    from bnsearch import search

    dims = tiny_sweep(2).resolve("before").nuisance
    space, rng = search.SearchSpace(dims), random.Random(0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=search.make_sampler("tpe", dims, 0, finished + asks), direction="maximize")
    first = study.ask()  # its distributions, for the history added without running the sampler
    space(first)
    study.tell(first, rng.random())
    for _ in range(finished - 1):
        params = {name: (rng.choice(d.choices) if isinstance(d, optuna.distributions.CategoricalDistribution)
                         else 10 ** rng.uniform(*map(math.log10, (d.low, d.high))))
                  for name, d in first.distributions.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=first.distributions, value=rng.random()))
    start = time.perf_counter()
    for _ in range(asks):
        trial = study.ask()
        space(trial)
        study.tell(trial, rng.random())
    return (time.perf_counter() - start) / asks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--untracked", action="store_true", help="also run them without MLflow")
    parser.add_argument("--tune-alone", action="store_true", help="also run as many trials that only report, through Tune")
    parser.add_argument("--tpe-at", type=int, nargs="*", default=[100, 1000])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    figures = {"tracked": run_trials(args.trials, track=True)}
    if args.untracked:
        figures["untracked"] = run_trials(args.trials, track=False)
    runs = dict(figures)
    if args.tune_alone:
        figures["tune_alone"] = tune_alone(args.trials)
    figures["tpe_s_per_suggestion"] = {n: tpe_cost(n) for n in args.tpe_at}
    for name, f in runs.items():
        print(f"{f['trials']} tiny trials, {name}: wall {f['wall_s']:.0f} s, work {f['work_s']:.0f} s, floor {f['floor_s']:.0f} s, "
              f"overhead {f['overhead_slot_s_per_trial']:.3f} slot-s per trial (target <= 0.1; Ray's release test: 0.14)")
    if args.tune_alone:
        f = figures["tune_alone"]
        print(f"{f['trials']} trials through Tune alone (no training, no MLflow): wall {f['wall_s']:.0f} s, "
              f"{f['overhead_slot_s_per_trial']:.3f} slot-s per trial")
    for n, s in figures["tpe_s_per_suggestion"].items():
        print(f"TPE suggestion with {n} finished trials: {1000 * s:.1f} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

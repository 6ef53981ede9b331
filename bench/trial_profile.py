"""Where one tiny trial's time goes, in one process and without Ray: the trial's own code
(its MLflow run, the model, fit, the evaluations) timed part by part.

    python bench/trial_profile.py [--trials 60] [--untracked]

The trials are those of ``bench/many_trials.py`` (the MLP of one hidden layer of 16 on
digits, one epoch, BN before ReLU or none, random learning rate and batch size), run one after
another as a reused worker runs them, each tracked in its own run of a local SQLite store the
way a trial worker tracks it. The parts are timed by wrapping the functions a trial calls (no
profiler: its own cost would swamp milliseconds); the first trials of each arm (building,
tracing) are left out of the per-trial figures. What ``many_trials`` measures beyond this
figure is Tune's: the driver's round trip and scheduling.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WARMUP_TRIALS = 4  # two per arm: the first builds and traces, the second fills the kept-model cache


def timed_parts(totals: dict[str, float]):
    """Wrap what a trial calls so that each call adds its seconds to ``totals[part]``."""
    import keras

    from bnsearch import compiled, data, precise_bn, train
    from bnsearch.tracking import TrialRun

    parts = {
        "model (build, or take a kept one)": (compiled, "model_for"),
        "fit (training steps and the epoch's iterator)": (keras.Model, "fit"),
        "epoch dataset": (data, "ordered_dataset"),
        "evaluation datasets": (train.Evaluator, "__init__"),
        "evaluation (every pass)": (train.Evaluator, "evaluate"),
        "  of which recalibration": (precise_bn.TrainModePass, "statistics"),
        "MLflow: open the run": (TrialRun, "open"),
        "MLflow: queue metrics": (TrialRun, "log_epoch"),
        "MLflow: files": (TrialRun, "log_files"),
        "MLflow: finish (the metrics sent, the history file)": (TrialRun, "finish"),
    }
    for part, (owner, name) in parts.items():
        original = getattr(owner, name)

        def wrapper(*args, _original=original, _part=part, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_part] += time.perf_counter() - started

        setattr(owner, name, functools.wraps(original)(wrapper))
    return list(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--untracked", action="store_true", help="without MLflow")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from many_trials import tiny_sweep

    from bnsearch import data, tracking, train
    from bnsearch.identity import TrialId
    from bnsearch.spec import LogUniform

    sweep = tiny_sweep(args.trials)
    arrays = data.load(sweep.dataset)
    train.setup_tensorflow(1)
    totals: dict[str, float] = defaultdict(float)
    names = timed_parts(totals)
    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="bnsearch-profile-") as storage:
        uri = tracking.default_tracking_uri(storage)
        tracker = tracking.SweepTracker(uri, "profile", artifact_root=tracking.local_artifact_root(uri, storage))
        parent = tracker.start_sweep("profile", params={}, tags={}, artifacts={})
        walls, cpus, train_s = [], [], 0.0
        for index in range(args.trials):
            arm = sweep.resolve(list(sweep.arms())[index % 2])
            config = {**arm.config, "arm": arm.name, "phase": "search", "trial_index": index, "seed": index}
            for name, dist in arm.nuisance.items():
                config[name] = 10 ** rng.uniform(*map(math.log10, (dist.low, dist.high))) if isinstance(dist, LogUniform) \
                    else rng.choice(dist.values)
            if index == WARMUP_TRIALS:
                totals.clear()
            started, cpu_started = time.perf_counter(), time.process_time()
            run = None if args.untracked else tracking.TrialRun.open(
                uri, tracker.experiment_id, parent, TrialId.of("profile", config), params=config, tags=train.environment())

            def report(metrics, checkpoint_dir, run=run):
                if run:
                    run.log_epoch(int(metrics["epoch"]), metrics)
                    if train.ends_run(metrics, sweep.budget.max_epochs):
                        run.finish()

            final = train.run(config, model=sweep.model, dataset=sweep.dataset, dataset_args={}, max_epochs=sweep.budget.max_epochs,
                              report=report, arrays=arrays, keep=run.log_files if run else None)
            if index >= WARMUP_TRIALS:
                walls.append(time.perf_counter() - started)
                cpus.append(time.process_time() - cpu_started)
                train_s += final["train_time_s"]
    measured = len(walls)
    per_trial = sum(walls) / measured
    print(f"{measured} tiny trials after {WARMUP_TRIALS} warm-up ones, {'untracked' if args.untracked else 'tracked'}: "
          f"{1000 * per_trial:.0f} ms per trial ({1000 * sum(cpus) / measured:.0f} ms of CPU, all threads), "
          f"of which training steps {1000 * train_s / measured:.0f} ms")
    for name in names:
        print(f"  {name:<48} {1000 * totals[name] / measured:6.1f} ms")
    accounted = sum(totals[name] for name in names if not name.startswith(" ")) / measured
    print(f"  {'rest (seeding, splits, clear_session)':<48} {1000 * (per_trial - accounted):6.1f} ms")


if __name__ == "__main__":
    main()

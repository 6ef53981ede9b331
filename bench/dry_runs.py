"""The shipped dry runs as a user runs them (`python sweeps/X.py --dry-run`, a fresh process,
a fresh store), timed, with where their slot time went, from what every trial logs.

    python bench/dry_runs.py [sweeps/placement.py sweeps/bn_vs_none.py ...]

efficiency = useful work / (wall time x slots), where useful work is, per trial, its epochs x its
steady epoch time (the median of its epochs after the first; a trial of one epoch: that epoch,
tracing taken off). Everything else is overhead:
- first epochs: tracing the training step and whatever else makes a first epoch slower than a steady one;
- evaluation: validation and test passes, BN diagnostics (``eval_time_s`` less recalibration);
- recalibration: PreciseBN's forward passes (``recalibration_time_s``);
- the rest, measured as what is left of wall x slots: Python, Ray and TensorFlow start-up, the
  dataset, MLflow, Tune's scheduling, idle slots at a phase's end, the report.
ceiling = useful work / (slot time less the rest): the efficiency if nothing outside the trials'
own epochs and evaluations cost anything, the most any scheduler could make of these trials.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's bnsearch, as the subprocesses get it
DRY_RUNS = ("sweeps/placement.py", "sweeps/bn_vs_none.py")


def useful_work(epoch_s: Sequence[float]) -> float:
    """One trial's useful work: its epochs x its steady epoch time, the median of its epochs
    after the first (whose excess is tracing); a trial of one epoch: that epoch."""
    if len(epoch_s) < 2:
        return sum(epoch_s)
    return len(epoch_s) * statistics.median(epoch_s[1:])


def breakdown(table: pd.DataFrame, wall_s: float, slots: int) -> dict:
    """Where ``slots`` x ``wall_s`` went, from the results table's per-epoch timings. ``ceiling``:
    the efficiency left if everything in "rest" cost nothing, what the trials' own work allows."""
    useful = training = tracing = evaluation = recalibration = 0.0
    for _, trial in table.sort_values("epoch").groupby("trial_key"):
        epochs = trial["epoch_time_s"].dropna()
        if epochs.empty:  # a trial that died before its first epoch: nothing useful, all of it in "rest"
            continue
        useful += useful_work(list(epochs))
        training += epochs.sum()
        tracing += trial.get("trace_time_s", pd.Series(dtype=float)).fillna(0).sum()
        recalibrating = trial.get("recalibration_time_s", pd.Series(dtype=float)).fillna(0).sum()
        recalibration += recalibrating
        evaluation += trial["eval_time_s"].fillna(0).sum() - recalibrating
    slot_s = wall_s * slots
    parts = {"useful": useful, "first epochs": training - useful + tracing, "evaluation": evaluation,
             "recalibration": recalibration}
    in_trials = sum(parts.values())
    parts["rest"] = slot_s - in_trials
    return {"wall_s": wall_s, "slots": slots, "trials": int(table["trial_key"].nunique()),
            "epochs": int(table["epoch_time_s"].notna().sum()), "efficiency": useful / slot_s,
            "ceiling": useful / in_trials if in_trials else 0.0, "slot_s": {k: round(v, 1) for k, v in parts.items()}}


def run(sweep_file: str) -> dict:
    """``sweep_file --dry-run`` in a fresh process and store; its wall time and breakdown."""
    from bnsearch.cli import load_sweep

    sweep = load_sweep(str(ROOT / sweep_file), dry_run=True)
    # As phase.slots counts them for a local cluster (the CPUs here), capped by the sweep's own limit.
    slots = max(1, int((os.cpu_count() or 1) // sweep.resources.cpu))
    slots = min(slots, sweep.budget.max_concurrent_trials or slots)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BNSEARCH_STORAGE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this checkout's bnsearch
    with tempfile.TemporaryDirectory(prefix="bnsearch-dry-run-") as storage:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / sweep_file), "--dry-run", "--storage", storage], cwd=storage, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        table = pd.read_parquet(next(Path(storage).rglob("results.parquet")))
    return {"sweep": sweep_file, **breakdown(table, wall, slots)}


def table(figures: list[dict]) -> str:
    lines = []
    for f in figures:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in f["slot_s"].items())
        lines.append(f"{f['sweep']}: efficiency {f['efficiency']:.2f} (ceiling {f['ceiling']:.2f}), wall {f['wall_s']:.0f} s, {f['trials']} trials, "
                     f"{f['epochs']} epochs, {f['slots']} slots; slot time: {parts}")
    return "\n".join(lines)


if __name__ == "__main__":
    figures = [run(path) for path in (sys.argv[1:] or DRY_RUNS)]
    print(table(figures))
    print(json.dumps(figures))

"""A sweep survives what a preemptible GPU cluster does to it, on a real multi-node Ray cluster
started here (``ray.cluster_utils.Cluster``: a head with no CPUs, workers with fake GPUs).
The sweep runs as its own driver process, exactly as a user starts it, with ``--address``.

- a worker node removed mid-sweep: its trials resume from their last checkpoint elsewhere,
  and MLflow ends with exactly one FINISHED child run per trial; meanwhile the experiment state
  on storage never names a deleted checkpoint;
- the driver SIGKILLed mid-sweep: the same command resumes the sweep (Tune restore, searcher
  state), re-runs no finished trial and duplicates no MLflow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bnsearch.cli import load_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "tests" / "sweeps" / "packed_mlp.py"
SWEEP = load_sweep(str(SWEEP_FILE))
SEARCH_TRIALS = len(SWEEP.arms()) * SWEEP.budget.trials_per_arm
REPLICATE_TRIALS = len(SWEEP.arms()) * SWEEP.budget.seeds
EPOCHS = SWEEP.budget.max_epochs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def cluster():
    """Two worker nodes, 2 CPUs and one (fake) GPU each: each packs two 0.5-GPU trials."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    yield cluster, workers
    cluster.shutdown()


def start_sweep(address: str, storage: Path, *args: str) -> subprocess.Popen:
    """The user's command, ``python tests/sweeps/packed_mlp.py --address ...``, as its own process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, str(SWEEP_FILE), "--address", address, "--storage", str(storage), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen, storage: Path, timeout: float = 420) -> str:
    output, _ = process.communicate(timeout=timeout)
    if process.returncode != 0:  # Tune's own output (trial errors, restores) goes to tune.log, not to the console
        errors = [line for log in storage.glob("*/tune.log") for line in log.read_text().splitlines() if "rror" in line]
        pytest.fail(output[-4000:] + "\ntune.log, lines about errors:\n" + "\n".join(errors[-40:]))
    return output


def client(storage: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")


def child_runs(storage: Path) -> list:
    mlflow = client(storage)
    experiment = mlflow.get_experiment_by_name(SWEEP.name)
    if experiment is None:
        return []
    return [r for r in mlflow.search_runs([experiment.experiment_id], max_results=1000) if "trial_key" in r.data.tags]


def wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the sweep ended before {what}:\n{process.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def watching_snapshots(storage: Path):
    """Polls, while the block runs, the newest experiment snapshot on storage (what a killed
    driver's rerun restores from). Yields what it saw: how many snapshots it read, and the
    checkpoints of unfinished trials they named that were gone (such a trial fails its restore,
    with all its retries)."""
    from ray.tune.experiment.trial import Trial

    seen = SimpleNamespace(polls=0, gone=[])
    stop = threading.Event()

    def poll():
        while not stop.wait(0.1):
            snapshots = sorted(storage.glob("*-search/experiment_state-*.json"))
            try:
                trials = json.loads(snapshots[-1].read_text())["trial_data"] if snapshots else None
            except (OSError, ValueError):  # being written
                continue
            for trial_state, metadata in trials or []:
                trial = Trial.from_json_state(trial_state, stub=True)
                trial.restore_run_metadata(metadata)
                if trial.status != Trial.TERMINATED and trial.checkpoint and not os.path.exists(trial.checkpoint.path):
                    seen.gone.append(trial.checkpoint.path)
            seen.polls += trials is not None

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        yield seen
    finally:
        stop.set()
        watcher.join()


def epochs_logged(run) -> int:
    return int(run.data.metrics.get("epoch", 0))


def assert_one_finished_run_per_trial(storage: Path, expected: int) -> list:
    runs = child_runs(storage)
    keys = [r.data.tags["trial_key"] for r in runs]
    assert len(keys) == len(set(keys)) == expected, sorted(keys)
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["status"] for r in runs} == {"finished"}
    mlflow = client(storage)
    for run in runs:  # every epoch is in MLflow, the last one at the full budget
        steps = {m.step for m in mlflow.get_metric_history(run.info.run_id, "val_accuracy")}
        assert steps == set(range(1, EPOCHS + 1)), (run.data.tags["trial_key"], sorted(steps))
    return runs


def assert_the_driver_kept_the_table_mlflow_gives(storage: Path, tmp_path: Path) -> None:
    from bnsearch import results, tracking

    reader = tracking.SweepTracker(f"sqlite:///{storage / 'mlflow.db'}", SWEEP.name, create=False)
    reader.open_sweep()
    rebuilt = results.write(results.from_records(reader.trial_records()), tmp_path / results.FILE)
    (kept,) = storage.glob(f"*/report/{results.FILE}")
    pd.testing.assert_frame_equal(pd.read_parquet(kept), pd.read_parquet(rebuilt))


def tune_results(storage: Path, phase: str) -> dict[str, list[dict]]:
    """Every result row of every trial of ``phase`` in the search's Tune run (which runs the
    first replicate look too), as Tune's own state has it."""
    from ray.tune import ExperimentAnalysis

    (experiment,) = [p for p in storage.iterdir() if p.is_dir() and p.name.endswith("-search")]
    frames = ExperimentAnalysis(str(experiment)).trial_dataframes
    return {trial: frame.to_dict("records") for trial, frame in frames.items() if frame["config/phase"].iloc[0] == phase}


def test_a_worker_node_lost_mid_sweep_costs_only_the_epochs_since_its_trials_last_checkpoints(cluster, tmp_path):
    cluster, workers = cluster
    storage = tmp_path / "results"
    sweep = start_sweep(cluster.address, storage, "--phase", "search")
    with watching_snapshots(storage) as snapshots:
        # Mid-sweep: three running trials with a checkpoint (one per epoch). A node holds two trials,
        # so both nodes hold one; waiting for all four would hinge on how far apart they started.
        wait_until(lambda: sum(r.info.status == "RUNNING" and epochs_logged(r) >= 2 for r in child_runs(storage)) >= 3,
                   sweep, "three trials had checkpointed")
        cluster.remove_node(workers[1])  # from the main thread, as Ray requires
        output = finish(sweep, storage)
    # Tune's own pruning (num_to_keep) left the snapshot naming a deleted checkpoint in about 1%
    # of polls of this sweep: a driver killed then loses those trials.
    assert snapshots.polls > 10 and not snapshots.gone, (snapshots.polls, sorted(set(snapshots.gone)))

    runs = assert_one_finished_run_per_trial(storage, SEARCH_TRIALS)
    assert {r.data.tags["arm"] for r in runs} == set(SWEEP.arms())
    results = tune_results(storage, "search")
    assert len(results) == SEARCH_TRIALS
    # A trial restored from a checkpoint restarts Tune's iterations_since_restore but carries
    # on with the next epoch; one restarted from scratch would repeat epoch 1.
    resumed = [name for name, rows in results.items()
               if any(row["iterations_since_restore"] < row["training_iteration"] for row in rows)]
    assert resumed, output[-3000:]
    for name in resumed:
        epochs = [row["epoch"] for row in results[name]]
        assert epochs[-1] == EPOCHS and 1 not in epochs[1:], (name, epochs)
    print(f"node loss: 3 nodes, 1 worker removed mid-sweep, {len(results)} trials, {len(resumed)} resumed from a "
          f"checkpoint, {len(runs)} MLflow child runs, all FINISHED")


def test_a_killed_driver_resumes_with_the_same_command_without_rerunning_or_duplicating(cluster, tmp_path):
    cluster, _ = cluster
    storage = tmp_path / "results"
    first = start_sweep(cluster.address, storage)
    # Kill the driver once some trials have finished and others are running with checkpoints.
    wait_until(lambda: sum(r.info.status == "FINISHED" for r in child_runs(storage)) >= 2
               and any(r.info.status == "RUNNING" and epochs_logged(r) >= 2 for r in child_runs(storage)),
               first, "two trials had finished and one had checkpointed")
    first.send_signal(signal.SIGKILL)
    first.wait()
    finished_before = {r.data.tags["trial_key"]: r.info.end_time for r in child_runs(storage) if r.info.status == "FINISHED"}
    running_before = sum(r.info.status == "RUNNING" for r in child_runs(storage))

    output = finish(start_sweep(cluster.address, storage), storage)
    assert "resuming sweep" in output

    mlflow = client(storage)
    (experiment,) = [mlflow.get_experiment_by_name(SWEEP.name)]
    parents = [r for r in mlflow.search_runs([experiment.experiment_id]) if r.data.tags.get("role") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one sweep, resumed, not a second one
    runs = assert_one_finished_run_per_trial(storage, SEARCH_TRIALS + REPLICATE_TRIALS)
    ended = {r.data.tags["trial_key"]: r.info.end_time for r in runs}
    assert all(ended[key] == end for key, end in finished_before.items())  # finished trials were not re-run
    # The restored searchers added no trial, search or (chained onto it) replicate.
    assert (len(tune_results(storage, "search")), len(tune_results(storage, "replicate"))) == (SEARCH_TRIALS, REPLICATE_TRIALS)
    assert sorted(r.data.tags["phase"] for r in runs).count("replicate") == REPLICATE_TRIALS
    assert "report.md" in {a.path for a in mlflow.list_artifacts(parents[0].info.run_id)}
    # Old checkpoints went only where no snapshot could name them; at the end each trial, the
    # restored ones included, keeps its latest (a final epoch saves none: at most one).
    for trial in (p for p in storage.glob("*-search/train_trial_*") if p.is_dir()):
        assert len(list(trial.glob("checkpoint_*"))) <= 1, sorted(c.name for c in trial.glob("checkpoint_*"))
    assert_the_driver_kept_the_table_mlflow_gives(storage, tmp_path)  # the restored run's trials reported elsewhere
    print(f"driver kill: SIGKILL with {len(finished_before)} trials finished and {running_before} running; the rerun "
          f"resumed the sweep: {len(runs)} MLflow child runs ({SEARCH_TRIALS} search + {REPLICATE_TRIALS} replicate), "
          f"all FINISHED, one parent run")

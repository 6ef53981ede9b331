"""One trial on a Ray worker: its shared setup, its MLflow identity, the training function,
the dataset loaded once per sweep, and how a trial ended."""

from __future__ import annotations

import contextlib
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID

from bnsearch import data, tracking
from bnsearch.identity import TrialId
from bnsearch.spec import SpecError, Sweep


RUN_ID = "run_id"  # the report's key for the trial's MLflow run; every other key of ours was logged on it
# The keys of a report that are not the trial's metrics: Tune's own and the run id.
NOT_METRICS = {*AUTO_RESULT_KEYS, DONE, TRIAL_ID, EXPERIMENT_TAG, SHOULD_CHECKPOINT, RUN_ID}


def logged_metrics(result: dict) -> dict[str, float]:
    """The metrics of a trial's report to Tune that it logged on its run."""
    return {k: v for k, v in result.items() if k not in NOT_METRICS and not k.startswith("__") and isinstance(v, numbers.Real)}


@dataclass(frozen=True)
class TrialSetup:
    """What every trial of a sweep shares, shipped once through Ray's object store."""

    sweep_id: str
    model: str
    dataset: str
    dataset_args: dict
    max_epochs: int
    cpu: float
    gpu: float
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    run_tags: dict = field(default_factory=dict)
    checkpoint_every_s: float = 30.0
    arrays: Any = None  # an ObjectRef to the loaded dataset, in Ray's object store once per sweep
    track: bool = True  # False only to measure what tracking costs (bench/)

    def run_params(self, config: dict) -> dict:
        """What a trial's MLflow run logs as its params: its configuration, the model and the dataset."""
        return {**config, "model": self.model, "dataset": self.dataset, **{f"dataset.{k}": v for k, v in self.dataset_args.items()}}


def train_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable: one Keras training, tracked in its own MLflow child run."""
    # When this process is reused for the next trial, Tune waits this long (default 2 s) for the
    # last trial's thread to unwind, else fails the new trial; unwinding a stopped Keras fit
    # (MobileNetV2 on a busy CPU) can take longer. Read in this process at reset time.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = "60"
    from bnsearch import train  # TensorFlow loads here, in the worker

    run = setup.track and tracking.TrialRun.open(
        setup.tracking_uri, setup.experiment_id, setup.parent_run_id, TrialId.of(setup.sweep_id, config),
        params=setup.run_params(config),
        tags={**setup.run_tags, **train.environment()},
    )
    if run and run.completed:
        # It ended after Tune's last snapshot of a driver that was then killed: hand Tune (and the
        # searcher) what MLflow recorded instead of training it again. Without the run's id: this
        # report is no epoch logged, and the driver's records keep only those.
        tune.report(run.final_metrics())
        return
    train.setup_tensorflow(max(1, int(setup.cpu)), gpu_share=setup.gpu)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if run:
            run.log_epoch(int(metrics["epoch"]), metrics)  # log first: a reported epoch is a logged one
            if checkpoint_dir:
                run.save_pending(checkpoint_dir)  # not in the store yet (queued, or an outage): resumed with the checkpoint
            if train.ends_run(metrics, setup.max_epochs):
                run.finish()  # the driver closes the run on this report: every epoch must be in by then
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        # With the run's id, the driver keeps its results table from these reports (what was logged).
        tune.report({**metrics, RUN_ID: run.run_id} if run else metrics, checkpoint=checkpoint)

    checkpoint = tune.get_checkpoint()
    try:
        with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as restore_dir:
            if run and restore_dir:
                run.load_pending(restore_dir)
            train.run(config, model=setup.model, dataset=setup.dataset, dataset_args=setup.dataset_args,
                      max_epochs=setup.max_epochs, report=report, restore_dir=restore_dir,
                      checkpoint_every_s=setup.checkpoint_every_s, arrays=None if setup.arrays is None else ray.get(setup.arrays),
                      keep=run.log_files if run else None)
    finally:
        if run:  # stopped early by the scheduler (its report raised SystemExit), or crashed
            run.finish()


@ray.remote(num_cpus=0)
def load_dataset(name: str, loader_args: dict) -> data.Arrays:
    return data.load(name, **loader_args)


@ray.remote(num_cpus=0)
def dataset_loaded(arrays: data.Arrays) -> int:
    return len(arrays.x_train)  # small: the driver learns the load worked without fetching the data


@ray.remote(num_cpus=0)
def model_problems(sweep: Sweep) -> list[tuple[str, str]]:
    """Every arm's model built where the dataset loads (for a dataset only a worker can load)."""
    from bnsearch import inspection

    try:
        inspection.check_models(sweep)
    except SpecError as error:
        return error.problems  # not the error: SpecError does not survive pickling
    return []


def trial_status(last_result: dict | None, max_epochs: int, errored: bool = False) -> str:
    """How a trial ended, from its last reported result."""
    last = last_result or {}
    if errored:
        return "failed"
    if last.get("diverged"):
        return "diverged"
    if last.get("collapsed"):
        return "collapsed"
    return "finished" if last.get("epoch", 0) >= max_epochs else "stopped_early"



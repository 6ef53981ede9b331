"""One phase on Ray Tune: the Tuner, its callbacks (MLflow run status, the progress view), and
what the phase returns."""

from __future__ import annotations

import contextlib
import logging
import os
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import FIFOScheduler

from bnsearch import data, progress, search, tracking
from bnsearch.identity import TrialId
from bnsearch.models.registry import is_import_path
from bnsearch.spec import FAILURES, SpecError, Sweep, one_line
from bnsearch.trainable.checkpoints import PruneCheckpoints
from bnsearch.trainable.searchers import ArmScheduler, ArmSearcher, FixedConfigs, ThenReplicate
from bnsearch.trainable.trial import (
    RUN_ID, TrialSetup, dataset_loaded, load_dataset, logged_metrics, model_problems, train_trial, trial_status,
)


class CloseTrialRuns(tune.Callback):
    """Driver side: every epoch a trial reports kept in the tracker's records (what the trial
    sent to its run: the driver's results table needs no MLflow read), and every trial's MLflow
    run given its final status once Tune is done with it."""

    def __init__(self, tracker: tracking.SweepTracker, trial_setup: TrialSetup):
        self.tracker, self.trial_setup = tracker, trial_setup  # not `setup`: a Tune callback's method

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if RUN_ID in result:
            self.tracker.record_report(TrialId.of(self.trial_setup.sweep_id, trial.config), result[RUN_ID],
                                       self.trial_setup.run_params(trial.config), logged_metrics(result))

    def _close(self, trial, errored: bool) -> None:
        status = trial_status(trial.last_result, self.trial_setup.max_epochs, errored)
        run_id = (trial.last_result or {}).get(RUN_ID)
        # Not waiting: the next trial starts on the freed slot while the run is closed.
        self.tracker.close_trial(TrialId.of(self.trial_setup.sweep_id, trial.config), status, run_id, wait=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, errored=True)

    def on_experiment_end(self, trials, **info):
        # A trial Tune recorded as ended keeps its status, also where the background close of a
        # driver killed since never landed; any other run still RUNNING has failed.
        self.tracker.close_orphans({TrialId.of(self.trial_setup.sweep_id, t.config).key: trial_status(t.last_result, self.trial_setup.max_epochs)
                                    for t in trials if t.status == Trial.TERMINATED and t.last_result})


# The running phase's progress view. Not on the callback: Tune pickles its callbacks with the
# experiment, and a restored phase must show its own view (or none, with --verbose).
_VIEW: progress.Progress | None = None
_STATES = {"PENDING": "pending", "PAUSED": "pending", "RUNNING": "running"}


class ShowProgress(tune.Callback):
    """Driver side: recount the phase's progress view from Tune's trials at every step."""

    def __init__(self, metric: str, mode: str, max_epochs: int):
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs

    def _states(self, trials) -> list[progress.TrialState]:
        states = []
        for trial in trials:
            last = trial.last_result or {}
            status = _STATES.get(trial.status) or trial_status(last, self.max_epochs, errored=trial.status == "ERROR")
            best = (trial.metric_analysis.get(self.metric) or {}).get(self.mode)  # Tune's running max / min
            states.append(progress.TrialState(trial.config["arm"], status, int(last.get("epoch", 0)), best))
        return states

    def on_step_end(self, iteration, trials, **info):
        if _VIEW and _VIEW.due():  # Tune steps many times a second: recount only when it will show
            _VIEW.update(self._states(trials))

    def on_experiment_end(self, trials, **info):
        if _VIEW:
            _VIEW.update(self._states(trials), final=True)


@contextlib.contextmanager
def _tune_output(log_file: Path | None, view: progress.Progress | None):
    """While a phase runs: the progress view shown, and Tune's own output (its per-trial boxes on
    stdout, its logged errors) in ``log_file``; with no ``log_file``, Tune prints as usual."""
    global _VIEW
    if log_file is None:
        yield
        return
    log_file.parent.mkdir(parents=True, exist_ok=True)
    tune_logger = logging.getLogger("ray.tune")
    with open(log_file, "a") as out:
        handler, propagate = logging.StreamHandler(out), tune_logger.propagate
        tune_logger.addHandler(handler)
        tune_logger.propagate = False  # its tracebacks would land inside the redrawn block
        _VIEW = view
        try:
            with contextlib.redirect_stdout(out):
                yield
        finally:
            _VIEW = None
            tune_logger.removeHandler(handler)
            tune_logger.propagate = propagate


@dataclass
class PhaseOutcome:
    phase: str
    metric: str
    mode: str
    wall_s: float
    trials: list[dict]  # phase, arm, trial_index, status, epochs, train_time_s, best (the metric's best value)
    ok: bool = True

    def of(self, phase: str) -> PhaseOutcome:
        """The trials of one phase (a search's Tune run may hold the first replicate look too)."""
        return dataclasses.replace(self, phase=phase, trials=[t for t in self.trials if t["phase"] == phase])

    @property
    def epochs(self) -> int:
        return sum(t["epochs"] for t in self.trials)

    @property
    def best(self) -> dict[str, float]:
        """Per arm, the best value of the metric over its trials."""
        pick = max if self.mode == "max" else min
        values: dict[str, list[float]] = {}
        for t in self.trials:
            if t["best"] is not None and t["status"] not in FAILURES:
                values.setdefault(t["arm"], []).append(t["best"])
        return {arm: pick(v) for arm, v in values.items()}


def slots(cpu_per_trial: float, gpu_per_trial: float) -> int:
    """How many trials the connected cluster can run at once right now (0 if none yet)."""
    have = ray.cluster_resources()
    fits = [have.get("CPU", 0) / cpu_per_trial]
    if gpu_per_trial:
        fits.append(have.get("GPU", 0) / gpu_per_trial)
    return int(min(fits))


def start_ray(address: str | None) -> None:
    """Join the cluster at ``address`` (auto: the one on this machine), or start a local one."""
    if ray.is_initialized():
        return
    # Ray enables token auth on a new local cluster and warns that it did, on every run: it is the
    # safe default, nothing for the user to do (RAY_AUTH_MODE still decides).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        ray.init(address=address, logging_level="WARNING", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    except ConnectionError as error:  # --address auto with no cluster running here
        raise SpecError([("--address", f"{address}: {error}")]) from None


def _loader_args(sweep: Sweep) -> dict:
    return {k: v for k, v in sweep.dataset_args.items() if k not in data.COMMON_PARAMETERS}


def _cause(error: "ray.exceptions.RayError") -> str:
    """What a remote task raised, in one line."""
    return one_line(getattr(error, "cause", None) or error)


def check_dataset(sweep: Sweep, address: str | None) -> None:
    """Load the sweep's dataset on a worker once, before anything is recorded: a dataset only a
    worker can load (a download) that fails ends the sweep here, as one line naming it; so does
    a model of yours that cannot be built for an arm on it."""
    start_ray(address)
    try:
        ray.get(dataset_loaded.remote(load_dataset.remote(sweep.dataset, _loader_args(sweep))))
    except ray.exceptions.RayError as error:  # the loader raised, or its worker died (out of memory, ...)
        raise SpecError([("dataset", f"{sweep.dataset} could not be loaded on a worker: {_cause(error)}")]) from None
    if is_import_path(sweep.model):
        try:
            problems = ray.get(model_problems.remote(sweep))
        except ray.exceptions.RayError as error:  # e.g. the model's module does not import on a worker
            problems = [("model", f"{sweep.model} could not be built on a worker: {_cause(error)}")]
        if problems:
            raise SpecError(problems)


def run_phase(sweep: Sweep, phase: str, *, tracker: tracking.SweepTracker, sweep_id: str, storage: str,
              address: str | None = None, run_tags: dict[str, str] | None = None,
              configs: list[dict] | None = None, track: bool = True, name: str | None = None,
              log_file: Path | None = None, then: Callable[[str, dict[int, int]], list[dict] | None] | None = None) -> PhaseOutcome:
    """Run one phase of ``sweep`` on Ray, every trial a child of ``tracker``'s parent run.

    ``search``: the per-arm Optuna studies with per-arm ASHA; with ``then`` (which has a
    ``count``), each arm's replicate trials from ``then`` in the same Tune run as soon as its
    search is over (:class:`ThenReplicate`). ``replicate``: exactly ``configs`` (each with its
    arm, seed and trial index), full budget, no early stopping.
    The Tune run ``name`` (default ``<sweep_id>-<phase>``) lives under ``storage``; if a killed
    driver left it unfinished there, it is restored: finished trials stay finished, running ones
    resume from their last checkpoint, and the searchers go on from their saved state. With a
    ``log_file``, Tune's own per-trial output goes there and the console shows the compact progress
    view instead; without one, Tune prints as usual (``--verbose``).
    """
    start = time.perf_counter()
    search.quiet()
    # Frequent checkpoints are deliberate (trials resume from them); Tune's warning about them is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start_ray(address)
    # Load the dataset once, in a task that needs no CPU slot (so trials start meanwhile), and
    # share it through the object store: every trial process would otherwise load its own.
    arrays = load_dataset.remote(sweep.dataset, _loader_args(sweep))
    setup = TrialSetup(
        sweep_id=sweep_id, model=sweep.model, dataset=sweep.dataset, dataset_args=dict(sweep.dataset_args),
        max_epochs=sweep.budget.max_epochs, cpu=sweep.resources.cpu, gpu=sweep.resources.gpu, tracking_uri=tracker.tracking_uri,
        experiment_id=tracker.experiment_id, parent_run_id=tracker.parent_run_id, run_tags=dict(run_tags or {}),
        checkpoint_every_s=sweep.budget.checkpoint_every_s, arrays=arrays, track=track,
    )
    trainable = tune.with_resources(tune.with_parameters(train_trial, setup=setup),
                                    {"cpu": sweep.resources.cpu, "gpu": sweep.resources.gpu})
    name = name or f"{sweep_id}-{phase}"
    storage = storage if "://" in storage else os.path.abspath(storage)
    restored = tune.Tuner.can_restore(f"{storage}/{name}")
    if restored:
        # The run config, callbacks and searcher state come back from the experiment's own files.
        tuner = tune.Tuner.restore(f"{storage}/{name}", trainable=trainable)
    else:
        if phase == "search":
            total = len(sweep.arms()) * sweep.budget.trials_per_arm + (then.count if then else 0)
            searcher = ArmSearcher(sweep)  # it ends the phase, crashed trials' replacements included
            searcher = ThenReplicate(searcher, then, then.count) if then else searcher
            scheduler = ArmScheduler(sweep) if sweep.budget.early_stopping else FIFOScheduler()
            samples = searcher.max_trials
        else:
            total, searcher, scheduler = len(configs), FixedConfigs(configs), FIFOScheduler()
            samples = total
        concurrency = sweep.budget.max_concurrent_trials or slots(sweep.resources.cpu, sweep.resources.gpu) or total
        # Of Tune's own loggers, only the JSON one (its results table reads it): its CSV and
        # TensorBoard ones repeat what MLflow holds, at a third of the driver's CPU per tiny trial
        # (BENCHMARKS.md, "A thousand tiny trials"). A restored run keeps the loggers it started with.
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        callbacks = [ShowProgress(sweep.metric, sweep.mode, sweep.budget.max_epochs), JsonLoggerCallback(), PruneCheckpoints()]
        if track:  # last: its end of experiment may raise a close that failed
            callbacks.append(CloseTrialRuns(tracker, dataclasses.replace(setup, arrays=None)))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=samples,
                max_concurrent_trials=min(concurrency, total),
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # PruneCheckpoints deletes, safely
                failure_config=tune.FailureConfig(max_failures=2),
                verbose=1,
            ),
        )
    try:
        per_arm = sweep.budget.trials_per_arm + (then.count // len(sweep.arms()) if then else 0)
        arms = [c["arm"] for c in configs] if configs else [a for a in sweep.arms() for _ in range(per_arm)]
        label = "search, then replicate" if then else phase
        view = progress.Progress(label, {arm: arms.count(arm) for arm in dict.fromkeys(arms)}, sweep.metric, sweep.mode)
        with _tune_output(log_file, view):  # the view writes to the console stdout was before
            grid = tuner.fit()
    finally:
        if track:
            tracker.close_orphans()
    # Trials that reported to a copy of the tracker (a restored run's callbacks; Ray Client runs
    # the Tuner remotely) left the driver's records behind: the next read goes to MLflow.
    if restored or not all(tracker.keeps(TrialId.of(sweep_id, r.config), r.metrics[RUN_ID], int(r.metrics["epoch"]))
                           for r in grid if RUN_ID in (r.metrics or {})):
        tracker.read_again()
    trials = sorted((_trial_summary(result, sweep) for result in grid), key=lambda t: (t["arm"], t["trial_index"]))
    return PhaseOutcome(phase, sweep.metric, sweep.mode, time.perf_counter() - start, trials, not grid.errors)


def _trial_summary(result, sweep: Sweep) -> dict:
    history = result.metrics_dataframe
    values = history[sweep.metric].dropna() if history is not None and sweep.metric in history else []
    return {
        "phase": result.config["phase"], "arm": result.config["arm"], "trial_index": result.config["trial_index"],
        "status": trial_status(result.metrics, sweep.budget.max_epochs, errored=result.error is not None),
        "epochs": int((result.metrics or {}).get("epoch", 0)),
        "train_time_s": float((result.metrics or {}).get("train_time_s", 0.0)),
        "best": float(values.max() if sweep.mode == "max" else values.min()) if len(values) else None,
    }

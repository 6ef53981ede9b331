"""The Ray Tune adapter: Tuner, per-arm search and early stopping, reporting, checkpoints,
resources. The only Ray import; Ray's APIs move fast, and this module absorbs the moves.

Fairness between arms is structural: :class:`ArmSearcher` hands out trials round-robin over
the arms, each arm with its own Optuna study, and :class:`ArmScheduler` runs one ASHA per arm,
so a weak arm's trials are only ever compared (and stopped) against its own. The replicate
phase runs fixed configurations (:class:`FixedConfigs`) through the same trial function.
TensorFlow is imported inside the trial function only, never on the driver.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from bnsearch import data, search, tracking
from bnsearch.spec import FAILURES, SEARCH_SEED_BASE, SEARCH_SPLIT_SEED, SpecError, Sweep


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


def trial_key(sweep_id: str, config: dict) -> str:
    """A trial's MLflow identity: its arm and its place in that arm (search: trial index,
    replicate: seed), never Tune's trial id. A driver killed after starting a trial but before
    Tune saved it gets, on restore, the same suggestion from the restored searcher under a new
    Tune id; keyed like this, it lands in the run the first attempt opened, as does a trial
    retried from a checkpoint or a seed replicated again."""
    if config["phase"] == "replicate":
        return f"{sweep_id}/replicate/{config['arm']}/seed{config['seed']}"
    return f"{sweep_id}/{config['phase']}/{config['arm']}/trial{config['trial_index']}"


def run_name(config: dict) -> str:
    return f"{config['phase']}-{config['arm']}-{config['trial_index']:03d}"


def train_trial(config: dict, setup: TrialSetup) -> None:
    """The Tune function trainable: one Keras training, tracked in its own MLflow child run."""
    # When this process is reused for the next trial, Tune waits this long (default 2 s) for the
    # last trial's thread to unwind, else fails the new trial; unwinding a stopped Keras fit
    # (MobileNetV2 on a busy CPU) can take longer. Read in this process at reset time.
    os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = "60"
    from bnsearch import train  # TensorFlow loads here, in the worker

    key = trial_key(setup.sweep_id, config)
    run = setup.track and tracking.TrialRun.open(
        setup.tracking_uri, setup.experiment_id, setup.parent_run_id, key, run_name(config),
        params={**config, "model": setup.model, "dataset": setup.dataset, **{f"dataset.{k}": v for k, v in setup.dataset_args.items()}},
        tags={"arm": config["arm"], "phase": config["phase"], "seed": str(config["seed"]), "sweep_id": setup.sweep_id,
              **setup.run_tags, **train.environment()},
    )
    if run and run.completed:
        # It ended after Tune's last snapshot of a driver that was then killed: hand Tune (and the
        # searcher) what MLflow recorded instead of training it again.
        tune.report(run.final_metrics())
        return
    train.setup_tensorflow(max(1, int(setup.cpu)), gpu_share=setup.gpu)

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if run:
            run.log_epoch(int(metrics["epoch"]), metrics)  # log first: a reported epoch is a logged one
            if checkpoint_dir:
                run.save_pending(checkpoint_dir)  # held back by an outage: resumed with the checkpoint
            if train.ends_run(metrics, setup.max_epochs):
                run.flush()  # the driver closes the run on this report: every epoch must be in by then
        checkpoint = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=checkpoint)

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
        if run and run.pending:  # stopped early by the scheduler during an outage
            run.flush()


@ray.remote(num_cpus=0)
def _load_dataset(name: str, loader_args: dict) -> data.Arrays:
    return data.load(name, **loader_args)


@ray.remote(num_cpus=0)
def _loaded(arrays: data.Arrays) -> int:
    return len(arrays.x_train)  # small: the driver learns the load worked without fetching the data


class _SavedSearcher(Searcher):
    """Tune saves a searcher's state with the experiment so a restarted driver resumes it."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class ArmSearcher(_SavedSearcher):
    """Round-robin over arms; each arm is searched by its own OptunaSearch (own study).

    Every arm gets ``trials_per_arm`` trials that ran: a trial that crashes (after Tune's
    retries) is replaced by a new one of its arm, up to ``trials_per_arm`` replacements per arm
    so that a sweep whose every trial crashes still ends. So the search is finished only when
    every arm has its count and no trial is still running (one could still crash); until then
    a full arm waits (``suggest`` returns None, and Tune asks again)."""

    def __init__(self, sweep: Sweep):
        super().__init__(metric=sweep.metric, mode=sweep.mode)
        budget = sweep.budget
        self.trials_per_arm = budget.trials_per_arm
        self.arms = {arm: sweep.resolve(arm) for arm in sweep.arms()}
        self.searchers = {}
        for name, arm in self.arms.items():
            self.searchers[name] = OptunaSearch(
                space=search.SearchSpace(arm.nuisance),
                metric=sweep.metric,
                mode=sweep.mode,
                sampler=search.make_sampler(budget.sampler, arm.nuisance, budget.search_seed, budget.trials_per_arm),
            )
        self.started = {arm: 0 for arm in self.arms}
        self.crashed = {arm: 0 for arm in self.arms}
        self.arm_of: dict[str, str] = {}
        self.running: set[str] = set()

    def budget_of(self, arm: str) -> int:
        return self.trials_per_arm + min(self.crashed[arm], self.trials_per_arm)

    @property
    def max_trials(self) -> int:
        """Every arm's count and as many replacements: what Tune may have to start at most."""
        return 2 * self.trials_per_arm * len(self.arms)

    def suggest(self, trial_id: str) -> dict | None:
        open_arms = [a for a, n in self.started.items() if n < self.budget_of(a)]
        if not open_arms:
            return None if self.running else Searcher.FINISHED
        arm = min(open_arms, key=lambda a: self.started[a] - self.crashed[a])  # fewest that count, ties in declared order
        params = self.searchers[arm].suggest(trial_id)
        index = self.started[arm]
        self.started[arm] += 1
        self.arm_of[trial_id] = arm
        self.running.add(trial_id)
        return {**self.arms[arm].config, **params, "arm": arm, "phase": "search",
                "trial_index": index, "seed": SEARCH_SEED_BASE + index, "split_seed": SEARCH_SPLIT_SEED}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.arm_of:
            self.searchers[self.arm_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.arm_of:
            arm = self.arm_of[trial_id]
            self.searchers[arm].on_trial_complete(trial_id, result, error)
            self.crashed[arm] += bool(error)
            self.running.discard(trial_id)


class FixedConfigs(_SavedSearcher):
    """The replicate phase's searcher: exactly these configurations, in order."""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self.configs, self.next = list(configs), 0

    def suggest(self, trial_id: str) -> dict | None:
        if self.next >= len(self.configs):
            return Searcher.FINISHED
        self.next += 1
        return dict(self.configs[self.next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class ArmScheduler(FIFOScheduler):
    """One ASHA per arm: early stopping compares a trial only with trials of its own arm."""

    def __init__(self, sweep: Sweep):
        super().__init__()
        b = sweep.budget
        self.schedulers = {
            arm: ASHAScheduler(metric=sweep.metric, mode=sweep.mode, max_t=b.max_epochs,
                               grace_period=b.grace_epochs, reduction_factor=b.reduction_factor)
            for arm in sweep.arms()
        }

    def _of(self, trial) -> TrialScheduler:
        return self.schedulers[trial.config["arm"]]

    def on_trial_add(self, tune_controller, trial):
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial):
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result):
        self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        self._of(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "ASHA per arm: " + "; ".join(f"{arm}: {s.debug_string()}" for arm, s in self.schedulers.items())


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


class CloseTrialRuns(tune.Callback):
    """Driver side: give every trial's MLflow run its final status once Tune is done with it."""

    def __init__(self, tracker: tracking.SweepTracker, sweep_id: str, max_epochs: int):
        self.tracker, self.sweep_id, self.max_epochs = tracker, sweep_id, max_epochs

    def _close(self, trial, errored: bool) -> None:
        status = trial_status(trial.last_result, self.max_epochs, errored)
        self.tracker.close_trial(trial_key(self.sweep_id, trial.config), status, run_name(trial.config))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._close(trial, errored=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._close(trial, errored=True)


@dataclass
class PhaseOutcome:
    phase: str
    metric: str
    mode: str
    wall_s: float
    trials: list[dict]  # arm, trial_index, status, epochs, train_time_s, best (the metric's best value)
    ok: bool = True

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


def run_phase(sweep: Sweep, phase: str, *, tracker: tracking.SweepTracker, sweep_id: str, storage: str,
              address: str | None = None, run_tags: dict[str, str] | None = None,
              configs: list[dict] | None = None, track: bool = True, name: str | None = None) -> PhaseOutcome:
    """Run one phase of ``sweep`` on Ray, every trial a child of ``tracker``'s parent run.

    ``search``: the per-arm Optuna studies with per-arm ASHA. ``replicate``: exactly
    ``configs`` (each with its arm, seed and trial index), full budget, no early stopping.
    The Tune run ``name`` (default ``<sweep_id>-<phase>``) lives under ``storage``; if a killed
    driver left it unfinished there, it is restored: finished trials stay finished, running ones
    resume from their last checkpoint, and the searchers go on from their saved state.
    """
    start = time.perf_counter()
    search.quiet()
    # Frequent checkpoints are deliberate (trials resume from them); Tune's warning about them is noise.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if not ray.is_initialized():
        # Ray enables token auth on a new local cluster and warns that it did, on every run: it is the
        # safe default, nothing for the user to do (RAY_AUTH_MODE still decides).
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        try:
            ray.init(address=address, logging_level="WARNING", include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
        except ConnectionError as error:  # --address auto with no cluster running here
            raise SpecError([("--address", f"{address}: {error}")]) from None
    # Load the dataset once, in a task that needs no CPU slot (so trials start meanwhile), and
    # share it through the object store: every trial process would otherwise load its own.
    loader_args = {k: v for k, v in sweep.dataset_args.items() if k not in data.COMMON_PARAMETERS}
    arrays = _load_dataset.remote(sweep.dataset, loader_args)
    try:  # a dataset only a worker can load (a download): its failure ends the phase here, as one line
        ray.get(_loaded.remote(arrays))
    except ray.exceptions.RayTaskError as error:
        cause = error.cause if error.cause is not None else error
        raise SpecError([("dataset", f"{sweep.dataset} could not be loaded on a worker: {type(cause).__name__}: "
                                     f"{str(cause).splitlines()[0] if str(cause) else ''}")]) from None
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
    if tune.Tuner.can_restore(f"{storage}/{name}"):
        # The run config, callbacks and searcher state come back from the experiment's own files.
        tuner = tune.Tuner.restore(f"{storage}/{name}", trainable=trainable)
    else:
        if phase == "search":
            total = len(sweep.arms()) * sweep.budget.trials_per_arm
            searcher = ArmSearcher(sweep)  # it ends the phase, crashed trials' replacements included
            scheduler = ArmScheduler(sweep) if sweep.budget.early_stopping else FIFOScheduler()
            samples = searcher.max_trials
        else:
            total, searcher, scheduler = len(configs), FixedConfigs(configs), FIFOScheduler()
            samples = total
        concurrency = sweep.budget.max_concurrent_trials or slots(sweep.resources.cpu, sweep.resources.gpu) or total
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
                callbacks=[CloseTrialRuns(tracker, sweep_id, sweep.budget.max_epochs)] if track else [],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                failure_config=tune.FailureConfig(max_failures=2),
                verbose=1,
            ),
        )
    try:
        grid = tuner.fit()
    finally:
        if track:
            tracker.close_orphans()
    trials = sorted((_trial_summary(result, sweep) for result in grid), key=lambda t: (t["arm"], t["trial_index"]))
    return PhaseOutcome(phase, sweep.metric, sweep.mode, time.perf_counter() - start, trials, not grid.errors)


def _trial_summary(result, sweep: Sweep) -> dict:
    history = result.metrics_dataframe
    values = history[sweep.metric].dropna() if history is not None and sweep.metric in history else []
    return {
        "arm": result.config["arm"], "trial_index": result.config["trial_index"],
        "status": trial_status(result.metrics, sweep.budget.max_epochs, errored=result.error is not None),
        "epochs": int((result.metrics or {}).get("epoch", 0)),
        "train_time_s": float((result.metrics or {}).get("train_time_s", 0.0)),
        "best": float(values.max() if sweep.mode == "max" else values.min()) if len(values) else None,
    }

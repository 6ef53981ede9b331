"""Fair search between arms: round-robin trials over per-arm Optuna studies, fixed configurations
for the replicate phase (or each arm's first look chained onto the search), one ASHA per arm.
Where the order is free, a worker's next trial is of the arm it has traced. Searcher state is
saved with the Tune experiment."""

from __future__ import annotations

import pickle
from collections.abc import Callable

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from bnsearch import search
from bnsearch.spec import SEARCH_SEED_BASE, SEARCH_SPLIT_SEED, Sweep


class _SavedSearcher(Searcher):
    """Tune saves a searcher's state with the experiment so a restarted driver resumes it."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class FreedWorkers:
    """Which arm each running trial is, and the arms of trials that ended, whose workers wait for
    a next trial, oldest first.

    Tune (``reuse_actors``) gives a new trial the worker that has waited longest, and a worker
    keeps the models it traced (:mod:`bnsearch.compiled`): a next trial of the same arm there
    trains without tracing again (about 25 s for MobileNetV2 on a CPU). Choosing among arms
    that are otherwise equal, the searchers give that worker its own arm."""

    def __init__(self):
        self.arm_of: dict[str, str] = {}  # a running trial's Tune id: its arm
        self.waiting: list[str] = []

    def choose(self, trial_id: str, candidates: list[str]) -> str:
        """The arm of trial ``trial_id``, one of ``candidates`` (in their own order of preference):
        the waiting worker's own, if it is one of them."""
        waiting = self.waiting.pop(0) if self.waiting else None  # this trial takes that worker, whatever its arm
        self.arm_of[trial_id] = arm = waiting if waiting in candidates else candidates[0]
        return arm

    def ended(self, trial_id: str) -> None:
        if trial_id in self.arm_of:
            self.waiting.append(self.arm_of.pop(trial_id))


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
        self.freed = FreedWorkers()

    def finished(self, arm: str) -> bool:
        """Whether ``arm``'s search is over: its count started and none of its trials running."""
        return self.started[arm] >= self.budget_of(arm) and not any(self.arm_of[t] == arm for t in self.running)

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
        counted = {a: self.started[a] - self.crashed[a] for a in open_arms}
        fewest = min(counted.values())
        # The arm with the fewest trials that count; among ties, the freed worker's, then the declared order.
        arm = self.freed.choose(trial_id, [a for a in open_arms if counted[a] == fewest])
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
            self.freed.ended(trial_id)


class FixedConfigs(_SavedSearcher):
    """The replicate phase's searcher: exactly these configurations, each arm's in order. A
    freed worker gets one of its own arm while there is one (:class:`FreedWorkers`); a new
    worker, one of the arm that the fewest running trials have."""

    def __init__(self, configs: list[dict]):
        super().__init__()
        self.todo = list(configs)
        self.freed = FreedWorkers()

    def suggest(self, trial_id: str) -> dict | None:
        if not self.todo:
            return Searcher.FINISHED
        running = list(self.freed.arm_of.values())
        arms = sorted(dict.fromkeys(c["arm"] for c in self.todo), key=running.count)
        return dict(take_arm(self.todo, self.freed.choose(trial_id, arms)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.freed.ended(trial_id)


def take_arm(configs: list[dict], arm: str) -> dict:
    """The first of ``configs`` of ``arm``, taken out of the list."""
    return configs.pop(next(i for i, c in enumerate(configs) if c["arm"] == arm))


class ThenReplicate(_SavedSearcher):
    """The search, and each arm's first replicate look as soon as that arm's search is over, in
    one Tune run: the trial processes (TensorFlow imported, the dataset fetched, models traced)
    go on from one phase to the next, and a slot the search no longer needs replicates while
    another arm's last search trials run. A search trial always goes first.

    ``replicates(arm, reported)`` (on the driver; ``reported``: the last epoch each of the arm's
    search trials reported, by trial index) gives the arm's replicate configurations, or None
    while what they are chosen from is not all recorded yet (Tune asks again). ``count``: how
    many it gives at most, all arms together."""

    def __init__(self, search: ArmSearcher, replicates: Callable[[str, dict[int, int]], list[dict] | None], count: int):
        super().__init__(metric=search.metric, mode=search.mode)
        self.search, self.replicates, self.count = search, replicates, count
        self.trials: dict[str, tuple[str, int]] = {}  # a search trial's Tune id: (arm, trial index)
        self.reported: dict[str, int] = {}  # a search trial's Tune id: the last epoch it reported
        self.queued: list[dict] = []
        self.replicated: set[str] = set()  # arms whose replicate configurations are queued

    @property
    def max_trials(self) -> int:
        return self.search.max_trials + self.count

    def suggest(self, trial_id: str) -> dict | None:
        config = self.search.suggest(trial_id)
        if isinstance(config, dict):
            self.trials[trial_id] = (config["arm"], config["trial_index"])
            return config
        for arm in self.search.arms:
            if arm not in self.replicated and self.search.finished(arm):
                reported = {index: self.reported.get(t, 0) for t, (a, index) in self.trials.items() if a == arm}
                configs = self.replicates(arm, reported)
                if configs is not None:
                    self.replicated.add(arm)
                    self.queued.extend(configs)
        if self.queued:
            return take_arm(self.queued, self.search.freed.choose(trial_id, [c["arm"] for c in self.queued]))
        return Searcher.FINISHED if len(self.replicated) == len(self.search.arms) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.trials:
            self.reported[trial_id] = int(result.get("epoch", 0))
            self.search.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self.trials:
            if result:
                self.reported[trial_id] = int(result.get("epoch", self.reported.get(trial_id, 0)))
            self.search.on_trial_complete(trial_id, result, error)
        else:  # a replicate trial: its worker is free for the next
            self.search.freed.ended(trial_id)


class ArmScheduler(FIFOScheduler):
    """One ASHA per arm: early stopping compares a trial only with trials of its own arm. A
    replicate trial chained onto the search runs its full budget."""

    def __init__(self, sweep: Sweep):
        super().__init__()
        self.replicate = FIFOScheduler()
        b = sweep.budget
        self.schedulers = {
            arm: ASHAScheduler(metric=sweep.metric, mode=sweep.mode, max_t=b.max_epochs,
                               grace_period=b.grace_epochs, reduction_factor=b.reduction_factor)
            for arm in sweep.arms()
        }

    def _of(self, trial) -> TrialScheduler:
        return self.replicate if trial.config.get("phase") == "replicate" else self.schedulers[trial.config["arm"]]

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



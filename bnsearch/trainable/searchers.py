"""Fair search between arms: round-robin trials over per-arm Optuna studies, fixed configurations
for the replicate phase, one ASHA per arm. Searcher state is saved with the Tune experiment."""

from __future__ import annotations

import pickle

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



"""Unit tests of the per-arm searcher's own logic (no Ray cluster is started)."""

from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from bnsearch.spec import SEARCH_SEED_BASE, SEARCH_SPLIT_SEED, Budget, ComplementLogUniform, LogUniform, Sweep
from bnsearch.identity import TrialId
from bnsearch.trainable import ArmScheduler, ArmSearcher, FixedConfigs, ThenReplicate, trial_status

SWEEP = Sweep(
    name="t", model="mlp", dataset="digits", scientific={"bn_placement": ("none", "before", "after")},
    nuisance={"learning_rate": LogUniform(1e-3, 1e-1), "bn_momentum": ComplementLogUniform(0.9, 0.999)},
    fixed={"bn_statistics": "moving"}, budget=Budget(trials_per_arm=3, sampler="random"),
)


def test_round_robin_gives_every_arm_the_same_budget_then_finishes(tmp_path):
    searcher = ArmSearcher(SWEEP)
    configs = [searcher.suggest(f"t{i}") for i in range(9)]
    assert [c["arm"] for c in configs] == ["none", "before", "after"] * 3
    assert searcher.suggest("t9") is None  # every arm full, but a running trial could still crash
    for c in configs:
        assert c["seed"] == SEARCH_SEED_BASE + c["trial_index"] and c["phase"] == "search"
        assert c["split_seed"] == SEARCH_SPLIT_SEED  # one validation split for every trial and arm
        assert ("bn_momentum" in c) == (c["arm"] != "none") and 1e-3 <= c["learning_rate"] <= 1e-1
    for i in range(9):
        searcher.on_trial_complete(f"t{i}", {"val_accuracy": 0.5})
    assert searcher.suggest("t9") is Searcher.FINISHED
    # searcher state survives a save/restore (what Tune does when a driver restarts)
    searcher.save(str(tmp_path / "s.pkl"))
    restored = ArmSearcher(SWEEP)
    restored.restore(str(tmp_path / "s.pkl"))
    assert restored.started == {"none": 3, "before": 3, "after": 3} and restored.suggest("t10") is Searcher.FINISHED


def test_fixed_configs_hand_out_exactly_their_configs_then_finish(tmp_path):
    configs = [{"arm": arm, "seed": seed} for arm in ("none", "before") for seed in range(3)]
    searcher = FixedConfigs(configs)
    # new workers: one per arm; then a freed worker, its own arm while it lasts
    assert [searcher.suggest(t) for t in ("a", "b")] == [configs[0], configs[3]]
    searcher.on_trial_complete("b")
    assert searcher.suggest("c") == configs[4]
    searcher.save(str(tmp_path / "f.pkl"))
    restored = FixedConfigs([])
    restored.restore(str(tmp_path / "f.pkl"))  # a restarted driver goes on where it was
    for ended, new, expected in (("c", "d", 5), ("a", "e", 1), ("d", "f", 2)):  # the last: no "before" left
        restored.on_trial_complete(ended)
        assert restored.suggest(new) == configs[expected], new
    restored.on_trial_complete("e")
    assert restored.suggest("g") is Searcher.FINISHED


def test_trials_are_identified_by_arm_and_seed_or_trial_index_never_by_tune_id():
    key = lambda config: TrialId.of("s", config).key  # noqa: E731
    replicate = {"phase": "replicate", "arm": "before", "seed": 3, "trial_index": 3, "learning_rate": 0.1}
    assert key(replicate) == "s/replicate/before/seed3" and TrialId.of("s", replicate).run_name == "replicate-before-003"
    search = {"phase": "search", "arm": "before", "seed": 10_003, "trial_index": 3}
    assert key(search) == "s/search/before/trial3" != key({**search, "arm": "none"})
    trial = TrialId.of("s", search)
    assert TrialId.from_run(trial.tags(), {"trial_index": 3}) == trial  # read back from its run


def test_a_crashed_trial_is_replaced_so_every_arm_gets_its_full_count():
    """As Tune drives it: all trials started, Tune keeps asking while they run, one crashes last."""
    searcher = ArmSearcher(SWEEP)
    configs = {f"t{i}": searcher.suggest(f"t{i}") for i in range(9)}
    crashed = next(t for t, c in configs.items() if (c["arm"], c["trial_index"]) == ("before", 1))
    for trial_id in configs:
        if trial_id != crashed:
            searcher.on_trial_complete(trial_id, {"val_accuracy": 0.5})
            assert searcher.suggest("asking") is None  # "before" has a trial running that could still crash
    searcher.on_trial_complete(crashed, None, error=True)
    replacement = searcher.suggest("t9")
    assert (replacement["arm"], replacement["trial_index"]) == ("before", 3)  # a new trial key, not the crashed one's
    assert searcher.suggest("t10") is None
    searcher.on_trial_complete("t9", {"val_accuracy": 0.6})
    assert searcher.suggest("t10") is Searcher.FINISHED


def test_replacements_are_bounded_when_every_trial_crashes():
    searcher = ArmSearcher(SWEEP.replace(scientific={"bn_placement": ("before",)}))
    handed_out = 0
    while (config := searcher.suggest(f"t{handed_out}")) is not Searcher.FINISHED:
        searcher.on_trial_complete(f"t{handed_out}", None, error=True)
        handed_out += 1
        assert config["trial_index"] == handed_out - 1
    assert handed_out == 6  # the budget once, and as many replacements


class Replicates:
    """The driver's side: not ready at the first ask (the store lags Tune), then two seeds."""

    def __init__(self):
        self.asked = []

    def __call__(self, arm, reported):
        self.asked.append((arm, dict(reported)))
        if len(self.asked) == 1:
            return None
        return [{"arm": arm, "phase": "replicate", "seed": seed, "trial_index": seed} for seed in range(2)]


def test_each_arm_is_replicated_in_the_search_run_as_soon_as_its_search_is_over(tmp_path):
    """As Tune drives it: search trials first; an arm whose search is over gets its replicate
    trials while another arm still searches, once its records are complete; then finished."""
    sweep = SWEEP.replace(scientific={"bn_placement": ("none", "before")}, budget=Budget(trials_per_arm=2, sampler="random"))
    replicates = Replicates()
    searcher = ThenReplicate(ArmSearcher(sweep), replicates, count=4)
    assert searcher.max_trials == 2 * 2 * 2 + 4  # the search's bound (replacements included) and the replicates
    search = {f"t{i}": searcher.suggest(f"t{i}") for i in range(4)}
    assert [c["arm"] for c in search.values()] == ["none", "before"] * 2 and not replicates.asked
    for trial_id, config in search.items():
        searcher.on_trial_result(trial_id, {"epoch": 1, "training_iteration": 1, "val_accuracy": 0.5})
        if config["arm"] == "none":
            searcher.on_trial_complete(trial_id, {"epoch": 3 if config["trial_index"] else 1, "val_accuracy": 0.5})
    assert searcher.suggest("t4") is None and replicates.asked == [("none", {0: 1, 1: 3})]  # not recorded yet: asked again later
    first = searcher.suggest("t4")
    assert (first["arm"], first["phase"], first["seed"]) == ("none", "replicate", 0)  # "before" still searches
    searcher.save(str(tmp_path / "s.pkl"))  # a restarted driver goes on where it was
    restored = ThenReplicate(ArmSearcher(sweep), Replicates(), count=4)
    restored.restore(str(tmp_path / "s.pkl"))
    assert restored.suggest("t5")["seed"] == 1 and restored.suggest("t6") is None
    for trial_id, config in search.items():
        if config["arm"] == "before":
            restored.on_trial_complete(trial_id, {"epoch": 2, "val_accuracy": 0.5})
    assert [(c["arm"], c["seed"]) for c in (restored.suggest("t6"), restored.suggest("t7"))] == [("before", 0), ("before", 1)]
    assert restored.suggest("t8") is Searcher.FINISHED and restored.replicates.asked[-1] == ("before", {0: 2, 1: 2})


def test_a_freed_worker_gets_a_trial_of_the_arm_it_trained_where_the_arms_are_even():
    """Tune gives a new trial the worker that waited longest, and that worker keeps its traced
    model: between arms with as many trials, the next one is that worker's arm."""
    sweep = SWEEP.replace(scientific={"bn_placement": ("none", "before")}, budget=Budget(trials_per_arm=3, sampler="random"))
    searcher = ThenReplicate(ArmSearcher(sweep), lambda arm, reported: [{"arm": arm, "seed": s} for s in range(2)], count=4)
    worker = {"w1": searcher.suggest("t0"), "w2": searcher.suggest("t1")}  # two new workers: one per arm
    assert [c["arm"] for c in worker.values()] == ["none", "before"]
    ids = {"w1": "t0", "w2": "t1"}
    # (the worker whose trial ends, the arm of its next trial): its own arm where the arms have
    # had as many trials, else the arm with fewer; then each arm's replicates, as its search ends
    expected = [("w1", "none"), ("w1", "before"), ("w2", "before"), ("w1", "none"),
                ("w2", "before"), ("w1", "none"), ("w1", "none"), ("w2", "before")]
    for step, (ending, arm) in enumerate(expected):
        searcher.on_trial_complete(ids[ending], {"epoch": 1, "val_accuracy": 0.5})
        ids[ending] = f"t{step + 2}"
        worker[ending] = searcher.suggest(ids[ending])
        assert (worker[ending]["arm"], worker[ending].get("phase", "replicate")) == (arm, "search" if step < 4 else "replicate"), step
    assert searcher.suggest("t10") is Searcher.FINISHED


def test_a_chained_replicate_trial_is_never_stopped_early():
    class Trial:
        def __init__(self, phase):
            self.config = {"arm": "before", "phase": phase}

    scheduler = ArmScheduler(SWEEP)
    assert scheduler._of(Trial("search")) is scheduler.schedulers["before"]
    for epoch in range(1, 4):  # however poorly it does, where ASHA would stop it at its first rung
        assert scheduler.on_trial_result(None, Trial("replicate"), {"epoch": epoch, "val_accuracy": 0.0}) == TrialScheduler.CONTINUE


def test_statuses_from_the_last_result():
    assert trial_status({"epoch": 3, "collapsed": 1.0}, 3) == "collapsed"
    assert trial_status({"epoch": 2, "diverged": 1.0}, 3) == "diverged"
    assert trial_status({"epoch": 3}, 3) == "finished" and trial_status({"epoch": 1}, 3) == "stopped_early"
    assert trial_status({"epoch": 1}, 3, errored=True) == "failed"

"""Search → replicate → report, the three phases of a sweep, under one MLflow parent run.

1. *search*: every arm's nuisance space searched with the same budget (trainable/);
2. *replicate*: every arm's best search configuration re-run over the seeds ``0..N-1``, the
   same seeds for every arm (paired) and disjoint from the search seeds (10000+), at the full
   epoch budget with no early stopping; look by look of the sweep's group-sequential plan, and
   no further once every comparison is decided;
3. *report*: statistics, plots, report files logged on the parent run.

The driver's results table is what MLflow held when it started, kept up to date from what its
trials report to Tune (each report holds what the trial sent to its run), so the table of a look
costs no MLflow read; ``bnsearch report`` rebuilds the same table from MLflow alone.

A phase run on its own continues a sweep that exists (the latest of the experiment unless a
sweep id is given), so ``--phase replicate`` after ``--phase search`` is the same as ``all``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bnsearch import report, results, stats, tracking
from bnsearch.spec import FAILURES, Sweep

PLAN_TAG = "replicate_plan"  # looks:spending, as first recorded
TUNE_LOG = "tune.log"  # Tune's own output, per sweep, when the console shows the progress view

PHASES = ("search", "replicate", "report")


def replicate_configs(best: dict[str, dict[str, Any]], seeds: int) -> list[dict[str, Any]]:
    """Every arm's best configuration once per seed, seed-major so that a sweep cut short
    still holds complete pairs; each seed re-draws the validation split too."""
    return [
        {**config, "arm": arm, "phase": "replicate", "trial_index": seed, "seed": seed, "split_seed": seed}
        for seed in range(seeds) for arm, config in best.items()
    ]


def run(sweep: Sweep, phases: Sequence[str], *, tracker: tracking.SweepTracker, sweep_id: str, storage: str | Path,
        spec_record: dict[str, Any], report_dir: Path, address: str | None = None,
        run_tags: dict[str, str] | None = None, echo: Callable[[str], None] = print, verbose: bool = False) -> bool:
    """Run ``phases`` of ``sweep`` in order; the parent run must be open on ``tracker``.
    Returns whether every trial ended without a crash. Tune's own per-trial output goes to
    ``tune.log`` beside the report, the console showing the compact progress view; ``verbose``
    prints Tune's output instead."""
    from bnsearch import trainable  # Ray loads only when a phase trains

    ok = True
    tracker.follow_reports()
    log_file = None if verbose else report_dir.parent / TUNE_LOG
    correct: dict[tuple[str, int], Any] = {}  # per-example test results, fetched once per run
    if "search" in phases and tracker.tags().get("search") == "done":
        echo("bnsearch: the search phase of this sweep is done already")
    elif "search" in phases:
        # With the replicate phase to follow, each arm's first look runs in the search's own Tune
        # run as soon as the arm's search is over: its trials go on in the same warm processes.
        then = FirstLook(tracker, sweep, spec_record) if "replicate" in phases else None
        outcome = trainable.run_phase(sweep, "search", tracker=tracker, sweep_id=sweep_id, storage=str(storage),
                                      address=address, run_tags=run_tags, log_file=log_file, then=then)
        tracker.set_tags({"search": "done"})  # a resumed sweep goes on with the replicate phase
        if any(t["phase"] == "replicate" for t in outcome.trials):  # chained, this run or the one it restored
            echo(summary(outcome.of("search"), "its Tune run went on with each arm's first replicate look"))
            echo(summary(outcome.of("replicate"), "each arm's first look, in the search's Tune run", wall=False))
        else:
            echo(summary(outcome))
        ok &= outcome.ok
    if "replicate" in phases:
        table = results.from_records(tracker.trial_records())
        best = results.best_configs(table, list(sweep.arms()), sweep.metric, sweep.mode)
        plan, looks, beyond = replicate_looks(tracker, spec_record)
        full_budget = sweep.replace(budget=dataclasses.replace(sweep.budget, early_stopping=False))
        for look in looks:
            done = results.finished_replicates(table)  # a second run adds seeds, never repeats one
            todo = [c for c in replicate_configs(best, look) if (c["arm"], c["seed"]) not in done]
            where = f"{look} seeds, beyond the plan's {plan.looks[-1]} (exploratory)" if beyond else f"look at {look} seeds"
            echo(f"bnsearch: replicating the best configuration of {len(best)} arms, {where}: "
                 f"{len(todo)} runs to go, {len(done)} already finished")
            if todo:
                # Named by the seed count: a killed driver's rerun restores this Tune run; more seeds start another.
                outcome = trainable.run_phase(full_budget, "replicate", tracker=tracker, sweep_id=sweep_id, storage=str(storage),
                                              address=address, run_tags=run_tags, configs=todo,
                                              name=f"{sweep_id}-replicate-seeds{look}", log_file=log_file)
                echo(summary(outcome))
                ok &= outcome.ok
                table = results.from_records(tracker.trial_records())
            if not beyond and look < plan.looks[-1]:
                correct = per_example(tracker, table, spec_record, correct)
                analysis = report.analysis_of(table, spec_record, correct, plan, calibration_draws=0)
                if analysis.closed:
                    echo(f"bnsearch: every comparison is decided at {analysis.seeds} seeds per arm: the plan stops "
                         f"there, {analysis.saved} seeds per arm saved")
                    break
                echo(f"bnsearch: look at {look} seeds: " + "; ".join(f"{p.label} {p.verdict}" for p in analysis.pairs)
                     + f"; going on to {plan.looks[plan.looks.index(look) + 1]} seeds")
    if "report" in phases:
        echo(make_report(tracker, spec_record, report_dir, correct))
    return ok


def replicate_looks(tracker: tracking.SweepTracker, spec_record: dict[str, Any]) -> tuple[stats.Plan, list[int], bool]:
    """The sweep's recorded plan, the seed counts this run looks at, and whether it asks for
    seeds beyond the plan (all run at once, reported as exploratory)."""
    plan = planned(tracker, spec_record)
    own = report.plan_of(spec_record)  # this run's budget: the recorded plan, or seeds added to it
    beyond = own.looks[-1] > plan.looks[-1]
    looks = [own.looks[-1]] if beyond else [n for n in plan.looks if n < own.looks[-1]] + [own.looks[-1]]
    return plan, looks, beyond


class FirstLook:
    """Per arm, its replicate configurations at the first look, chosen from its search as
    recorded: what the search's Tune run goes on with once the arm's search is over.

    Called on the driver with the last epoch each of the arm's search trials reported to Tune;
    None (Tune asks again) until the tracker's records hold those epochs too (at once while it
    follows the reports; read from MLflow in a restored Tune run, where a trial stopped early
    sends its last epochs as it stops); none if they are still missing after ``WAIT_S``."""

    WAIT_S, READ_EVERY_S = 60.0, 1.0

    def __init__(self, tracker: tracking.SweepTracker, sweep: Sweep, spec_record: dict[str, Any]):
        self.tracker, self.sweep = tracker, sweep
        self.look = replicate_looks(tracker, spec_record)[1][0]
        self.count = len(sweep.arms()) * self.look  # trials it may add to the Tune run
        self._first_asked: dict[str, float] = {}
        self._read_at: dict[str, float] = {}

    def __call__(self, arm: str, reported: dict[int, int]) -> list[dict[str, Any]] | None:
        now = time.monotonic()
        first = self._first_asked.setdefault(arm, now)
        if now - self._read_at.get(arm, -math.inf) < self.READ_EVERY_S:
            return None  # Tune asks many times a second
        self._read_at[arm] = now
        table = results.from_records(self.tracker.trial_records())
        search = table[(table["phase"] == "search") & (table["arm"] == arm)] if len(table) else table
        recorded = search.groupby("trial_index")["epoch"].max().to_dict() if len(search) else {}
        if any(recorded.get(index, 0) < epoch for index, epoch in reported.items()):
            # Never chosen from part of the records: past WAIT_S the arm's first look runs after
            # the search, in a Tune run of its own, chosen from what is recorded then.
            return None if now - first < self.WAIT_S else []
        try:
            best = results.best_configs(table, [arm], self.sweep.metric, self.sweep.mode)
        except LookupError:
            return []  # the replicate phase says so once the search is over
        done = results.finished_replicates(table)
        return [c for c in replicate_configs(best, self.look) if (c["arm"], c["seed"]) not in done]

    def __getstate__(self):  # pickled with Tune's searcher: the times are this driver's only
        return {**self.__dict__, "_first_asked": {}, "_read_at": {}}


def planned(tracker: tracking.SweepTracker, spec_record: dict[str, Any]) -> stats.Plan:
    """The sweep's sequential plan as first recorded on its parent run (recorded now if new):
    seeds a later run adds outside it are exploratory, however the spec was changed."""
    recorded = tracker.tags().get(PLAN_TAG)
    if recorded:
        looks, spending = recorded.split(":")
        return stats.Plan(tuple(int(n) for n in looks.split(",")), spending)
    plan = report.plan_of(spec_record)
    tracker.set_tags({PLAN_TAG: f"{','.join(map(str, plan.looks))}:{plan.spending}"})
    return plan


def per_example(tracker: tracking.SweepTracker, table, spec_record: dict[str, Any],
                known: dict[tuple[str, int], Any] | None = None) -> dict[tuple[str, int], Any]:
    """Each finished replicate run's per-example test results, when the report metric is test
    accuracy; runs already in ``known`` are not fetched again."""
    if spec_record.get("report_metric", "test_accuracy") != "test_accuracy":
        return {}
    last = results.last_epochs(table, "replicate")
    out = dict(known or {})
    for row in last[~last["status"].isin(FAILURES)].itertuples():
        if (row.arm, int(row.seed)) in out:
            continue
        data = tracker.run_file(row.run_id, results.TEST_CORRECT_FILE)
        if data is not None:
            out[(row.arm, int(row.seed))] = results.unpack_correct(data)
    return out


def make_report(tracker: tracking.SweepTracker, spec_record: dict[str, Any], out: Path,
                correct: dict[tuple[str, int], Any] | None = None) -> str:
    """The results table (from MLflow, unless the tracker follows the reports), the report
    written and logged; returns its summary.
    ``correct``: per-example results already fetched, not fetched again."""
    table = results.from_records(tracker.trial_records())
    out.mkdir(parents=True, exist_ok=True)
    results.write(table, out / results.FILE)
    built = report.build(table, spec_record, out, correct=per_example(tracker, table, spec_record, correct),
                         plan=planned(tracker, spec_record))
    tracker.log_files(out)
    if built.parent:
        tracker.log_summary(built.parent.metrics, built.parent.tags, built.parent.description)
    return built.summary + f"\n\nReport: {built.markdown} (and logged on the parent run {tracker.parent_run_id})"


def summary(outcome, note: str = "", wall: bool = True) -> str:
    """Per arm: trials by status, epochs, training time and the best value; ``wall``: with the
    Tune run's wall time (not for trials that ran in another phase's Tune run)."""
    counts: dict[str, dict[str, int]] = {}
    spent: dict[str, list[float]] = {}
    for trial in outcome.trials:
        arm = counts.setdefault(trial["arm"], {})
        arm[trial["status"]] = arm.get(trial["status"], 0) + 1
        epochs_seconds = spent.setdefault(trial["arm"], [0, 0.0])
        epochs_seconds[0] += trial["epochs"]
        epochs_seconds[1] += trial["train_time_s"]
    took = f", {outcome.wall_s:.0f} s wall time" if wall else ""
    lines = [f"\n{outcome.phase} phase: {len(outcome.trials)} trials, {outcome.epochs} epochs{took}" + (f" ({note})" if note else "")]
    lines.append(f"{'arm':<24}{'trials':>7}{'epochs':>7}{'train s':>9}{'best ' + outcome.metric:>22}  statuses")
    for arm, by_status in counts.items():
        best = outcome.best.get(arm)
        best_text = f"{best:.4f}" if best is not None else "-"
        statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
        epochs, seconds = spent[arm]
        lines.append(f"{arm:<24}{sum(by_status.values()):>7}{epochs:>7}{seconds:>9.0f}{best_text:>22}  {statuses}")
    return "\n".join(lines)

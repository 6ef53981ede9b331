"""The benchmark harness's own logic (bench/ is not a package: loaded by path). The timings
themselves live in BENCHMARKS.md, never in tests."""

import json
import sys
from pathlib import Path

import optuna
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import run  # noqa: E402
import search_efficiency  # noqa: E402

GRID = {"learning_rate": (0.1, 0.01, 0.001), "batch_size": (32, 128)}
# A table where only lr 0.01 / batch 32 reaches the top; bad configurations show it at epoch 1.
CURVES = {(lr, b): ([60.0, 70.0, 80.0, 90.0] if (lr, b) == (0.01, 32) else [20.0, 30.0, 40.0, 50.0 - lr])
          for lr in GRID["learning_rate"] for b in GRID["batch_size"]}


def study(sampler, pruner=None):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner or optuna.pruners.NopPruner())


def test_replay_counts_the_epochs_until_a_good_configuration_finishes():
    names = list(GRID)
    s = study(optuna.samplers.RandomSampler(0))
    for lr in (0.1, 0.001, 0.01):  # two bad ones (4 epochs each), then the good one (4 more)
        s.enqueue_trial({"learning_rate": lr, "batch_size": 32})
    assert search_efficiency.replay(s, CURVES, names, GRID, epochs=4, good=89.5, max_trials=3) == 12
    assert search_efficiency.replay(study(optuna.samplers.RandomSampler(0)), CURVES, names, GRID, 4, good=99, max_trials=5) is None


def test_pruned_trials_cost_only_the_epochs_they_ran():
    names = list(GRID)
    halving = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2)
    spent = search_efficiency.replay(study(optuna.samplers.RandomSampler(0), halving), CURVES, names, GRID, 4, good=89.5, max_trials=50)
    assert spent is not None and 4 <= spent < 4 * 6  # the good one ran all 4; the others were cut short


def test_useful_work_is_epochs_times_the_steady_epoch_and_the_rest_is_overhead():
    import dry_runs
    import pandas as pd

    rows = [  # a: 3 epochs, the first slowed by tracing and a slow start; b: stopped after its one epoch
        {"trial_key": "a", "epoch": 1, "epoch_time_s": 5.0, "trace_time_s": 20.0, "eval_time_s": 2.0, "recalibration_time_s": 1.0},
        {"trial_key": "a", "epoch": 2, "epoch_time_s": 3.0, "eval_time_s": 1.5, "recalibration_time_s": 1.0},
        {"trial_key": "a", "epoch": 3, "epoch_time_s": 3.0, "eval_time_s": 1.5, "recalibration_time_s": 1.0},
        {"trial_key": "b", "epoch": 1, "epoch_time_s": 4.0, "trace_time_s": 10.0, "eval_time_s": 1.0},
    ]
    figures = dry_runs.breakdown(pd.DataFrame(rows), wall_s=50.0, slots=2)
    assert figures["slot_s"] == {"useful": 13.0, "first epochs": 32.0, "evaluation": 3.0, "recalibration": 3.0, "rest": 49.0}
    assert figures["efficiency"] == 13.0 / 100 and figures["trials"] == 2 and figures["epochs"] == 4
    assert figures["ceiling"] == 13.0 / 51  # had nothing outside the trials cost anything


def test_the_bare_and_peer_contenders_are_measured_by_the_same_useful_work():
    # Two processes, 20 s of wall: one trained a 3-epoch and a 1-epoch configuration, the other a 2-epoch one.
    processes = [{"train_s": 13.0, "epoch_s": [[5.0, 3.0, 3.0], [2.0]]}, {"train_s": 7.0, "epoch_s": [[4.0, 3.0]]}]
    figures = run.contender(processes, wall=20.0)
    assert figures["efficiency"] == 20.0 / 40
    assert figures["honest_efficiency"] == (9.0 + 2.0 + 6.0) / 40  # each first epoch counted at the steady time


def test_the_store_without_the_scale_part_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "measure_into", lambda figures, args: pytest.fail("measured despite the bad flags"))
    with pytest.raises(SystemExit) as exit_:
        run.main(["--skip-scale", "--store", str(tmp_path), "--out", str(tmp_path / "out.json")])
    assert exit_.value.code == 2


def test_a_part_that_fails_keeps_what_the_others_measured(tmp_path, monkeypatch):
    def measured_then_failed(figures, args):
        figures["throughput"] = {"ratio": 1.0}
        raise RuntimeError("a bench process failed")

    monkeypatch.setattr(run, "measure_into", measured_then_failed)
    out = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        run.main(["--out", str(out)])
    assert json.loads(out.read_text())["throughput"] == {"ratio": 1.0}

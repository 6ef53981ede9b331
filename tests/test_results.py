"""The results table's own logic, on records shaped like MLflow's (no store needed)."""

import math

import pandas as pd
import pytest

from bnsearch import results
from bnsearch.phases import replicate_configs


def record(phase, arm, index, status, curve, lr, seed=None, test=None, **extra):
    seed = seed if seed is not None else (10_000 + index if phase == "search" else index)
    history = {"val_accuracy": dict(enumerate(curve, start=1)), "epoch": {e: float(e) for e in range(1, len(curve) + 1)}}
    if test is not None:
        history["test_accuracy"] = {len(curve): test}
    params = {"arm": arm, "phase": phase, "trial_index": index, "seed": seed, "learning_rate": lr,
              "hidden_sizes": [32, 32], "bn_placement": arm, "model": "mlp", "dataset.image_size": None, **extra}
    return {"run_id": f"{phase}-{arm}-{index}", "history": history, "params": params,
            "tags": {"sweep_id": "s1", "phase": phase, "arm": arm, "status": status, "trial_key": f"s1/{phase}/{arm}{index}",
                     "seed": str(seed)}}


RECORDS = [
    record("search", "none", 0, "finished", [0.5, 0.7, 0.8], 1e-3, test=0.79),
    record("search", "none", 1, "stopped_early", [0.9], 1e-2),  # best value, but stopped: not eligible
    record("search", "none", 2, "finished", [0.5, 0.8, 0.85], 3e-3, test=0.84),
    record("search", "before", 0, "diverged", [math.nan], 1e30),
    record("search", "before", 1, "finished", [0.6, 0.8, 0.9], 1e-2, test=0.88, bn_momentum=0.99),
    record("search", "before", 2, "finished", [0.3, 0.4, 0.92], 3e-2, test=0.5),  # one lucky last epoch
    record("search", "before", 3, "collapsed", [0.95, 0.96, 0.97], 5e-2, test=0.1),  # a failure, never chosen
    record("replicate", "before", 0, "finished", [0.6, 0.8, 0.9], 1e-2, test=0.88),
    record("replicate", "before", 1, "diverged", [math.nan], 1e-2, test=0.1),
    record("replicate", "none", 0, "finished", [0.5, 0.6, 0.85], 3e-3, test=0.84),
]


def test_one_row_per_trial_and_epoch_with_config_columns():
    table = results.from_records(RECORDS)
    assert len(table) == 3 + 1 + 3 + 1 + 3 + 3 + 3 + 3 + 1 + 3
    assert list(table.columns[:9]) == [*results.IDENTITY, "epoch"]
    assert {"config.learning_rate", "config.hidden_sizes", "config.bn_placement"} <= set(table.columns)
    assert not {"config.arm", "config.seed", "config.model", "config.dataset.image_size"} & set(table.columns)
    trial = table[table["trial_key"] == "s1/search/none0"]
    assert list(trial["epoch"]) == [1, 2, 3] and list(trial["val_accuracy"]) == [0.5, 0.7, 0.8]
    assert trial["test_accuracy"].isna().tolist() == [True, True, False]  # logged after the last epoch only


def test_parquet_round_trip(tmp_path):
    table = results.from_records(RECORDS)
    back = results.load_results(results.write(table, tmp_path / "r.parquet"))
    pd.testing.assert_frame_equal(back, table)


def test_best_configs_prefer_full_budget_trials_on_a_smoothed_value_and_skip_failures():
    best = results.best_configs(results.from_records(RECORDS), ["none", "before"], "val_accuracy", "max")
    assert best["none"]["learning_rate"] == 3e-3  # 0.72 at the full budget beats 0.9 stopped at epoch 1
    # the mean of the last 3 epochs (0.77) beats one lucky last epoch (0.92 after 0.3, 0.4); collapsed never counts
    assert best["before"] == {"learning_rate": 1e-2, "hidden_sizes": [32, 32], "bn_placement": "before", "bn_momentum": 0.99}
    with pytest.raises(LookupError, match="'after'.*: none recorded"):
        results.best_configs(results.from_records(RECORDS), ["after"], "val_accuracy", "max")


def test_an_arm_with_nothing_to_choose_says_how_each_of_its_trials_ended():
    records = [record("search", "before", 0, "diverged", [math.nan], 1e30),
               record("search", "before", 1, "failed", [0.6, 0.7], 1e-2)]
    with pytest.raises(LookupError) as error:
        results.best_configs(results.from_records(records), ["before"], "val_accuracy", "max")
    assert str(error.value).endswith(": trial 0 diverged at epoch 1, no val_accuracy, trial 1 failed at epoch 2")


def test_final_values_in_points_with_failures():
    final = results.final_values(results.from_records(RECORDS), "test_accuracy", "replicate")
    rows = {(r.arm, r.seed): r for r in final.itertuples()}
    assert rows[("before", 0)].value == pytest.approx(88.0) and not rows[("before", 0)].failed
    assert rows[("before", 1)].failed and math.isnan(rows[("before", 1)].value)


def test_replicate_configs_pair_every_arm_on_the_same_seeds():
    configs = replicate_configs({"none": {"learning_rate": 0.1}, "before": {"learning_rate": 0.01}}, seeds=3)
    assert [(c["seed"], c["arm"]) for c in configs] == [(s, a) for s in range(3) for a in ("none", "before")]
    assert all(c["phase"] == "replicate" and c["trial_index"] == c["seed"] == c["split_seed"] for c in configs)
    assert {c["learning_rate"] for c in configs if c["arm"] == "before"} == {0.01}


def test_finished_replicates_are_what_a_second_replicate_run_skips():
    assert results.finished_replicates(results.from_records(RECORDS)) == {("before", 0), ("before", 1), ("none", 0)}
    running = [r for r in RECORDS if r["params"]["phase"] == "search"] + [record("replicate", "none", 5, "failed", [0.5], 1e-3)]
    assert results.finished_replicates(results.from_records(running)) == set()  # a crashed one runs again


def test_collapsed_replicates_are_failures_and_count_as_run():
    records = RECORDS + [record("replicate", "none", 1, "collapsed", [0.1, 0.1, 0.1], 3e-3, test=0.1)]
    final = results.final_values(results.from_records(records), "test_accuracy", "replicate")
    collapsed = final[(final["arm"] == "none") & (final["seed"] == 1)].iloc[0]
    assert collapsed["failed"] and math.isnan(collapsed["value"])
    assert ("none", 1) in results.finished_replicates(results.from_records(records))


def test_per_example_results_pack_a_bit_per_example():
    correct = pd.Series([True, False, True] * 667).to_numpy()[:2000]
    packed = results.pack_correct(correct)
    assert len(packed) < 2000 / 8 + 600  # a bit per example, and the .npz container
    assert (results.unpack_correct(packed) == correct).all()


def test_a_whole_number_parameter_only_some_arms_have_stays_whole(tmp_path):
    records = [record("search", "ghost", 0, "finished", [0.5, 0.6, 0.7], 1e-3, ghost_batch_size=16, bn_epsilon=0.001),
               record("search", "none", 0, "finished", [0.5, 0.6, 0.8], 1e-3)]
    table = results.from_records(records)
    best = results.best_configs(table, ["ghost", "none"], "val_accuracy", "max")
    assert type(best["ghost"]["ghost_batch_size"]) is int and best["ghost"]["ghost_batch_size"] == 16
    assert "ghost_batch_size" not in best["none"] and best["ghost"]["bn_epsilon"] == 0.001
    table.to_parquet(tmp_path / "t.parquet")  # nullable integers survive the store
    assert results.config_of(pd.read_parquet(tmp_path / "t.parquet").iloc[0])["ghost_batch_size"] == 16

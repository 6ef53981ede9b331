"""A real sweep on local Ray (2 CPUs): Ray Tune + Optuna + Keras + MLflow, nothing mocked."""

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import bnsearch
from bnsearch import cli, results

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def finished(finished_sweep):
    code, storage, uri = finished_sweep
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny_mlp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") != "sweep" and r.data.tags["phase"] == "search"]
    return code, client, parents, children, storage


def test_the_sweep_finishes_with_one_parent_and_a_child_per_trial(finished):
    code, _, parents, children, storage = finished
    assert code == 0
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12  # search trials; the replicate ones are checked below
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert len({c.data.tags["trial_key"] for c in children}) == 12  # no duplicates
    assert (storage / "artifacts").is_dir() and (storage / "mlflow.db").is_file()


def test_every_arm_gets_its_budget_and_its_own_search_space(finished):
    _, _, _, children, _ = finished
    by_arm = {}
    for c in children:
        by_arm.setdefault(c.data.tags["arm"], []).append(c)
    assert {arm: len(runs) for arm, runs in by_arm.items()} == {"none": 6, "before": 6}
    for arm, runs in by_arm.items():
        grid = {(r.data.params["learning_rate"], r.data.params["batch_size"]) for r in runs}
        assert len(grid) == 6, f"{arm}: the grid sampler covers every point once"
        assert all(r.data.params["bn_placement"] == arm and r.data.params["phase"] == "search" for r in runs)
    assert all("bn_momentum" not in r.data.params for r in by_arm["none"])
    assert all(r.data.params["bn_momentum"] == "0.99" for r in by_arm["before"])
    seeds = sorted(int(r.data.tags["seed"]) for r in by_arm["none"])
    assert seeds == sorted(int(r.data.tags["seed"]) for r in by_arm["before"]) and len(set(seeds)) == 6


def test_per_epoch_metrics_and_statuses(finished):
    _, client, _, children, _ = finished
    statuses = [c.data.tags["status"] for c in children]
    assert set(statuses) <= {"finished", "stopped_early", "diverged", "collapsed"}
    assert "stopped_early" in statuses, "ASHA stopped no trial"
    assert "diverged" in statuses and "finished" in statuses
    for c in children:
        epochs = [m.step for m in client.get_metric_history(c.info.run_id, "val_accuracy")]
        assert epochs == list(range(1, len(epochs) + 1)) and epochs, c.info.run_name
        status = c.data.tags["status"]
        assert c.info.status == "FINISHED"
        if status == "finished":
            assert len(epochs) == 3 and "test_accuracy" in c.data.metrics
        if status == "stopped_early":
            assert len(epochs) < 3
        if status == "diverged":
            assert c.data.params["learning_rate"] == "1e+30" and c.data.metrics["diverged"] == 1.0
        if status == "collapsed":  # lr 1e-4 SGD: still at chance after its 3 epochs
            assert c.data.params["learning_rate"] == "0.0001" and c.data.metrics["collapsed"] == 1.0
    assert {c.data.params["split_seed"] for c in children} == {"9999"}, "every search trial validates on one split"
    assert all(c.data.tags["bn_moving_variance"] == "biased" and "version.tensorflow" in c.data.tags for c in children)



def test_every_trial_left_its_whole_history_in_one_file(finished, tmp_path):
    """Finished, stopped by ASHA (its report raised SystemExit), diverged: each wrote the file
    the report reads instead of one request per metric, and it holds what MLflow holds; a trial
    of one epoch (ASHA's first rung) needs none, its latest metrics being its history."""
    from bnsearch.tracking import HISTORY_FILE, store

    _, client, _, children, _ = finished
    epochs = [int(c.data.metrics["epoch"]) for c in children]
    assert min(epochs) == 1 < max(epochs)  # both kinds
    for c, last in zip(children, epochs):
        whole = json.dumps(store.read_history(client, c), sort_keys=True)
        assert json.dumps(store.run_history(client, c), sort_keys=True) == whole, c.data.tags["status"]
        files = {a.path for a in client.list_artifacts(c.info.run_id)}
        assert (HISTORY_FILE in files) == (last > 1)
        if last > 1:
            stored = store.decode_history(Path(client.download_artifacts(c.info.run_id, HISTORY_FILE, str(tmp_path))).read_bytes())
            assert json.dumps(stored, sort_keys=True) == whole, c.data.tags["status"]

def test_the_driver_kept_the_table_mlflow_gives_from_its_trials_reports(finished, tmp_path):
    """The results table the driver decided on and reported (kept from what the trials reported
    to Tune, no MLflow read) is the one a new reader rebuilds from MLflow, row for row."""
    from bnsearch import tracking

    _, client, parents, _, storage = finished
    reader = tracking.SweepTracker(client.tracking_uri, "tiny_mlp", create=False)
    reader.open_sweep(parents[0].data.tags["sweep_id"])
    rebuilt = results.write(results.from_records(reader.trial_records()), tmp_path / results.FILE)
    kept = next(storage.glob("tiny_mlp-*/report")) / results.FILE
    pd.testing.assert_frame_equal(pd.read_parquet(kept), pd.read_parquet(rebuilt))
    assert set(pd.read_parquet(kept)["phase"]) == {"search", "replicate"}


def test_the_parent_run_records_spec_and_versions(finished, tmp_path):
    _, client, parents, _, _ = finished
    parent = parents[0]
    assert {"spec.json", "versions.json"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    versions = json.loads(Path(client.download_artifacts(parent.info.run_id, "versions.json", str(tmp_path))).read_text())
    spec = json.loads(Path(client.download_artifacts(parent.info.run_id, "spec.json", str(tmp_path))).read_text())
    assert versions["ray"][0].isdigit() and versions["tensorflow"][0].isdigit()
    assert spec["nuisance"]["learning_rate"]["values"] == [1e-4, 0.1, 1e30] and spec["dry_run"] is False
    assert parent.data.params["trials_per_arm"] == "6" and parent.data.params["sampler"] == "grid"


def replicate_runs(client, parent):
    return client.search_runs([parent.info.experiment_id], max_results=1000,
                              filter_string=f"tags.phase = 'replicate' and tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def test_replicate_reruns_each_arms_best_config_on_the_same_fresh_seeds(finished):
    _, client, parents, search_runs, _ = finished
    runs = replicate_runs(client, parents[0])
    assert len(runs) == 2 * 3 and {r.data.tags["status"] for r in runs} == {"finished"}
    seeds = {arm: sorted(int(r.data.tags["seed"]) for r in runs if r.data.tags["arm"] == arm) for arm in ("none", "before")}
    assert seeds == {"none": [0, 1, 2], "before": [0, 1, 2]}  # paired, and disjoint from the search seeds
    assert not set(seeds["none"]) & {int(r.data.tags["seed"]) for r in search_runs}
    for arm in ("none", "before"):
        finished_search = [r for r in search_runs if r.data.tags["arm"] == arm and r.data.tags["status"] == "finished"]
        smoothed = lambda r: sum(m.value for m in client.get_metric_history(r.info.run_id, "val_accuracy")[-3:])  # noqa: E731
        best = max(finished_search, key=smoothed)  # chosen on the mean of its last 3 epochs
        for r in (r for r in runs if r.data.tags["arm"] == arm):
            assert (r.data.params["learning_rate"], r.data.params["batch_size"]) == (best.data.params["learning_rate"], best.data.params["batch_size"])
            steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_accuracy")]
            assert steps == [1, 2, 3] and "test_accuracy" in r.data.metrics  # full budget, no early stopping
            assert r.data.params["split_seed"] == r.data.tags["seed"]  # each seed re-draws its validation split


def test_every_replicate_run_keeps_which_test_examples_it_got_right(finished, tmp_path):
    _, client, parents, _, storage = finished
    from bnsearch import tracking

    tracker = tracking.SweepTracker(f"sqlite:///{storage}/mlflow.db", "tiny_mlp", create=False)
    for r in replicate_runs(client, parents[0]):
        correct = results.unpack_correct(tracker.run_file(r.info.run_id, "test_correct.npz"))
        assert len(correct) == r.data.metrics["test_examples"] == 359 and abs(correct.mean() - r.data.metrics["test_accuracy"]) < 1e-9
        if r.data.tags["arm"] == "before":
            assert tracker.run_file(r.info.run_id, "bn_layers.json") is not None


def test_the_report_and_results_table_are_logged_and_load_in_one_call(finished, tmp_path):
    _, client, parents, search_runs, storage = finished
    parent = parents[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "report.html", "results.parquet", "plots"} <= logged
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert plots == {"plots/seeds.png", "plots/differences.png", "plots/learning_curves.png", "plots/search.png",
                     "plots/tuning_budget.png"}
    table = bnsearch.load_results("tiny_mlp", tracking_uri=f"sqlite:///{storage}/mlflow.db")
    epochs = sum(len(client.get_metric_history(r.info.run_id, "epoch")) for r in search_runs + replicate_runs(client, parent))
    assert len(table) == epochs and set(table["phase"]) == {"search", "replicate"}
    assert {"config.learning_rate", "test_accuracy", "epoch_time_s", "status", "seed"} <= set(table.columns)
    report = Path(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path))).read_text()
    assert "## Verdicts" in report and "**before vs none** (difference" in report
    assert any(f"**{verdict}**" in report for verdict in ("supported", "refuted", "inconclusive"))


def test_report_command_rebuilds_the_report_from_mlflow_alone(finished, capsys):
    _, client, parents, _, storage = finished
    report_dir = next(storage.glob("tiny_mlp-*/report"))
    for path in report_dir.rglob("*"):
        path.unlink() if path.is_file() else None
    assert cli.main(["report", "tiny_mlp", "--storage", str(storage)]) == 0
    assert "before vs none (difference)" in capsys.readouterr().out
    assert (report_dir / "report.md").stat().st_size > 1000 and (report_dir / "report.html").is_file()
    assert cli.main(["report", "no-such-experiment", "--storage", str(storage)]) == 2


def test_the_replicate_phase_follows_its_sequential_plan(finished, tmp_path):
    """Looks at 2 and 3 seeds (tiny_mlp's plan): one Tune run per look it reached, the plan recorded
    on the parent, and the report's verdict resting on the seeds the plan used."""
    _, client, parents, _, storage = finished
    parent = parents[0]
    assert parent.data.tags["replicate_plan"] == "2,3:obrien_fleming"
    report = Path(client.download_artifacts(parent.info.run_id, "report.md", str(tmp_path))).read_text()
    assert "## Sequential plan" in report and "Looks at 2, 3 seeds per arm" in report
    assert "include the fixed test set's sampling error" in report  # from every run's test_correct.npz
    seeds = {int(r.data.tags["seed"]) for r in replicate_runs(client, parent)}
    # The first look runs in the search's own Tune run; each later look in one of its own.
    tune_runs = sorted(p.name.rsplit("-", 1)[1] for p in storage.glob("tiny_mlp-*-replicate-seeds*"))
    if "stopped at 2 seeds per arm" in report:  # every comparison decided (or futile) at the first look
        assert seeds == {0, 1} and tune_runs == []
    else:
        assert seeds == {0, 1, 2} and tune_runs == ["seeds3"]


def test_the_first_look_trains_in_processes_the_search_warmed(finished):
    """Each arm's first-look replicates join the search's Tune run as its search ends: they go
    on in the search's trial processes (TensorFlow loaded, models kept) instead of new ones."""
    storage = finished[-1]
    pids = {"search": set(), "replicate": set()}
    for result_file in next(storage.glob("tiny_mlp-*-search")).glob("*/result.json"):
        first = json.loads(result_file.read_text().splitlines()[0])
        pids[first["config"]["phase"]].add(first["pid"])
    assert pids["replicate"] & pids["search"]  # Tune keeps at least one process for the trials it knows are coming


def test_replicating_again_repeats_nothing_and_more_seeds_add_only_the_new_ones(finished, capsys):
    code, client, parents, _, storage = finished
    sweep = str(Path(__file__).parent / "sweeps" / "tiny_mlp.py")
    before = len(replicate_runs(client, parents[0]))
    assert cli.main(["run", sweep, "--storage", str(storage), "--phase", "replicate"]) == 0
    assert f"0 runs to go, {before} already finished" in capsys.readouterr().out
    assert len(replicate_runs(client, parents[0])) == before
    try:
        assert cli.main(["run", sweep, "--storage", str(storage), "--phase", "replicate", "--seeds", "4"]) == 0
    finally:
        import ray

        ray.shutdown()
    assert "beyond the plan's 3 (exploratory)" in capsys.readouterr().out
    runs = replicate_runs(client, parents[0])
    assert sorted((r.data.tags["arm"], int(r.data.tags["seed"])) for r in runs) == [
        (arm, seed) for arm in ("before", "none") for seed in range(4)]
    assert len({r.data.tags["trial_key"] for r in runs}) == 8
    assert cli.main(["report", "tiny_mlp", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "before vs none (difference), EXPLORATORY" in out and "4 seeds per arm" in out  # the added seeds decide nothing


def test_every_arm_learns_and_verdicts_use_accuracy_the_network_really_has(finished):
    """The README's main job, in small: no arm at chance, and the accuracy the verdict uses
    (precise BN statistics) within 5 points of what the network computes with batch statistics."""
    _, _, _, _, storage = finished
    table = bnsearch.load_results("tiny_mlp", tracking_uri=f"sqlite:///{storage}/mlflow.db")
    last = results.last_epochs(table, "replicate")
    for arm, runs in last.groupby("arm"):
        assert runs["test_accuracy"].mean() >= 3 * 0.1, arm  # digits: 10 classes
    bn = last[last["arm"] == "before"]
    assert (bn["test_accuracy"] - bn["test_accuracy_batch"]).abs().max() < 0.05
    assert (bn["test_accuracy"] == bn["test_accuracy_precise"]).all() and bn["config.bn_statistics"].eq("precise").all()

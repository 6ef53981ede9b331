"""A real sweep on local Ray (2 CPUs): Ray Tune + Optuna + Keras + MLflow, nothing mocked."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bnsearch import cli, tracking

pytestmark = pytest.mark.integration
SWEEP = Path(__file__).parent / "sweeps" / "tiny_mlp.py"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    import ray

    storage = tmp_path_factory.mktemp("results")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        code = cli.main(["run", str(SWEEP), "--storage", str(storage)])
    finally:
        ray.shutdown()
    client = MlflowClient(tracking.default_tracking_uri(storage))
    experiment = client.get_experiment_by_name("tiny_mlp")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") != "sweep"]
    return code, client, parents, children, storage


def test_the_sweep_finishes_with_one_parent_and_a_child_per_trial(finished):
    code, _, parents, children, storage = finished
    assert code == 0
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 12
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
    assert set(statuses) <= {"finished", "stopped_early", "diverged"}
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
    assert all(c.data.tags["bn_moving_variance"] == "biased" and "version.tensorflow" in c.data.tags for c in children)


def test_the_parent_run_records_spec_and_versions(finished, tmp_path):
    _, client, parents, _, _ = finished
    parent = parents[0]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"spec.json", "versions.json"}
    versions = json.loads(Path(client.download_artifacts(parent.info.run_id, "versions.json", str(tmp_path))).read_text())
    spec = json.loads(Path(client.download_artifacts(parent.info.run_id, "spec.json", str(tmp_path))).read_text())
    assert versions["ray"][0].isdigit() and versions["tensorflow"][0].isdigit()
    assert spec["nuisance"]["learning_rate"]["values"] == [1e-4, 0.1, 1e30] and spec["dry_run"] is False
    assert parent.data.params["trials_per_arm"] == "6" and parent.data.params["sampler"] == "grid"

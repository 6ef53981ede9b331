"""A model of the user's own, by import path: inspected, refused where it cannot be rewritten,
and run end to end as a dry run on local Ray, MLflow and Keras."""

import textwrap

import pytest
from mlflow.tracking import MlflowClient

from bnsearch import cli, tracking
from bnsearch.models.norms import make_norm
from bnsearch.models.blocks import Norm
from tests.conftest import ROOT
from tests.usermodels import nets

SWEEP = str(ROOT / "tests" / "sweeps" / "user_resnet.py")


def test_inspect_shows_every_arm_as_it_will_be_trained(capsys):
    assert cli.main(["inspect", SWEEP]) == 0
    out = capsys.readouterr().out
    for placement in ("none", "before", "after"):
        norm = Norm(placement, kind="ghost", ghost_batch_size=16)
        params = nets.resnet((8, 8, 1), 10, width=8, placement=placement, norm=lambda n, s: make_norm(norm, n, s)).count_params()
        assert f"arm {placement}: {params:,} parameters" in out
    assert "stem: Conv2D(no bias) → GhostBN(virtual batch 16, momentum 0.99, ε 0.001) → ReLU" in out
    assert "stem: Conv2D(bias) → ReLU → GhostBN(virtual batch 16" in out
    assert "block1_proj_bn: GhostBN" in out and "searched per arm (shown at their defaults): learning_rate" in out


def write_sweep(tmp_path, model: str):
    path = tmp_path / "sweep.py"
    path.write_text(textwrap.dedent(f"""
        from bnsearch.spec import Sweep
        def get_sweep(dry_run=False):
            return Sweep(name="mine", model={model!r}, dataset="digits", scientific={{"bn_placement": ("none", "before")}})
    """))
    return str(path)


@pytest.mark.parametrize("model, message", [
    ("tests.usermodels.nets:subclassed", "model: tests.usermodels.nets:subclassed cannot be used: "
                                         "model 'subclassed' is a subclassed keras.Model with its own call()"),
    ("tests.usermodels.nets:broken", "model: tests.usermodels.nets:broken cannot be used: ZeroDivisionError: division by zero"),
    ("tests.usermodels.nets:missing", "model: cannot import 'tests.usermodels.nets:missing' (AttributeError"),
    ("no_such_package.nets:resnet", "model: cannot import 'no_such_package.nets:resnet' (ModuleNotFoundError"),
])
def test_a_model_that_cannot_be_used_is_refused_on_the_driver_before_anything_starts(tmp_path, capsys, model, message):
    import ray

    code = cli.main(["run", write_sweep(tmp_path, model), "--storage", str(tmp_path / "results")])
    assert code == 2 and message in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "results" / "mlflow.db").exists()


@pytest.mark.integration
def test_a_sweep_over_a_user_model_runs_end_to_end(tmp_path):
    import ray

    ray.init("local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # the user's package, importable on every node
    try:
        code = cli.main(["run", SWEEP, "--dry-run", "--storage", str(tmp_path)])
    finally:
        ray.shutdown()
    assert code == 0
    client = MlflowClient(tracking.default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("user_resnet-dry-run")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("role") != "sweep"]
    assert len(runs) == 3 * (2 + 2)
    assert {r.data.tags["status"] for r in runs} <= {"finished", "stopped_early"}
    assert all(r.data.params["model"] == "tests.usermodels.nets:resnet" for r in runs)
    with_bn = [r for r in runs if r.data.params["bn_placement"] != "none"]
    assert with_bn and all(r.data.params["norm"] == "ghost" and r.data.params["ghost_batch_size"] == "16" for r in with_bn)
    assert all("norm" not in r.data.params for r in runs if r.data.params["bn_placement"] == "none")
    replicate = [r for r in with_bn if r.data.tags["phase"] == "replicate"]
    assert all(r.data.metrics["bn_layers"] == 6 for r in replicate)  # 3 sites + 3 BNs before the adds, recalibrated
    # Ghost BN learns digits in two epochs; without BN the ResNet is slower but above chance (0.1)
    assert min(r.data.metrics["test_accuracy"] for r in replicate) > 0.85
    assert min(r.data.metrics["test_accuracy"] for r in runs if r.data.tags["phase"] == "replicate") > 0.2


@pytest.mark.integration
def test_with_a_dataset_only_a_worker_can_load_the_model_is_refused_there_before_anything_is_recorded(tmp_path, capsys, monkeypatch):
    import ray

    from bnsearch import data

    monkeypatch.setattr(data, "needs_worker", lambda name: True)  # as for a Keras download: the driver cannot check
    ray.init("local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        code = cli.main(["run", write_sweep(tmp_path, "tests.usermodels.nets:subclassed"), "--storage", str(tmp_path)])
    finally:
        ray.shutdown()
    assert code == 2
    assert "model: tests.usermodels.nets:subclassed cannot be used: model 'subclassed' is a subclassed" in capsys.readouterr().err
    client = MlflowClient(tracking.default_tracking_uri(tmp_path))
    experiment = client.get_experiment_by_name("mine")
    assert experiment is None or not client.search_runs([experiment.experiment_id])  # no parent run opened


def test_inspect_of_a_dataset_that_cannot_be_loaded_is_one_line(tmp_path, capsys):
    path = tmp_path / "sweep.py"
    path.write_text(textwrap.dedent(f"""
        from bnsearch.spec import Sweep
        def get_sweep(dry_run=False):
            return Sweep(name="mine", model="mlp", dataset="npz", dataset_args={{"path": {str(tmp_path / 'none.npz')!r}}},
                         scientific={{"bn_placement": ("none", "before")}})
    """))
    assert cli.main(["inspect", str(path)]) == 2
    assert "dataset: npz cannot be loaded here (FileNotFoundError" in capsys.readouterr().err

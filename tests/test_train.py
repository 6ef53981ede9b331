import math
import os

import pytest

from bnsearch import train

CONFIG = {"seed": 3, "bn_placement": "before", "learning_rate": 0.01, "batch_size": 64, "hidden_sizes": (16,)}


class Recorder:
    def __init__(self, keep_checkpoint_at=None, tmp=None):
        self.reports, self.keep_at, self.tmp, self.kept = [], keep_checkpoint_at, tmp, None

    def __call__(self, metrics, checkpoint_dir):
        self.reports.append((metrics, checkpoint_dir and sorted(os.listdir(checkpoint_dir))))
        if checkpoint_dir and metrics["epoch"] == self.keep_at:
            import shutil

            self.kept = shutil.copytree(checkpoint_dir, self.tmp / "kept")


def fit(config=CONFIG, epochs=3, report=None, restore_dir=None, model="mlp", dataset="digits", checkpoint_every_s=0.0):
    report = report or Recorder()
    final = train.run(config, model=model, dataset=dataset, dataset_args={}, max_epochs=epochs, report=report, restore_dir=restore_dir,
                      checkpoint_every_s=checkpoint_every_s)
    return final, report


def test_reports_every_epoch_with_checkpoints_and_test_accuracy_at_the_end():
    final, rec = fit()
    assert [m["epoch"] for m, _ in rec.reports] == [1, 2, 3]
    for metrics, files in rec.reports[:-1]:
        assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s", "samples_per_s", "train_time_s"} <= set(metrics)
        assert files == [train.MODEL_FILE, train.STATE_FILE] and "test_accuracy" not in metrics
    assert rec.reports[-1][1] is None and final["test_accuracy"] > 0.8  # digits: an MLP learns it
    assert final["diverged"] == 0.0 and final["train_time_s"] == pytest.approx(sum(m["epoch_time_s"] for m, _ in rec.reports))


def test_same_seed_same_result_and_another_seed_differs():
    a, _ = fit(epochs=2)
    b, _ = fit(epochs=2)
    c, _ = fit({**CONFIG, "seed": 4}, epochs=2)
    assert a["val_loss"] == b["val_loss"]
    assert a["val_loss"] != c["val_loss"]


def test_a_diverging_run_stops_and_is_reported_as_diverged():
    final, rec = fit({**CONFIG, "bn_placement": "none", "optimizer": "sgd", "learning_rate": 1e30}, epochs=5)
    assert len(rec.reports) == 1 and final["diverged"] == 1.0 and not math.isfinite(final["loss"])


def test_a_diverged_run_with_bn_reports_no_bn_diagnostics():
    final, _ = fit({**CONFIG, "optimizer": "sgd", "learning_rate": 1e30}, epochs=3)
    assert final["diverged"] == 1.0 and not any(k.startswith("bn_") for k in final)  # NaN weights


def test_resume_from_a_checkpoint_continues_where_it_stopped(tmp_path):
    _, first = fit(epochs=3, report=Recorder(keep_checkpoint_at=1, tmp=tmp_path))
    final, resumed = fit(epochs=3, restore_dir=str(first.kept))
    assert [m["epoch"] for m, _ in resumed.reports] == [2, 3]
    assert final["train_time_s"] > resumed.reports[0][0]["epoch_time_s"]  # carries time from before
    assert final["bn_layers"] == 1.0 and final["bn_stale_stats"] == 0.0  # diagnoses the restored model


def test_mnist1d_convnet_trains():
    config = {"seed": 0, "bn_placement": "before", "bn_momentum": 0.9, "learning_rate": 0.01, "batch_size": 32}
    final, _ = fit(config, epochs=3, model="convnet", dataset="mnist1d")
    assert final["accuracy"] > 0.2 and final["test_accuracy"] > 0.2  # chance is 0.1


def test_environment_records_versions_and_bn_convention():
    env = train.environment()
    assert env["bn_moving_variance"] == "biased" and env["version.keras"].startswith("3.")


def test_checkpoints_are_spaced_by_time():
    _, rec = fit(epochs=4, checkpoint_every_s=3600)  # none due within the hour: the epochs report without one
    assert [files for _, files in rec.reports] == [None] * 4
    assert [m["epoch"] for m, _ in rec.reports] == [1, 2, 3, 4]


def test_a_fractional_gpu_share_becomes_a_tensorflow_memory_limit():
    assert train.gpu_memory_limit_mb(0.25, 16_384) == 4096 - train.GPU_PROCESS_OVERHEAD_MB
    assert train.gpu_memory_limit_mb(0.5, 81_559, overhead_mb=0) == 40_779
    # four 0.25 trials and their CUDA contexts fit in the GPU
    assert 4 * (train.gpu_memory_limit_mb(0.25, 15_360) + train.GPU_PROCESS_OVERHEAD_MB) <= 15_360
    with pytest.raises(ValueError, match="larger gpu share"):
        train.gpu_memory_limit_mb(0.05, 16_384)


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two GPUs seen by TensorFlow, and what limit_gpu_memory asks of them."""
    calls = {"queried": [], "limits": {}, "growth": []}
    monkeypatch.setattr(train.tf.config, "list_physical_devices", lambda kind: ["gpu:0", "gpu:1"] if kind == "GPU" else [])
    monkeypatch.setattr(train.tf.config, "set_logical_device_configuration",
                        lambda gpu, configs: calls["limits"].setdefault(gpu, [c.memory_limit for c in configs]))
    monkeypatch.setattr(train.tf.config.experimental, "set_memory_growth", lambda gpu, on: calls["growth"].append(gpu))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-5e1b")  # what Ray sets: ids of the GPUs this trial was given
    return calls


def test_limit_gpu_memory_caps_every_visible_gpu_by_its_own_size(fake_gpus, monkeypatch):
    sizes = {"3": 16_384, "GPU-5e1b": 24_576}
    monkeypatch.setattr(train, "gpu_total_mb", lambda device: fake_gpus["queried"].append(device) or sizes[device])
    train.setup_tensorflow(gpu_share=0.25)
    assert fake_gpus["queried"] == ["3", "GPU-5e1b"]
    assert fake_gpus["limits"] == {"gpu:0": [train.gpu_memory_limit_mb(0.25, 16_384)],
                                   "gpu:1": [train.gpu_memory_limit_mb(0.25, 24_576)]}


def test_without_nvidia_smi_gpus_grow_on_demand_and_whole_gpus_are_left_alone(fake_gpus, monkeypatch):
    def no_nvidia_smi(device):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(train, "gpu_total_mb", no_nvidia_smi)
    train.setup_tensorflow(gpu_share=0.5)
    assert fake_gpus["growth"] == ["gpu:0", "gpu:1"] and not fake_gpus["limits"]
    for whole in (0, 1):
        train.setup_tensorflow(gpu_share=whole)
    assert fake_gpus["growth"] == ["gpu:0", "gpu:1"] and not fake_gpus["limits"]

import io
import json
import math
import os
import platform

import pytest

from bnsearch import compiled, results, train

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
    model, vector = env["machine.cpu"].split("; ")
    assert model and (vector or platform.machine() not in ("x86_64", "AMD64"))  # x86 has AVX at least


def test_the_cpu_description_names_the_model_and_the_instruction_sets_oneDNN_picks_by(monkeypatch):
    import builtins

    cpuinfo = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu sse2 avx2 fma amx_tile avx512f\n"
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: io.StringIO(cpuinfo) if path == "/proc/cpuinfo" else real_open(path, *a, **k))
    assert train.cpu_description.__wrapped__() == "Test CPU; amx_tile avx2 avx512f fma"


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


STEP_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "val_accuracy_moving", "val_accuracy_precise")


def test_a_resumed_run_continues_the_same_run(tmp_path):
    """Data order from (seed, epoch), the schedule from the optimizer's step count, moving
    statistics untouched by recalibration: resumed at epoch 1, epochs 2-4 match."""
    config = {**CONFIG, "lr_schedule": "cosine", "warmup_epochs": 1}
    whole, uninterrupted = fit(config, epochs=4, report=Recorder(keep_checkpoint_at=1, tmp=tmp_path))
    final, resumed = fit(config, epochs=4, restore_dir=str(uninterrupted.kept))
    assert [m["epoch"] for m, _ in resumed.reports] == [2, 3, 4]
    for (a, _), (b, _) in zip(uninterrupted.reports[1:], resumed.reports):
        for key in STEP_METRICS:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert final["test_accuracy"] == pytest.approx(whole["test_accuracy"], abs=1e-9)


def test_each_epoch_has_its_own_order_from_seed_and_epoch():
    a, b = train.epoch_order(3, 0, 100), train.epoch_order(3, 1, 100)
    assert sorted(a) == list(range(100)) and (a != b).any()
    assert (train.epoch_order(3, 1, 100) == b).all() and (train.epoch_order(4, 1, 100) != b).any()


def test_warmup_then_constant_or_cosine():
    steps, epochs = 10, 3
    cosine = compiled.learning_rate({"learning_rate": 0.1, "lr_schedule": "cosine", "warmup_epochs": 1}, steps, epochs)
    constant = compiled.learning_rate({"learning_rate": 0.1, "warmup_epochs": 1}, steps, epochs)
    at = lambda schedule, step: float(schedule(step))  # noqa: E731
    assert at(cosine, 0) == 0.0 and at(cosine, 5) == pytest.approx(0.05) and at(cosine, 10) == pytest.approx(0.1)
    assert at(cosine, 20) == pytest.approx(0.05) and at(cosine, 30) == pytest.approx(0.0, abs=1e-9)
    assert at(constant, 5) == pytest.approx(0.05) and at(constant, 10) == at(constant, 30) == pytest.approx(0.1)
    plain = compiled.learning_rate({"learning_rate": 0.1}, steps, epochs)  # no schedule asked: constant from step 0
    assert at(plain, 0) == at(plain, 30) == pytest.approx(0.1, rel=1e-7)


def test_a_run_that_does_not_learn_is_collapsed_not_finished():
    final, rec = fit({**CONFIG, "bn_placement": "none", "optimizer": "sgd", "learning_rate": 1.0, "batch_size": 32}, epochs=3)
    assert final["collapsed"] == 1.0 and final["diverged"] == 0.0 and math.isfinite(final["loss"])
    assert final["accuracy"] < 0.15 and "test_accuracy" in final  # at chance (10 classes), evaluated, not NaN


def test_the_collapse_rule_spares_slow_starts_and_stops_a_run_that_learned_then_died():
    def reporter(max_epochs):
        return train.EpochReporter(None, 1, {"epoch": 0, "train_time_s": 0.0}, max_epochs, None, chance=(0.1, math.log(10)))
    at_chance, learned = {"accuracy": 0.11, "loss": 2.30}, {"val_accuracy": 0.35, "val_loss": 2.0}
    slow = reporter(10)
    assert not any(slow.collapsed(at_chance) for _ in range(10))  # not yet learning
    assert slow.never_learned(at_chance, {"val_accuracy": 0.11, "val_loss": 2.30})  # still at chance at the end of its budget
    assert not slow.never_learned(at_chance, learned)  # its last epoch's average lags: the final weights learned
    assert not slow.never_learned({"accuracy": 0.3, "loss": 2.0}, {"val_accuracy": 0.11, "val_loss": 2.30})
    died = reporter(10)
    assert not died.collapsed({"accuracy": 0.6, "loss": 1.2})
    assert not died.collapsed({"accuracy": 0.11, "loss": 1.9})  # the loss says it still discriminates
    assert died.collapsed(at_chance)


def test_a_run_that_learns_late_in_its_only_epoch_is_not_collapsed():
    # Adam at 1e-3 without BN: its one epoch averages at chance, its final weights have learned.
    final, _ = fit({**CONFIG, "bn_placement": "none", "optimizer": "adam", "learning_rate": 0.001, "seed": 2}, epochs=1)
    chance_loss = train.COLLAPSE_LOSS_FRACTION * math.log(10)
    assert final["accuracy"] < 0.1 + 0.9 * train.COLLAPSE_ACCURACY_MARGIN and final["loss"] > chance_loss  # the epoch: at chance
    assert final["val_accuracy"] > 0.2 and final["collapsed"] == 0.0 and "test_accuracy" in final


def test_precise_statistics_measure_the_network_where_lagging_moving_ones_measure_the_lag():
    config = {**CONFIG, "bn_momentum": 0.999, "hidden_sizes": (32, 32)}  # ~40 steps: the averages barely move
    final, _ = fit(config, epochs=2)
    assert final["val_accuracy_precise"] > 0.9 and final["val_accuracy_precise"] - final["val_accuracy_moving"] > 0.2  # 0.98 vs 0.70
    assert final["val_accuracy"] == final["val_accuracy_precise"] and final["test_accuracy"] == final["test_accuracy_precise"]
    assert abs(final["test_accuracy"] - final["test_accuracy_batch"]) < 0.05  # what the network does with batch statistics
    moving, _ = fit({**config, "bn_statistics": "moving"}, epochs=2)
    assert moving["val_accuracy"] == moving["val_accuracy_moving"] == pytest.approx(final["val_accuracy_moving"])


def test_the_validation_split_follows_split_seed_and_the_last_epoch_keeps_per_example_results(monkeypatch):
    drawn, split = [], train.datasets.split
    monkeypatch.setattr(train.datasets, "split", lambda arrays, seed, fraction: drawn.append(seed) or split(arrays, seed, fraction))
    files = {}
    final = train.run({**CONFIG, "seed": 1, "split_seed": 7}, model="mlp", dataset="digits", dataset_args={}, max_epochs=1,
                      report=lambda m, c: None, keep=files.update)
    train.run({**CONFIG, "seed": 2}, model="mlp", dataset="digits", dataset_args={}, max_epochs=1, report=lambda m, c: None)
    assert drawn == [7, 2]  # the split seed when given (the search phase shares one), else the seed
    correct = results.unpack_correct(files[train.TEST_CORRECT_FILE])
    assert len(correct) == 359 and correct.mean() == pytest.approx(final["test_accuracy"])  # digits' fixed test set
    layers = json.loads(files[train.BN_LAYERS_FILE])
    assert [r["layer"] for r in layers] == ["dense0_bn"] and layers[0]["channels"] == 16


def test_evaluation_leaves_the_model_as_training_left_it():
    """Recalibration and batch-statistics predictions run BN in training mode, which moves the
    moving statistics: every non-trainable variable must be back, bit for bit, afterwards."""
    splits = train.datasets.split(train.datasets.load("digits"), 0, 0.1)
    model = compiled.build_model("mlp", {"bn_placement": "before", "hidden_sizes": (16,)}, splits.input_shape, splits.num_classes)
    compiled.compile_model(model, compiled.make_optimizer({}))
    model.fit(train.datasets.tf_dataset(*splits.train, 64), epochs=1, verbose=0)
    before = [v.numpy().copy() for v in model.variables]
    train.Evaluator(compiled.Compiled.of(model), splits, 64, None, "precise").evaluate(final=True, diverged=False)
    assert all((a == v.numpy()).all() for a, v in zip(before, model.variables))


def test_larger_inference_batches_score_what_training_sized_ones_do(monkeypatch):
    """Inference is per example: the evaluation's larger batches change how many calls, not a score."""
    splits = train.datasets.split(train.datasets.load("digits"), 0, 0.1)
    model = compiled.build_model("mlp", {"bn_placement": "before", "hidden_sizes": (16,)}, splits.input_shape, splits.num_classes)
    compiled.compile_model(model, compiled.make_optimizer({}))
    model.fit(train.datasets.tf_dataset(*splits.train, 32), epochs=1, verbose=0)
    trained = compiled.Compiled.of(model)

    def metrics(size):
        monkeypatch.setattr(train, "INFERENCE_BATCH", size)
        evaluator = train.Evaluator(trained, splits, 32, None, "precise")
        return evaluator, evaluator.evaluate(final=True, diverged=False)

    (large, in_256), (_, in_32) = metrics(256), metrics(1)
    assert len(large.inference["test"]) == 2 and len(large.batches["test"]) == 12  # 359 test examples
    assert in_256.keys() == in_32.keys()
    for key in in_256:
        if not key.endswith("time_s"):
            assert in_256[key] == pytest.approx(in_32[key], rel=1e-5, abs=1e-6), key


def test_epoch_time_counts_training_steps_only():
    compiled.forget()  # a model kept from an earlier test would not trace at all
    final, rec = fit(epochs=3)
    first, later = rec.reports[0][0], [m for m, _ in rec.reports[1:]]
    assert first["trace_time_s"] > 0 and all("trace_time_s" not in m for m in later)  # tracing: start-up, once
    assert all(m["eval_time_s"] > 0 and m["recalibration_time_s"] > 0 for m, _ in rec.reports)
    assert first["trace_time_s"] > 2 * first["epoch_time_s"]  # the MLP's trace (~0.9 s) is not training (~0.04 s)


@pytest.mark.parametrize("norm", ["group", "layer", "ghost", "renorm"])
def test_each_norm_variant_trains_and_recalibrates_only_where_it_has_moving_statistics(norm):
    files = {}
    final = train.run({**CONFIG, "seed": 0, "norm": norm, "norm_groups": 4, "ghost_batch_size": 8}, model="mlp",
                      dataset="digits", dataset_args={}, max_epochs=1, report=lambda m, c: None, keep=files.update)
    layers = json.loads(files[train.BN_LAYERS_FILE])
    assert final["test_accuracy"] > 0.5 and not final["collapsed"]  # it learns in one epoch
    if norm in ("group", "layer"):
        assert "recalibration_time_s" not in final and "bn_mean_shift" not in final
        assert [r["layer"] for r in layers] == ["dense0_bn"] and "no moving statistics" in layers[0]["skipped"]
    else:
        assert "recalibration_time_s" in final and final["bn_layers"] == 1.0 and layers[0]["channels"] == 16

"""One training run, Keras only: build, compile, fit epoch by epoch, evaluate.

Imported only inside trial workers, never on the driver. It knows nothing of Ray or MLflow: results leave through ``report(metrics, checkpoint_dir)``,
called once per epoch, and a run resumes from a checkpoint directory it wrote earlier.
Every random stream (weight init, dropout, data order, validation split) derives from
``config["seed"]``. The final report also carries the BN diagnostics of
:mod:`bnsearch.diagnostics` (``bn_*`` keys).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bnsearch import data as datasets
from bnsearch.diagnostics import bn_diagnostics
from bnsearch.models import Norm, create_model, model_parameters
from bnsearch.spec import DEFAULTS

Report = Callable[[dict[str, float], "str | None"], None]
MODEL_FILE, STATE_FILE = "model.keras", "state.json"
# Several steps per tf.function call: +55% on small MLPs on CPU, same results.
STEPS_PER_EXECUTION = 8
# The BN diagnostics' population statistics use about this many training samples (whole
# batches): enough for per-channel means to ~1% of a standard deviation, and a fraction of an
# epoch for MobileNetV2 on CIFAR-10.
DIAGNOSTIC_SAMPLES, DIAGNOSTIC_BATCH = 10_000, 500
# GPU memory a TensorFlow process uses outside its allocator's limit (CUDA context, cuDNN and
# cuBLAS handles), taken off each fractional trial's share so that four 0.25 trials fit.
GPU_PROCESS_OVERHEAD_MB = 1024


def setup_tensorflow(cpu_threads: int | None = None, gpu_share: float = 0) -> None:
    """Pin TensorFlow's thread pools to the trial's CPU share and, with a fractional GPU,
    its memory to the trial's share of the GPU; call before any TF work."""
    try:
        if cpu_threads:
            tf.config.threading.set_intra_op_parallelism_threads(cpu_threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, cpu_threads))
        if 0 < gpu_share < 1:
            limit_gpu_memory(gpu_share)
    except RuntimeError:  # already initialised in this (reused) worker: keep what it has
        pass


def gpu_memory_limit_mb(share: float, total_mb: int, overhead_mb: int = GPU_PROCESS_OVERHEAD_MB) -> int:
    """TensorFlow's memory limit for a trial given ``share`` of a GPU of ``total_mb``."""
    limit = int(share * total_mb) - overhead_mb
    if limit < 256:
        raise ValueError(f"a {share} share of a {total_mb} MB GPU leaves {limit} MB for TensorFlow; give trials a larger gpu share")
    return limit


def gpu_total_mb(device_id: str) -> int:
    """The memory of a GPU by its CUDA id or UUID (what Ray puts in CUDA_VISIBLE_DEVICES);
    nvidia-smi answers without initialising CUDA in this process."""
    out = subprocess.run(["nvidia-smi", "-i", device_id, "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def limit_gpu_memory(share: float) -> None:
    """Ray's fractional GPUs are accounting only: without a limit, the first TensorFlow trial
    on a GPU takes nearly all its memory and the next ones fail with out-of-memory. Give each
    visible GPU one logical device capped at this trial's share."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    for i, gpu in enumerate(gpus):
        try:
            total = gpu_total_mb(visible[i] if i < len(visible) else str(i))
        except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
            tf.config.experimental.set_memory_growth(gpu, True)  # no size known: at least grow on demand
            continue
        limit = gpu_memory_limit_mb(share, total)
        tf.config.set_logical_device_configuration(gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])


def environment() -> dict[str, str]:
    """What a reader needs to reproduce or compare a run: versions and BN conventions."""
    return {
        "framework": f"keras {keras.__version__} on tensorflow {tf.__version__}",
        "version.tensorflow": tf.__version__,
        "version.keras": keras.__version__,
        "version.numpy": np.__version__,
        # Keras updates the moving variance with the biased (population) batch variance;
        # PyTorch uses the unbiased one. Momentum is Keras' decay (PyTorch's 0.1 is 0.9 here).
        "bn_moving_variance": "biased",
        "bn_momentum_convention": "keras (moving-average decay)",
    }


def norm_from(config: Mapping[str, Any]) -> Norm:
    return Norm(
        placement=config.get("bn_placement", DEFAULTS["bn_placement"]),
        momentum=config.get("bn_momentum", DEFAULTS["bn_momentum"]),
        epsilon=config.get("bn_epsilon", DEFAULTS["bn_epsilon"]),
        center=config.get("bn_center", DEFAULTS["bn_center"]),
        scale=config.get("bn_scale", DEFAULTS["bn_scale"]),
    )


def build_model(model: str, config: Mapping[str, Any], input_shape, num_classes: int):
    options = {k: config[k] for k in model_parameters(model) if k in config}
    if "hidden_sizes" in options or "filters" in options:  # JSON/Optuna may hand back lists
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return create_model(model, input_shape, num_classes, norm_from(config), **options)


def compile_model(keras_model, config: Mapping[str, Any]) -> None:
    get = lambda k: config.get(k, DEFAULTS[k])  # noqa: E731
    if get("optimizer") == "sgd":
        optimizer = keras.optimizers.SGD(get("learning_rate"), momentum=get("sgd_momentum"), weight_decay=get("weight_decay") or None)
    else:
        optimizer = keras.optimizers.Adam(get("learning_rate"), weight_decay=get("weight_decay") or None)
    keras_model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )


def run(
    config: Mapping[str, Any],
    *,
    model: str,
    dataset: str,
    dataset_args: Mapping[str, Any],
    max_epochs: int,
    report: Report,
    restore_dir: str | None = None,
    checkpoint_every_s: float = 0.0,
    arrays: datasets.Arrays | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``dataset`` for up to ``max_epochs``; return the final metrics.

    A run whose training loss turns NaN or infinite stops at the end of that epoch and reports
    ``diverged=1`` instead of raising. ``test_*`` and ``bn_*`` metrics come with the last epoch
    only. A checkpoint goes with an epoch's report once ``checkpoint_every_s`` seconds have
    passed since the last one (0: every epoch). ``arrays``: the dataset already loaded (else it
    is loaded here, once per process).
    """
    seed = int(config["seed"])
    # A reused trial process keeps TensorFlow (and its GPU memory pool) alive across trials;
    # clearing Keras' global state lets the last trial's model and graphs be freed into it.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    loader_args = {k: v for k, v in dataset_args.items() if k not in datasets.COMMON_PARAMETERS}
    common = {**datasets.COMMON_PARAMETERS, **dataset_args}
    arrays = arrays if arrays is not None else datasets.load(dataset, **loader_args)
    splits = datasets.split(arrays, seed, common["validation_fraction"])
    batch_size = int(config.get("batch_size", DEFAULTS["batch_size"]))
    image_size = common["image_size"]
    train_ds = datasets.tf_dataset(*splits.train, batch_size, shuffle_seed=seed, image_size=image_size)
    val_ds = datasets.tf_dataset(*splits.validation, batch_size, image_size=image_size)

    state = {"epoch": 0, "train_time_s": 0.0}
    if restore_dir:
        keras_model = keras.models.load_model(os.path.join(restore_dir, MODEL_FILE))
        with open(os.path.join(restore_dir, STATE_FILE)) as f:
            state = json.load(f)
    else:
        input_shape = datasets.resized_shape(splits.input_shape, image_size)
        keras_model = build_model(model, config, input_shape, splits.num_classes)
        compile_model(keras_model, config)

    test_ds = datasets.tf_dataset(*splits.test, batch_size, image_size=image_size)
    # Unshuffled: the split is already a seeded permutation, so its first DIAGNOSTIC_SAMPLES
    # form a random subsample, the same one on every call.
    # Inference-mode activations don't depend on the batch size, so the population pass uses
    # large batches: a few steps instead of hundreds (0.9 s → 0.3 s per trial on the bench MLP).
    diag_train_ds = datasets.tf_dataset(*splits.train, DIAGNOSTIC_BATCH, image_size=image_size)
    diag_batches = max(1, math.ceil(DIAGNOSTIC_SAMPLES / DIAGNOSTIC_BATCH))

    def diagnose(trained) -> dict[str, float]:
        return bn_diagnostics(trained, diag_train_ds, val_ds, max_train_batches=diag_batches)

    reporter = EpochReporter(report, len(splits.train[0]), state, max_epochs, test_ds, diagnose, checkpoint_every_s)
    keras_model.fit(
        train_ds, validation_data=val_ds, initial_epoch=state["epoch"], epochs=max_epochs,
        callbacks=[reporter], verbose=0, shuffle=False,  # tf_dataset shuffles with the seed
    )
    return reporter.last


class EpochReporter(keras.callbacks.Callback):
    """Times each epoch, detects divergence, checkpoints, evaluates the test set (and
    ``diagnose``s the model) after the last epoch, and reports."""

    def __init__(self, report: Report, n_train: int, state: dict, max_epochs: int, test_ds,
                 diagnose: Callable[[Any], dict[str, float]] | None = None, checkpoint_every_s: float = 0.0):
        super().__init__()
        self.report, self.n_train, self.state, self.max_epochs, self.test_ds = report, n_train, state, max_epochs, test_ds
        self.diagnose, self.checkpoint_every_s = diagnose, checkpoint_every_s
        self.last: dict[str, float] = {}
        self._t0 = self._checkpointed = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        logs = logs or {}
        self.state["epoch"] = epoch + 1
        self.state["train_time_s"] += seconds
        diverged = not math.isfinite(logs.get("loss", math.nan))
        metrics = {k: float(logs[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs}
        metrics.update(
            epoch=epoch + 1,
            epoch_time_s=seconds,
            samples_per_s=self.n_train / seconds,
            train_time_s=self.state["train_time_s"],
            diverged=float(diverged),
        )
        if diverged or epoch + 1 >= self.max_epochs:
            self.model.stop_training = True
            test = self.model.evaluate(self.test_ds, verbose=0, return_dict=True)
            metrics.update(test_loss=float(test["loss"]), test_accuracy=float(test["accuracy"]))
            # Not for diverged runs: their weights or activations are NaN/inf, so the statistics
            # would be NaN and the accuracies chance, which says nothing about BN. diverged=1
            # already says what happened, and the missing bn_* keys keep NaNs out of BN summaries.
            if self.diagnose and not diverged:
                metrics.update(self.diagnose(self.model))
            self.report(metrics, None)
        elif time.perf_counter() - self._checkpointed < self.checkpoint_every_s:
            self.report(metrics, None)  # saving costs time; a retry redoes these few epochs
        else:
            self._checkpointed = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="bnsearch-ckpt-") as ckpt:
                self.model.save(os.path.join(ckpt, MODEL_FILE))
                with open(os.path.join(ckpt, STATE_FILE), "w") as f:
                    json.dump(self.state, f)
                self.report(metrics, ckpt)
        self.last = metrics

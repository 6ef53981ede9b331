"""One training run, Keras only: a compiled model (:mod:`bnsearch.compiled`: built, or kept from an
earlier trial), fit epoch by epoch, evaluated.

Imported only inside trial workers, never on the driver. It knows nothing of Ray or MLflow:
results leave through ``report(metrics, checkpoint_dir)``, called once per epoch, and files
through ``keep({name: bytes})`` once, before the last report. A run resumes from a checkpoint
directory it wrote earlier and continues the same run: weight init derives from
``config["seed"]``, epoch k's data order from (seed, k), the learning-rate schedule from the
optimizer's step count, and the validation split from ``config["split_seed"]`` (default: the
seed; the search phase shares one split across trials and arms).

Every evaluation uses the BN statistics the configuration asks for (``bn_statistics``:
``precise``, recomputed with the current weights by :mod:`bnsearch.precise_bn`, or Keras'
``moving`` averages); both are logged (``val_accuracy_precise``, ``val_accuracy_moving``, ...),
and ``val_*``/``test_*`` are the ones asked for. The final report also carries the BN
diagnostics of :mod:`bnsearch.diagnostics` (``bn_*`` keys).
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from bnsearch import compiled
from bnsearch import data as datasets
from bnsearch import diagnostics, results
from bnsearch.compiled import get
from bnsearch.models.norms import NORM_LAYERS
from bnsearch.precise_bn import precise_statistics, recalibration_batches

Report = Callable[[dict[str, float], "str | None"], None]
Keep = Callable[[dict[str, bytes]], None]
MODEL_FILE, STATE_FILE = "model.keras", "state.json"
BN_LAYERS_FILE = "bn_layers.json"
TEST_CORRECT_FILE = results.TEST_CORRECT_FILE
# Collapse: training that is at chance. "At chance" needs both, over an epoch: training accuracy
# within 5% of the way from chance (the majority class) to perfect, and training loss at 98% or
# more of the loss of predicting the class frequencies (ln K for K balanced classes). A run
# collapses when it is at chance after an epoch in which it had learned (accuracy more than
# twice that margin above chance), or at the end of its budget if its final weights are at chance
# on the validation set too: so a slow start, a warmup or a plateau before learning never counts,
# and a run that learns by its last epoch never does, even where its last epoch's average lags.
COLLAPSE_ACCURACY_MARGIN, COLLAPSE_LOSS_FRACTION = 0.05, 0.98
# A train_function call this many times slower than the median call of its epoch was tracing.
TRACE_FACTOR = 3
# GPU memory a TensorFlow process uses outside its allocator's limit (CUDA context, cuDNN and
# cuBLAS handles), taken off each fractional trial's share so that four 0.25 trials fit.
GPU_PROCESS_OVERHEAD_MB = 1024
# Evaluation's inference runs in batches of at least this many examples (the training batch size, if
# larger): inference is per example, so the same predictions in fewer calls. Not more than that: a
# large training batch already fills the memory a trial has, and inference of 256 examples needs
# less than a training step of small batches that keeps every layer's activations for its gradients.
INFERENCE_BATCH = 256


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
        "machine.cpu": cpu_description(),
        # Keras updates the moving variance with the biased (population) batch variance;
        # PyTorch uses the unbiased one. Momentum is Keras' decay (PyTorch's 0.1 is 0.9 here).
        "bn_moving_variance": "biased",
        "bn_momentum_convention": "keras (moving-average decay)",
    }


@functools.cache  # environment() runs at every trial's start; the CPU stays the same
def cpu_description() -> str:
    """The CPU model and its vector instruction sets: oneDNN picks its kernels by them, and float
    results (so a few epochs' accuracy) can differ between hosts with the same versions."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:  # not Linux
        return platform.processor() or platform.machine()
    model, flags = re.search(r"model name\s*:\s*(.*)", info), re.search(r"flags\s*:\s*(.*)", info)
    vector = sorted(flag for flag in (flags.group(1).split() if flags else []) if flag.startswith(("avx", "amx", "fma")))
    return "; ".join([model.group(1).strip() if model else platform.machine(), " ".join(vector)])


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The training examples' order in ``epoch``: a function of (seed, epoch) alone, so a run
    resumed at any epoch sees the same data in the same order as one never interrupted."""
    return np.random.default_rng([seed, epoch]).permutation(n)


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
    keep: Keep | None = None,
) -> dict[str, float]:
    """Train ``model`` on ``dataset`` for up to ``max_epochs``; return the final metrics.

    A run whose training loss turns NaN or infinite stops at the end of that epoch and reports
    ``diverged=1``; one whose training is back at chance (see ``COLLAPSE_*``) stops and reports
    ``collapsed=1``. ``test_*`` and ``bn_*`` metrics come with the last epoch only, and so does
    ``keep``'s call with the per-example test results (``test_correct.npz``: a bit per test
    example, 1 where the prediction was right, see :func:`bnsearch.results.unpack_correct`)
    and the per-layer BN diagnostics (``bn_layers.json``). A checkpoint goes with an epoch's
    report once ``checkpoint_every_s`` seconds have passed since the last one (0: every epoch).
    ``arrays``: the dataset already loaded (else it is loaded here, once per process).
    """
    seed = int(config["seed"])
    # A reused trial process keeps TensorFlow (and its GPU memory pool) alive across trials;
    # clearing Keras' global state lets the last trial's model and graphs be freed into it. The
    # full garbage collection that frees them at once costs a reused process 0.3 s or more per
    # trial (most of a tiny trial): worth it where GPU memory is scarce; on a CPU Python's own
    # collector frees them soon enough.
    with compiled.kernel_cache_kept():
        keras.backend.clear_session(free_memory=bool(tf.config.list_logical_devices("GPU")))
        keras.utils.set_random_seed(seed)
    loader_args = {k: v for k, v in dataset_args.items() if k not in datasets.COMMON_PARAMETERS}
    common = {**datasets.COMMON_PARAMETERS, **dataset_args}
    arrays = arrays if arrays is not None else datasets.load(dataset, **loader_args)
    splits = datasets.split(arrays, int(config.get("split_seed", seed)), common["validation_fraction"])
    batch_size = int(get(config, "batch_size"))
    image_size = common["image_size"]
    x_train, y_train = splits.train
    steps_per_epoch = math.ceil(len(x_train) / batch_size)

    state = {"epoch": 0, "train_time_s": 0.0}
    if restore_dir:
        trained = compiled.Compiled.of(keras.models.load_model(os.path.join(restore_dir, MODEL_FILE)))
        with open(os.path.join(restore_dir, STATE_FILE)) as f:
            state = json.load(f)
    else:  # a model this process compiled for an earlier trial of the same structure, if any: no tracing
        input_shape = datasets.resized_shape(splits.input_shape, image_size)
        trained = compiled.model_for(model, config, input_shape, splits.num_classes, steps_per_epoch, max_epochs)
    keras_model = trained.model

    evaluator = Evaluator(trained, splits, batch_size, image_size, get(config, "bn_statistics"))
    reporter = EpochReporter(report, len(x_train), state, max_epochs, evaluator, checkpoint_every_s, keep,
                             chance=chance_level(y_train, splits.num_classes))
    x_tensor, y_tensor = tf.constant(x_train), tf.constant(y_train)
    for epoch in range(state["epoch"], max_epochs):
        train_ds = datasets.ordered_dataset(x_tensor, y_tensor, epoch_order(seed, epoch, len(x_train)), batch_size, image_size)
        timer = StepTimer()
        started = time.perf_counter()
        history = keras_model.fit(train_ds, initial_epoch=epoch, epochs=epoch + 1, callbacks=[timer], verbose=0, shuffle=False)
        tracing = timer.tracing_s()
        logs = {k: float(v[-1]) for k, v in history.history.items()}
        if reporter.epoch_end(epoch, logs, time.perf_counter() - started - tracing, tracing):
            break
    return reporter.last


def ends_run(metrics: Mapping[str, float], max_epochs: int) -> bool:
    """Whether this epoch's report is the run's last: its budget is spent, or it failed."""
    return metrics["epoch"] >= max_epochs or bool(metrics.get("diverged")) or bool(metrics.get("collapsed"))


def chance_level(labels: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(accuracy, loss) of always predicting the class frequencies: the majority class's share
    and the entropy of the class distribution (ln K when balanced)."""
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    return float(p.max()), float(-(p[p > 0] * np.log(p[p > 0])).sum())


class StepTimer(keras.callbacks.Callback):
    """Times every train_function call of one fit; calls far slower than the epoch's median
    were tracing the graph, which is start-up, not training."""

    def __init__(self):
        super().__init__()
        self.durations: list[float] = []

    def on_train_batch_begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.durations.append(time.perf_counter() - self._started)

    def tracing_s(self) -> float:
        if len(self.durations) < 2:
            return 0.0
        median = float(np.median(self.durations))
        return float(sum(d - median for d in self.durations if d > TRACE_FACTOR * median))


@dataclass
class Scores:
    loss: float
    accuracy: float
    correct: np.ndarray  # per example


class Evaluator:
    """Every evaluation of one run, with both kinds of BN statistics, the ones the
    configuration asks for (``statistics``) under the plain names."""

    def __init__(self, trained: compiled.Compiled, splits: datasets.Splits, batch_size: int, image_size: int | None, statistics: str):
        model = self.model = trained.model
        self.statistics, self.passes, self.infer = statistics, trained.passes, trained.infer
        self.files: dict[str, bytes] = {}
        # Batch-statistics predictions normalize by their batch: those keep the training batch size.
        named = {"val": splits.validation, "test": splits.test}
        self.inference = {name: datasets.Batches(*xy, max(INFERENCE_BATCH, batch_size), image_size) for name, xy in named.items()}
        self.batches = {name: datasets.Batches(*xy, batch_size, image_size) for name, xy in named.items()}
        # GroupNorm/LayerNorm keep no moving statistics: nothing to recalibrate or diagnose, and each run says so.
        batch_free = [layer.name for layer in model.layers if isinstance(layer, NORM_LAYERS)] if not self.passes else []
        if batch_free:
            why = "no moving statistics (GroupNorm/LayerNorm): no precise recalibration, no BN diagnostics"
            self.files[BN_LAYERS_FILE] = json.dumps([{"layer": name, "skipped": why} for name in batch_free], indent=1).encode()
        self.recalibration = recalibration_batches(*splits.train, batch_size, image_size) if self.passes else None

    def scores(self, name: str) -> Scores:
        batches = self.inference[name]
        labels = batches.y
        logits = np.concatenate([self.infer(x).numpy() for x, _ in batches]).astype(np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
        correct = logits.argmax(axis=1) == labels
        return Scores(float(np.mean(log_norm - logits[np.arange(len(labels)), labels])), float(correct.mean()), correct)

    def evaluate(self, final: bool, diverged: bool) -> dict[str, float]:
        """The validation metrics, and with ``final`` the test metrics and BN diagnostics.
        A diverged model's weights are NaN/inf: no recalibration, no diagnostics."""
        started = time.perf_counter()
        names = ("val", "test") if final else ("val",)
        moving = {name: self.scores(name) for name in names}
        metrics, chosen = {}, moving
        if self.passes and not diverged:
            batch = {name: float(np.mean(self.passes.predictions(self.batches[name]) == self.batches[name].y))
                     for name in names} if final else {}
            recalibrating = time.perf_counter()
            with precise_statistics(self.passes, self.recalibration) as (population, moving_stats):
                metrics["recalibration_time_s"] = time.perf_counter() - recalibrating
                precise = {name: self.scores(name) for name in names}
            for name in names:
                metrics.update({f"{name}_loss_moving": moving[name].loss, f"{name}_accuracy_moving": moving[name].accuracy,
                                f"{name}_loss_precise": precise[name].loss, f"{name}_accuracy_precise": precise[name].accuracy})
            if self.statistics == "precise":
                chosen = precise
            if final:
                summary, per_layer = diagnostics.compare(self.passes.layers, moving_stats, population)
                metrics.update(summary, test_accuracy_batch=batch["test"],
                               **diagnostics.accuracies(moving["val"].accuracy, precise["val"].accuracy, batch["val"]))
                self.files[BN_LAYERS_FILE] = json.dumps(per_layer, indent=1).encode()
        for name in names:
            metrics.update({f"{name}_loss": chosen[name].loss, f"{name}_accuracy": chosen[name].accuracy})
        if final:
            metrics["test_examples"] = float(len(chosen["test"].correct))
            self.files[TEST_CORRECT_FILE] = results.pack_correct(chosen["test"].correct)
        metrics["eval_time_s"] = time.perf_counter() - started
        return metrics


class EpochReporter:
    """After each epoch: timings, divergence and collapse, evaluation, checkpoint, report."""

    def __init__(self, report: Report, n_train: int, state: dict, max_epochs: int, evaluator: Evaluator,
                 checkpoint_every_s: float = 0.0, keep: Keep | None = None, chance: tuple[float, float] = (0.0, math.inf)):
        self.report, self.n_train, self.state, self.max_epochs = report, n_train, state, max_epochs
        self.evaluator, self.checkpoint_every_s, self.keep, self.chance = evaluator, checkpoint_every_s, keep, chance
        self.last: dict[str, float] = {}
        self._checkpointed = time.perf_counter()

    def at_chance(self, metrics: dict[str, float], prefix: str = "") -> bool:
        """Whether ``metrics``' ``{prefix}accuracy`` and ``{prefix}loss`` are both at chance."""
        chance_accuracy, chance_loss = self.chance
        return metrics.get(f"{prefix}accuracy", 1.0) <= chance_accuracy + COLLAPSE_ACCURACY_MARGIN * (1 - chance_accuracy) and \
            metrics.get(f"{prefix}loss", 0.0) >= COLLAPSE_LOSS_FRACTION * chance_loss

    def collapsed(self, logs: dict[str, float]) -> bool:
        """Back at chance over this epoch after an epoch in which it had learned (the run stops here)."""
        chance_accuracy, _ = self.chance
        learned = self.state.get("best_accuracy", 0.0) > chance_accuracy + 2 * COLLAPSE_ACCURACY_MARGIN * (1 - chance_accuracy)
        self.state["best_accuracy"] = max(self.state.get("best_accuracy", 0.0), logs.get("accuracy", 1.0))
        return learned and self.at_chance(logs)

    def never_learned(self, logs: dict[str, float], evaluated: dict[str, float]) -> bool:
        """At the end of its budget, at chance over its last epoch and its final weights at chance
        on the validation set. The epoch's average alone lags: a run that starts learning late in
        a short budget averages near chance while its final weights have learned."""
        return self.at_chance(logs) and self.at_chance(evaluated, "val_")

    def epoch_end(self, epoch: int, logs: dict[str, float], seconds: float, tracing_s: float) -> bool:
        """Report epoch ``epoch`` (0-based); True when the run ends here."""
        self.state["epoch"] = epoch + 1
        self.state["train_time_s"] += seconds
        diverged = not math.isfinite(logs.get("loss", math.nan))
        collapsed = not diverged and self.collapsed(logs)
        metrics = {k: logs[k] for k in ("loss", "accuracy") if k in logs}
        metrics.update(
            epoch=epoch + 1, epoch_time_s=seconds, samples_per_s=self.n_train / max(seconds, 1e-9),
            train_time_s=self.state["train_time_s"], diverged=float(diverged), collapsed=float(collapsed),
        )
        final = ends_run(metrics, self.max_epochs)
        if tracing_s:
            metrics["trace_time_s"] = tracing_s
        metrics.update(self.evaluator.evaluate(final, diverged))
        if final and not (diverged or collapsed) and self.never_learned(logs, metrics):
            metrics["collapsed"] = 1.0
        if final:
            if self.keep:
                self.keep(self.evaluator.files)  # before the last report: the driver closes the run on it
            self.report(metrics, None)
        elif time.perf_counter() - self._checkpointed < self.checkpoint_every_s:
            self.report(metrics, None)  # saving costs time; a retry redoes these few epochs
        else:
            self._checkpointed = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="bnsearch-ckpt-") as ckpt:
                self.evaluator.model.save(os.path.join(ckpt, MODEL_FILE))
                with open(os.path.join(ckpt, STATE_FILE), "w") as f:
                    json.dump(self.state, f)
                self.report(metrics, ckpt)
        self.last = metrics
        return final

"""The compiled model a trial trains: built and compiled from its configuration, or kept from
an earlier trial in this process. Trace once, train many.

Keras traces a model's training step on its first batch, and every evaluation function on its
first call: about 20 s and 3 s for MobileNetV2 on a CPU, against a 5 s epoch of digits. A
trial process (Ray reuses it for the next trial) keeps the last ``KEPT_MODELS`` compiled models.
A trial whose configuration differs from a kept model's only in values the graph reads from
variables (:data:`TRACE_FREE`: the seed, learning rate and schedule, batch size, BN momentum and
epsilon, weight decay) trains that model: it gets the weights and seed states of a fresh build
with its own seed (building is cheap; tracing is what costs), optimizer state back at zero and
its own hyperparameters, so it trains exactly as the fresh build would (tested), with the
traced functions of the trial before it.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf
from keras import ops
from tensorflow.python import pywrap_tfe  # how TensorFlow empties its kernel cache
from tensorflow.python.eager import context as tf_context

from bnsearch.models import Norm, create_model, model_parameters
from bnsearch.precise_bn import TrainModePass, bn_layers, input_spec
from bnsearch.spec import DEFAULTS
from bnsearch.tunable import Tunable, copy_values

# Several steps per tf.function call: +55% on small MLPs on CPU, same results.
STEPS_PER_EXECUTION = 8
# Compiled models a process keeps: two, so that a worker alternating between two arms reuses both.
KEPT_MODELS = 2
# Configuration values that do not change the traced graph: the trial's identity, and values
# the graph reads from variables (a batch's size is not in the graph's shapes). Weight decay's
# value is among them, whether there is any is not.
TRACE_FREE = frozenset({"seed", "split_seed", "arm", "phase", "trial_index", "learning_rate", "lr_schedule", "warmup_epochs",
                        "batch_size", "bn_momentum", "bn_epsilon", "weight_decay", "bn_statistics"})


def get(config: Mapping[str, Any], name: str) -> Any:
    return config.get(name, DEFAULTS.get(name))


def norm_from(config: Mapping[str, Any]) -> Norm:
    return Norm(placement=get(config, "bn_placement"), momentum=get(config, "bn_momentum"), epsilon=get(config, "bn_epsilon"),
                center=get(config, "bn_center"), scale=get(config, "bn_scale"), kind=get(config, "norm"),
                ghost_batch_size=int(get(config, "ghost_batch_size")), groups=int(get(config, "norm_groups")),
                renorm_rmax=get(config, "renorm_rmax"), renorm_dmax=get(config, "renorm_dmax"))


def build_model(model: str, config: Mapping[str, Any], input_shape, num_classes: int):
    options = {k: config[k] for k in model_parameters(model) if k in config}
    if "hidden_sizes" in options or "filters" in options:  # JSON/Optuna may hand back lists
        options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return create_model(model, input_shape, num_classes, norm_from(config), **options)


@keras.saving.register_keras_serializable(package="bnsearch")
class WarmupCosine(Tunable, keras.optimizers.schedules.LearningRateSchedule):
    """Keras' CosineDecay with its warmup, every value tunable: linear warmup from 0 to ``peak``
    over ``warmup_steps``, then cosine decay over ``decay_steps`` to ``alpha`` × ``peak``
    (``alpha`` 1: constant at ``peak``)."""

    TUNABLE = ("peak", "warmup_steps", "decay_steps", "alpha")

    def __init__(self, peak: float, warmup_steps: int = 0, decay_steps: int = 1, alpha: float = 1.0):
        self.peak, self.warmup_steps, self.decay_steps, self.alpha = peak, warmup_steps, decay_steps, alpha

    def __call__(self, step):
        peak, warmup, decay, alpha = (ops.cast(v, "float32") for v in (self.peak, self.warmup_steps, self.decay_steps, self.alpha))
        step = ops.minimum(ops.cast(step, "float32"), decay + warmup)
        warming = peak * (step / ops.maximum(warmup, 1.0))
        decayed = peak * ((1 - alpha) * (0.5 * (1.0 + ops.cos(math.pi * ((step - warmup) / decay)))) + alpha)
        return ops.where(step < warmup, warming, decayed)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps, "alpha": self.alpha}


class DecayOnce:
    """Weight decay with the learning rate read once per step. Keras' own reads it (the whole
    schedule, as ops) once per variable: for MobileNetV2, ~150 copies of the schedule in the
    traced step, a quarter of its trace. The same values: the step count does not move
    between those reads."""

    _step_learning_rate = None

    def _get_current_learning_rate(self):
        return self._step_learning_rate if self._step_learning_rate is not None else super()._get_current_learning_rate()

    def _apply_weight_decay(self, variables):
        if self.weight_decay is None:
            return
        self._step_learning_rate = super()._get_current_learning_rate()
        try:
            super()._apply_weight_decay(variables)
        finally:
            self._step_learning_rate = None


@keras.saving.register_keras_serializable(package="bnsearch")
class SGD(Tunable, DecayOnce, keras.optimizers.SGD):
    TUNABLE = ("weight_decay",)  # its momentum decides in Python whether there are momentum slots: not tunable


@keras.saving.register_keras_serializable(package="bnsearch")
class Adam(Tunable, DecayOnce, keras.optimizers.Adam):
    TUNABLE = ("weight_decay",)


def learning_rate(config: Mapping[str, Any], steps_per_epoch: int | None = None, epochs: int | None = None) -> WarmupCosine:
    """The configuration's learning rate over ``epochs`` of ``steps_per_epoch`` steps: with
    ``warmup_epochs``, a linear warmup from 0; then constant, or with a ``cosine``
    ``lr_schedule`` a cosine decay to 0."""
    peak, schedule = get(config, "learning_rate"), get(config, "lr_schedule")
    warmup_steps = round(get(config, "warmup_epochs") * (steps_per_epoch or 0))
    decay_steps = max(1, (steps_per_epoch or 0) * (epochs or 0) - warmup_steps)
    return WarmupCosine(peak, warmup_steps, decay_steps, alpha=0.0 if schedule == "cosine" and steps_per_epoch and epochs else 1.0)


def make_optimizer(config: Mapping[str, Any], steps_per_epoch: int | None = None, epochs: int | None = None):
    lr = learning_rate(config, steps_per_epoch, epochs)
    weight_decay = get(config, "weight_decay") or None
    if get(config, "optimizer") == "sgd":
        return SGD(lr, momentum=get(config, "sgd_momentum"), weight_decay=weight_decay)
    return Adam(lr, weight_decay=weight_decay)


def compile_model(keras_model, optimizer) -> None:
    keras_model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=STEPS_PER_EXECUTION,
    )


@dataclass
class Compiled:
    """A compiled model and the functions traced on it: Keras' training step (on the model),
    inference, and the training-mode pass of PreciseBN (None without BN layers)."""

    model: Any
    infer: Callable
    passes: TrainModePass | None

    @classmethod
    def of(cls, model) -> Compiled:
        # One trace for every evaluation, whatever a split's last batch holds (Keras' predict
        # traced MobileNetV2 again for the test set's last batch: 9 s).
        infer = tf.function(lambda x: model(x, training=False), input_signature=[input_spec(model)])
        if not model.optimizer.built:  # its slots made now, not by the first step's trace (a lifted initializer each, ~3 s for MobileNetV2)
            model.optimizer.build(model.trainable_variables)
        return cls(model, infer, TrainModePass(model) if bn_layers(model) else None)

    def take(self, fresh, optimizer) -> bool:
        """Become ``fresh`` (built, never trained, the same structure) with ``optimizer`` (new):
        its variables, a new optimizer's state (zeros: Keras' SGD and Adam start their slots and
        step count at zero) and every tunable value. False, changing nothing, if the variables differ."""
        mine, theirs = self.model.variables, fresh.variables
        if len(mine) != len(theirs) or any(a.shape != b.shape or a.dtype != b.dtype for a, b in zip(mine, theirs)):
            return False
        for target, source in zip(mine, theirs):
            target.assign(source)
        for variable in self.model.optimizer.variables:
            variable.assign(tf.zeros_like(variable))
        pairs = [*zip(self.model._flatten_layers(), fresh._flatten_layers()),  # every layer, nested ones too
                 (self.model.optimizer, optimizer), (self.model.optimizer._learning_rate, optimizer._learning_rate)]
        for target, source in pairs:
            if isinstance(source, Tunable):
                copy_values(target, source)
        return True


_kept: OrderedDict[str, Compiled] = OrderedDict()


def structure(model: str, config: Mapping[str, Any], input_shape, num_classes: int) -> str:
    """What decides the traced graph: a model kept under the same structure can train this configuration."""
    free = TRACE_FREE - set(model_parameters(model))  # a value a model builder takes may be a constant in its graph
    values = {k: v for k, v in config.items() if k not in free}
    return json.dumps([model, list(input_shape), num_classes, bool(get(config, "weight_decay")), values], sort_keys=True, default=str)


def model_for(model: str, config: Mapping[str, Any], input_shape, num_classes: int,
              steps_per_epoch: int | None = None, epochs: int | None = None) -> Compiled:
    """The compiled ``model`` for ``config``, with the initial weights of ``config``'s seed
    (set it before calling): a kept one of the same structure, else this fresh build."""
    fresh = build_model(model, config, input_shape, num_classes)
    optimizer = make_optimizer(config, steps_per_epoch, epochs)
    key = structure(model, config, input_shape, num_classes)
    kept = _kept.pop(key, None)
    if kept is None or not kept.take(fresh, optimizer):
        compile_model(fresh, optimizer)  # only now: a kept model takes the build uncompiled
        kept = Compiled.of(fresh)
    _kept[key] = kept
    if len(_kept) > KEPT_MODELS:
        _kept.popitem(last=False)
        tf_context.context().clear_kernel_cache()  # the whole cache: a kept model instantiates its step once more
    return kept


@contextlib.contextmanager
def kernel_cache_kept():
    """Within this block TensorFlow keeps its kernel cache, which Keras' ``clear_session`` and
    every ``set_random_seed`` empty: it holds the kept models' instantiated training steps
    (graph optimized, kernels made), 6-8 s a trial to make again for MobileNetV2 on a CPU.
    What the emptying is for, restarting eager stateful random ops from the new seed, does not
    apply: Keras' random ops on TensorFlow are stateless, seeded from its own generator.
    Dropping a kept model empties the cache (:func:`forget`, and when one is evicted)."""
    clear = pywrap_tfe.TFE_ContextClearCaches
    pywrap_tfe.TFE_ContextClearCaches = lambda handle: None
    try:
        yield
    finally:
        pywrap_tfe.TFE_ContextClearCaches = clear


def forget() -> None:
    """Drop every kept model (the next trial builds and traces its own)."""
    _kept.clear()
    tf_context.context().clear_kernel_cache()

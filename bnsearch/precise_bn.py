"""PreciseBN (Wu & Johnson 2021): BN population statistics recomputed with the current weights.

In Keras, BN momentum changes only the moving averages used at inference, never training. After
short runs, at early ASHA rungs, and with large batches and high momentum, those averages lag
the weights, and inference accuracy measures the lag rather than the network. Like fvcore's
``update_bn_stats`` and PyTorch's ``swa_utils.update_bn``, :func:`precise_statistics` runs a
bounded number of training batches forward in training mode (no gradient step), averages every
BN layer's batch mean and batch variance over them (equal weight per batch; the biased
variance, Keras' convention), and puts those in the moving statistics for the evaluations
inside its ``with`` block. On leaving it, every non-trainable variable is put back, so the
moving averages go on as Keras keeps them and a checkpoint never holds recomputed values.

The batches must have the training batch size: the batch variance a layer normalizes with in
training depends on it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from bnsearch.data import Batches

BN = keras.layers.BatchNormalization
# Training samples each recalibration uses (whole batches of the training batch size). Wu &
# Johnson find ~10^3 samples enough for precise statistics; more costs a forward pass each.
PRECISE_BN_SAMPLES = 1024


def bn_layers(model) -> list:
    """Every ``keras.layers.BatchNormalization`` in ``model``, nested models' included, in layer
    order. BN layers hidden inside a subclassed layer's ``call`` are not in any layer list and are
    not found."""
    found = []
    for layer in getattr(model, "layers", ()):
        found.extend([layer] if isinstance(layer, BN) else bn_layers(layer))
    return found


@dataclass
class Statistics:
    """Per BN layer (in :func:`bn_layers` order), per channel: mean and variance, float64."""

    mean: list[np.ndarray]
    variance: list[np.ndarray]


def input_spec(model) -> tf.TensorSpec:
    """Any batch of ``model``'s input: traced once, whatever the size of a split's last batch."""
    return tf.TensorSpec([None, *model.inputs[0].shape[1:]], model.inputs[0].dtype)


class TrainModePass:
    """One traced forward pass of ``model`` in training mode, returning every BN layer's batch
    mean and variance and the model's logits (what "BN with batch statistics" predicts).

    Training mode updates the moving statistics as a side effect: :meth:`statistics` leaves
    that to its caller (:func:`precise_statistics` restores them); :meth:`predictions` undoes
    it itself."""

    def __init__(self, model):
        self.model = model
        self.layers = bn_layers(model)
        bn_inputs = _bn_inputs(model)
        @tf.function(input_signature=[input_spec(model)])
        def forward(x):
            tensors, logits = bn_inputs(x)
            moments = []
            for layer, tensor in zip(self.layers, tensors):
                tensor = tf.cast(tensor, tf.float32)
                if hasattr(layer, "batch_moments"):  # Ghost BN: what it normalizes with, per virtual batch
                    moments.append(layer.batch_moments(tensor))
                    continue
                rank = tensor.shape.rank
                channel = layer.axis % rank if isinstance(layer.axis, int) else layer.axis[0] % rank
                moments.append(tf.nn.moments(tensor, [a for a in range(rank) if a != channel]))
            return moments, logits

        self.forward = forward

    def statistics(self, batches) -> Statistics:
        """BN batch statistics averaged over ``batches`` of ``(x, y)`` (only ``x`` is used)."""
        sums, count = None, 0
        for x, *_ in batches:
            moments, _ = self.forward(x)
            values = [(m.numpy().astype(np.float64), v.numpy().astype(np.float64)) for m, v in moments]
            sums = values if sums is None else [(sm + m, sv + v) for (sm, sv), (m, v) in zip(sums, values)]
            count += 1
        if not count:
            raise ValueError("precise BN: the training dataset yielded no batches")
        return Statistics([m / count for m, _ in sums], [v / count for _, v in sums])

    def predictions(self, batches) -> np.ndarray:
        """Predicted classes with every BN normalizing by its batch's own statistics (a frozen
        BN, ``trainable=False``, uses its moving ones, as in Keras' training mode)."""
        with restored(self.model):
            return np.concatenate([np.argmax(self.forward(x)[1].numpy(), axis=-1) for x, *_ in batches])


@contextlib.contextmanager
def restored(model):
    """Every non-trainable variable (moving statistics, seed states) back as it was on exit."""
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        yield
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


@contextlib.contextmanager
def precise_statistics(passes: TrainModePass, batches):
    """Inside the block, every BN layer's moving statistics are the population statistics over
    ``batches`` with the current weights; yields them (and the moving ones they replaced).
    A frozen BN (``trainable=False``) trained on its moving statistics, so it keeps them."""
    layers = passes.layers
    moving = Statistics([np.asarray(layer.moving_mean.numpy(), np.float64) for layer in layers],
                        [np.asarray(layer.moving_variance.numpy(), np.float64) for layer in layers])
    with restored(passes.model):
        population = passes.statistics(batches)
        for layer, mean, variance in zip(layers, population.mean, population.variance):
            if not layer.trainable:
                continue
            layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype))
            layer.moving_variance.assign(variance.astype(layer.moving_variance.dtype))
        yield population, moving


def recalibration_batches(x: np.ndarray, y: np.ndarray, batch_size: int, image_size: int | None = None,
                          samples: int = PRECISE_BN_SAMPLES):
    """The first whole batches of the training split (already a seeded permutation, so a random
    subset, the same at every evaluation) covering about ``samples`` examples."""
    batches = max(1, min(len(x) // batch_size, -(-samples // batch_size)))
    n = min(len(x), batches * batch_size)
    return Batches(x[:n], y[:n], batch_size, image_size)


def _bn_inputs(model):
    """A function from a batch ``x`` to (the input tensor of every BN layer in ``model``, in
    ``bn_layers`` order; the model's output), with the network in training mode. It runs a
    sub-model of ``model``'s graph whose outputs are the BN inputs. A nested model's own
    ``.input`` is its inner Input, so the sub-model outputs the tensor it was called on in this
    graph instead, and recursion continues inside it."""
    parts = [layer for layer in model.layers if isinstance(layer, BN) or bn_layers(layer)]

    def graph_input(layer):
        if isinstance(layer, BN):
            return layer.input
        tensors = layer._inbound_nodes[0].input_tensors  # its call in this graph (no public API)
        return tensors[0] if len(tensors) == 1 else list(tensors)

    probe = keras.Model(model.inputs, [*(graph_input(layer) for layer in parts), model.outputs[0]])
    inner = [None if isinstance(layer, BN) else _bn_inputs(layer) for layer in parts]

    def run(x):
        *outputs, logits = probe(x, training=True)
        found = []
        for tensor, nested in zip(outputs, inner):
            found.extend([tensor] if nested is None else nested(tensor)[0])
        return found, logits

    return run

"""The normalization layer of each ``norm`` variant (see :data:`bnsearch.spec.NORMS`).

- ``batch``: Keras' ``BatchNormalization``.
- ``renorm``: Batch Renormalization (Ioffe 2017), Keras' ``BatchNormalization(renorm=True)``
  (back since Keras 3.14), with the clipping r ∈ [1/rmax, rmax], |d| ≤ dmax (by default the
  paper's final rmax 3, dmax 5, Ioffe 2017 §4) held from the first step: Keras has no warm-up ramp from (1, 0). r and d are constants to the
  gradient (Keras stops it), and inference uses the moving mean and variance as plain BN does.
  ``bn_momentum`` sets both of Keras' momenta, as the paper has one set of moving averages: so
  for renorm it changes training, not only the moving averages. Its training-mode output is
  pulled towards those averages, so its ``bn_mode_gap`` compares that output, not raw batch
  statistics, with inference.
- ``ghost``: Ghost BN (Hoffer et al. 2017), :class:`GhostBatchNormalization` below: in training
  each virtual batch of ``ghost_batch_size`` examples is normalized by its own statistics;
  inference and the moving averages are plain BN's (the moving averages follow the mean of the
  virtual batches' statistics, which is what training normalizes with).
- ``synchronized``: Keras' cross-replica BN (``synchronized=True``): statistics over the global
  batch under a ``tf.distribute`` strategy; the same as ``batch`` on one device, which is
  what a trial runs on today.
- ``group``: GroupNorm (Wu & He 2018) with ``gcd(norm_groups, channels)`` groups, so any
  channel count works (Wu & He's 32 when it divides), fewer where a group would normalize fewer
  than ``MIN_GROUP_VALUES`` values (a Dense layer's 32 units in 32 groups would each be
  normalized alone, to a constant).
- ``layer``: LayerNorm as Wu & He define it for CNNs, one group over all channels and positions
  with a per-channel γ and β (``GroupNormalization(groups=1)``); on a Dense output that is
  numerically Keras' ``LayerNormalization``.

``group`` and ``layer`` need no batch and keep no moving statistics, so precise recalibration
and the BN diagnostics do not apply to them (a run records why).

Every layer made here is Keras' own with its momentum and epsilon :mod:`bnsearch.tunable`: a
model kept from an earlier trial takes the next trial's values without tracing again.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from bnsearch.tunable import Tunable

MIN_GROUP_VALUES = 8


@keras.saving.register_keras_serializable(package="bnsearch")
class BatchNormalization(Tunable, keras.layers.BatchNormalization):
    """Keras' BatchNormalization (plain, renorm or synchronized), its momenta and epsilon tunable."""

    TUNABLE = ("momentum", "renorm_momentum", "epsilon")


@keras.saving.register_keras_serializable(package="bnsearch")
class GroupNormalization(Tunable, keras.layers.GroupNormalization):
    """Keras' GroupNormalization, its epsilon tunable."""

    TUNABLE = ("epsilon",)


@keras.saving.register_keras_serializable(package="bnsearch")
class GhostBatchNormalization(BatchNormalization):
    """BatchNormalization whose training statistics are per virtual batch of
    ``virtual_batch_size`` examples (the last one may be smaller); channels last."""

    def __init__(self, virtual_batch_size: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.virtual_batch_size = int(virtual_batch_size)

    def build(self, input_shape):
        if self.axis not in (-1, len(input_shape) - 1):
            raise ValueError(f"{self.name}: ghost batch normalization needs channels last, got axis={self.axis}")
        super().build(input_shape)

    def _ghost_moments(self, x):
        """Each example's virtual-batch mean and variance (broadcastable to ``x``), and their
        averages over the batch, weighted by virtual-batch size: (mean, variance, mean_e, variance_e)."""
        n = ops.shape(x)[0]
        groups = (n + self.virtual_batch_size - 1) // self.virtual_batch_size
        ids = ops.arange(n) // self.virtual_batch_size
        positions = tuple(range(1, len(x.shape) - 1))  # spatial axes, averaged per example first
        sizes = ops.segment_sum(ops.ones((n,), x.dtype), ids, num_segments=groups)[:, None]
        def per_group(values):  # (n, C) → each virtual batch's mean, (groups, C)
            return ops.segment_sum(values, ids, num_segments=groups) / sizes
        def per_example(values):  # (groups, C) → (n, 1, ..., 1, C)
            return ops.reshape(ops.take(values, ids, axis=0), (n,) + (1,) * len(positions) + (x.shape[-1],))
        example_means = ops.mean(x, axis=positions) if positions else x
        mean_g = per_group(example_means)
        centred = x - per_example(mean_g)
        square = ops.mean(ops.square(centred), axis=positions) if positions else ops.square(centred)
        variance_g = per_group(square)
        weights = sizes / ops.cast(n, x.dtype)
        return (ops.sum(mean_g * weights, axis=0), ops.sum(variance_g * weights, axis=0),
                per_example(mean_g), per_example(variance_g))

    def batch_moments(self, x):
        """What training normalizes with, averaged over the batch (PreciseBN's statistics)."""
        mean, variance, _, _ = self._ghost_moments(ops.cast(x, "float32"))
        return mean, variance

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, backend_float(inputs))
        mean, variance, mean_e, variance_e = self._ghost_moments(x)
        self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(ops.cast(self.moving_variance, x.dtype) * self.momentum + variance * (1.0 - self.momentum))
        outputs = (x - mean_e) * ops.rsqrt(variance_e + self.epsilon)
        if self.scale:
            outputs = outputs * ops.cast(self.gamma, x.dtype)
        if self.center:
            outputs = outputs + ops.cast(self.beta, x.dtype)
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "virtual_batch_size": self.virtual_batch_size}


def backend_float(x) -> str:
    """BN's compute dtype: at least float32 (half precision overflows in the moments)."""
    return keras.backend.result_type(x.dtype, "float32")


def group_count(wanted: int, shape) -> int:
    """GroupNorm's groups for an input of ``shape`` (no batch axis, channels last)."""
    channels, positions = int(shape[-1]), math.prod(d or MIN_GROUP_VALUES for d in shape[:-1])
    groups = math.gcd(wanted, channels)
    while groups > 1 and channels // groups * positions < MIN_GROUP_VALUES:
        groups = max(d for d in range(1, groups) if groups % d == 0)
    return groups


def make_norm(norm, name: str, shape):
    """The layer for ``norm`` (a :class:`bnsearch.models.blocks.Norm`) on inputs of ``shape``
    (without the batch axis, channels last)."""
    common = {"epsilon": norm.epsilon, "center": norm.center, "scale": norm.scale, "name": name}
    if norm.kind in ("group", "layer"):
        return GroupNormalization(groups=1 if norm.kind == "layer" else group_count(norm.groups, shape), **common)
    if norm.kind == "ghost":
        return GhostBatchNormalization(virtual_batch_size=norm.ghost_batch_size, momentum=norm.momentum, **common)
    if norm.kind not in ("batch", "renorm", "synchronized"):
        raise ValueError(f"unknown norm {norm.kind!r}")
    extra = {"synchronized": True} if norm.kind == "synchronized" else {}
    if norm.kind == "renorm":
        extra = {"renorm": True, "renorm_momentum": norm.momentum,
                 "renorm_clipping": {"rmax": norm.renorm_rmax, "rmin": 1 / norm.renorm_rmax, "dmax": norm.renorm_dmax}}
    return BatchNormalization(momentum=norm.momentum, **common, **extra)


NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.GroupNormalization, keras.layers.LayerNormalization)


def describe(layer) -> str:
    """A norm layer and its settings, in one short phrase."""
    eps = f"ε {layer.epsilon:g}"
    affine = "" if layer.center and layer.scale else f", center {layer.center}, scale {layer.scale}"
    if isinstance(layer, GhostBatchNormalization):
        return f"GhostBN(virtual batch {layer.virtual_batch_size}, momentum {layer.momentum:g}, {eps}{affine})"
    if isinstance(layer, keras.layers.BatchNormalization):
        kind = "BatchRenorm" if layer.renorm else "SyncBN" if layer.synchronized else "BatchNorm"
        clip = (f", rmax {layer.renorm_clipping['rmax']:g}, dmax {layer.renorm_clipping['dmax']:g}" if layer.renorm else "")
        return f"{kind}(momentum {layer.momentum:g}, {eps}{clip}{affine})"
    if isinstance(layer, keras.layers.GroupNormalization):
        return f"GroupNorm(groups {layer.groups}, {eps}{affine})"
    return f"{type(layer).__name__}({eps}{affine})"

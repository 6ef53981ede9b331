"""Where BN goes, in one place: every model builds its blocks through these two functions.

- ``before``: Layer(no bias) → BN → Activation
- ``after``:  Layer(bias) → Activation → BN
- ``none``:   Layer(bias) → Activation, and no BN anywhere
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from bnsearch.spec import DEFAULTS  # the defaults live there, once


@dataclass(frozen=True)
class Norm:
    """Where the norm layers go and what they are: ``kind`` is a :data:`bnsearch.spec.NORMS`
    variant (see :mod:`bnsearch.models.norms`); BN settings in Keras' convention (momentum is
    the moving-average decay). ``ghost_batch_size`` is for ``ghost``, ``groups`` for ``group``,
    ``renorm_rmax``/``renorm_dmax`` for ``renorm``."""

    placement: str = DEFAULTS["bn_placement"]
    momentum: float = DEFAULTS["bn_momentum"]
    epsilon: float = DEFAULTS["bn_epsilon"]
    center: bool = DEFAULTS["bn_center"]
    scale: bool = DEFAULTS["bn_scale"]
    kind: str = DEFAULTS["norm"]
    ghost_batch_size: int = DEFAULTS["ghost_batch_size"]
    groups: int = DEFAULTS["norm_groups"]
    renorm_rmax: float = DEFAULTS["renorm_rmax"]
    renorm_dmax: float = DEFAULTS["renorm_dmax"]

    def layer(self, name: str, shape):
        """The norm layer for inputs of ``shape`` (no batch axis, channels last)."""
        from bnsearch.models.norms import make_norm  # imports Keras

        return make_norm(self, name, shape)


def layer_norm_act(x, make_layer: Callable, activation: str, norm: Norm, name: str):
    """A placement site: ``make_layer(use_bias, name)`` followed by BN and activation in the
    order ``norm.placement`` says. Layers are named ``name``, ``name_bn``, ``name_act``."""
    import keras

    x = make_layer(use_bias=norm.placement != "before", name=name)(x)
    if norm.placement == "before":
        x = norm.layer(f"{name}_bn", x.shape[1:])(x)
    x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    if norm.placement == "after":
        x = norm.layer(f"{name}_bn", x.shape[1:])(x)
    return x


def layer_norm(x, make_layer: Callable, norm: Norm, name: str):
    """A layer with no activation next to it (e.g. a linear projection): not a placement
    site. Its BN stays in ``before`` and ``after`` and goes, with a bias instead, in ``none``."""
    with_bn = norm.placement != "none"
    x = make_layer(use_bias=not with_bn, name=name)(x)
    return norm.layer(f"{name}_bn", x.shape[1:])(x) if with_bn else x

"""The model registry (timm-style): ``register_model``, ``create_model``, ``list_models``.

Builders import Keras inside their bodies, so the registry, and spec validation on the
driver, never load TensorFlow.
"""

from __future__ import annotations

import inspect
from typing import Callable

from bnsearch.models.blocks import Norm

_MODELS: dict[str, Callable] = {}
_BUILDER_ARGS = ("input_shape", "num_classes", "norm")


def register_model(builder: Callable) -> Callable:
    """Register ``builder(input_shape, num_classes, norm, **options)`` under its name."""
    _MODELS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_parameters(name: str) -> dict[str, object]:
    """The options a model takes, with their defaults."""
    params = inspect.signature(_MODELS[name]).parameters
    return {k: p.default for k, p in params.items() if k not in _BUILDER_ARGS}


def create_model(name: str, input_shape, num_classes: int, norm: Norm = Norm(), **options):
    """Build a registered model; it outputs logits."""
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, norm=norm, **options)

"""The model registry (timm-style): ``register_model``, ``create_model``, ``list_models``.

A model is a registered family, or your own model by import path, ``package.module:name``
(importable on every node), naming a functional or Sequential ``keras.Model`` or a function that
builds one (given ``input_shape`` and ``num_classes`` if it takes them, and the sweep's
``model_args``); :mod:`bnsearch.models.rewrite` derives every arm from it.

Builders import Keras inside their bodies, so the registry, and spec validation on the
driver, never load TensorFlow (a model of yours loads what its module imports).
"""

from __future__ import annotations

import importlib
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


def is_import_path(name: str) -> bool:
    return isinstance(name, str) and ":" in name


def import_model(path: str):
    """The object ``package.module:name`` names; ImportError/AttributeError say what is missing."""
    module, _, attribute = path.partition(":")
    target = importlib.import_module(module)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def model_parameters(name: str) -> dict[str, object]:
    """The options a model takes, with their defaults (a model instance of yours takes none)."""
    builder = import_model(name) if is_import_path(name) else _MODELS[name]
    if not callable(builder) or hasattr(builder, "layers") or inspect.isclass(builder):  # a model: no options
        return {}
    params = inspect.signature(builder).parameters
    return {k: p.default for k, p in params.items() if k not in _BUILDER_ARGS and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def create_model(name: str, input_shape, num_classes: int, norm: Norm = Norm(), **options):
    """Build a registered model, or rewrite one of yours to ``norm``; it outputs logits."""
    if is_import_path(name):
        from bnsearch.models.rewrite import build_user_model, check_classes, rewrite  # imports Keras

        model = rewrite(build_user_model(import_model(name), input_shape, num_classes, **options), norm, input_shape)
        check_classes(model, num_classes)
        return model
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    return _MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, norm=norm, **options)

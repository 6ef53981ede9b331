"""Every arm's model as it will be trained, before any trial starts (``bnsearch inspect``).

The models are built by the trials' own code (:func:`bnsearch.compiled.build_model`) from each
arm's resolved configuration, on the dataset's input shape, with searched values at their
defaults; a model of yours that cannot be rewritten is refused here, on the driver, naming the
layer or reason. Imports TensorFlow: only commands that build models load this module.
"""

from __future__ import annotations

import math

from bnsearch import data
from bnsearch.spec import BATCH_FREE_NORMS, SpecError, Sweep, one_line


def dataset_shape(sweep: Sweep) -> tuple[tuple[int, ...], int]:
    """The input shape the models see (after ``image_size``) and the number of classes."""
    try:
        return data.shape(sweep.dataset, dict(sweep.dataset_args))
    except Exception as error:  # a download with no network, a missing file: one line, not a traceback
        raise SpecError([("dataset", f"{sweep.dataset} cannot be loaded here ({one_line(error)}); its models need its input shape")]) from None


def arm_models(sweep: Sweep, input_shape, num_classes: int) -> dict:
    """Arm name → its Keras model; :class:`SpecError` in one line if one cannot be built."""
    from bnsearch.models.rewrite import RewriteError
    from bnsearch.compiled import build_model

    models = {}
    for arm in sweep.arms():
        try:
            models[arm] = build_model(sweep.model, sweep.resolve(arm).config, input_shape, num_classes)
        except Exception as error:  # the user's builder raised, or its model cannot be rewritten: say so, not a traceback
            detail = str(error) if isinstance(error, RewriteError) else one_line(error)
            raise SpecError([("model", f"{sweep.model} cannot be used: {detail}")]) from None
    return models


def check_models(sweep: Sweep) -> None:
    """A model of yours is built for every arm on the driver; refused with one line if it cannot be."""
    arm_models(sweep, *dataset_shape(sweep))


def describe(sweep: Sweep) -> str:
    """What ``bnsearch inspect`` prints: per arm, its placement sites in layer order, the norm
    layers and their settings, the parameter count, and what is searched."""
    from bnsearch.models.rewrite import describe as sites

    input_shape, num_classes = dataset_shape(sweep)
    lines = [f"{sweep.name}: {sweep.model} on {sweep.dataset}, inputs {input_shape}, {num_classes} classes"]
    for arm, model in arm_models(sweep, input_shape, num_classes).items():
        resolved = sweep.resolve(arm)
        trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
        lines += ["", f"arm {arm}: {model.count_params():,} parameters ({trainable:,} trainable)"]
        lines += [f"  {line}" for line in sites(model)] or ["  no placement sites"]
        norm = resolved.config.get("norm")
        if norm in BATCH_FREE_NORMS:
            lines.append(f"  {norm} norm keeps no moving statistics: no precise recalibration, no BN diagnostics")
        elif norm:
            lines.append(f"  evaluated with {resolved.config['bn_statistics']} BN statistics")
        if resolved.nuisance:
            lines.append(f"  searched per arm (shown at their defaults): {', '.join(resolved.nuisance)}")
    return "\n".join(lines)

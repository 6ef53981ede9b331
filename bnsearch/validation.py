"""Is a sweep spec valid? Every field checked before any cluster resource is touched, each bad
one reported as (field, why) naming what is allowed; :meth:`bnsearch.spec.Sweep.validate`
raises them together as one :class:`bnsearch.spec.SpecError`."""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from typing import Any, Callable

from bnsearch.spec import (
    ACTIVATIONS, DEFAULTS, DISTRIBUTIONS, METRICS, NORMS, OPTIMIZERS, PLACEMENTS, QUESTION_KINDS, REPORT_METRICS, SAMPLERS,
    BN_PARAMETERS, BN_STATISTICS, LR_SCHEDULES, Choice, Comparison, ComplementLogUniform, IntUniform, LogUniform, Sweep, one_line,
)
from bnsearch.stats.sequential import SPENDING


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _check(ok: Callable[[Any], bool], allowed: str) -> Callable[[Any], str | None]:
    return lambda v: None if ok(v) else f"must be {allowed}, got {v!r}"


def _one_of(options: Sequence) -> Callable[[Any], str | None]:
    return _check(lambda v: v in options, "one of " + ", ".join(map(str, options)))


_POSITIVE = _check(lambda v: _is_real(v) and v > 0, "a number > 0")
_BOOL = _check(lambda v: isinstance(v, bool), "true or false")
_SIZES = _check(
    lambda v: isinstance(v, Sequence) and len(v) > 0 and all(_is_int(s) and s >= 1 for s in v),
    "a non-empty list of whole numbers >= 1",
)

CHECKS: dict[str, Callable[[Any], str | None]] = {
    "bn_placement": _one_of(PLACEMENTS),
    "bn_momentum": _check(lambda v: _is_real(v) and 0 < v < 1, "in (0, 1) (Keras convention: 0.99)"),
    "bn_epsilon": _POSITIVE,
    "bn_center": _BOOL,
    "bn_scale": _BOOL,
    "optimizer": _one_of(OPTIMIZERS),
    "learning_rate": _POSITIVE,
    "batch_size": _check(lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "sgd_momentum": _check(lambda v: _is_real(v) and 0 <= v < 1, "in [0, 1)"),
    "weight_decay": _check(lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "lr_schedule": _one_of(LR_SCHEDULES),
    "warmup_epochs": _check(lambda v: _is_real(v) and v >= 0, "a number of epochs >= 0"),
    "bn_statistics": _one_of(BN_STATISTICS),
    "norm": _one_of(NORMS),
    "ghost_batch_size": _check(lambda v: _is_int(v) and v >= 2, "a whole number of examples >= 2"),
    "norm_groups": _check(lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
    "renorm_rmax": _check(lambda v: _is_real(v) and v >= 1, "a number >= 1 (r is clipped to [1/rmax, rmax])"),
    "renorm_dmax": _check(lambda v: _is_real(v) and v >= 0, "a number >= 0"),
    "activation": _one_of(ACTIVATIONS),
    "output_bn": _BOOL,
    "hidden_sizes": _SIZES,
    "filters": _SIZES,
    "width_multiplier": _POSITIVE,
    "kernel_size": _check(lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
}


def problems(sweep: Sweep):
    """(field, why) for every bad field of ``sweep``, in the order of the spec's fields."""
    # Registries are imported here, not at module top, to keep `spec` import-light; neither
    # imports a framework at import time.
    from bnsearch.data import dataset_parameters, list_datasets
    from bnsearch.models import list_models, model_parameters
    from bnsearch.models.registry import import_model, is_import_path

    if not isinstance(sweep.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sweep.name):
        yield "name", f"must be letters, digits, '_', '-' or '.', got {sweep.name!r}"

    model_ok = sweep.model in list_models()
    if is_import_path(sweep.model):
        try:
            import_model(sweep.model)
            model_ok = True
        except Exception as error:  # the user's module failed to import, or has no such name
            yield "model", (f"cannot import {sweep.model!r} ({one_line(error)}); "
                            "a model of yours must be importable on every node: pip install its package, or put it on PYTHONPATH")
    elif not model_ok:
        yield "model", (f"unknown model {sweep.model!r}; known: {', '.join(list_models())}, "
                        "or your own by import path, package.module:name")
    if sweep.dataset not in list_datasets():
        yield "dataset", f"unknown dataset {sweep.dataset!r}; known: {', '.join(list_datasets())}"
    else:
        allowed = dataset_parameters(sweep.dataset)
        for name in sweep.dataset_args:
            if name not in allowed:
                yield f"dataset_args.{name}", f"not an option of {sweep.dataset!r}; allowed: {', '.join(allowed) or 'none'}"

    known = set(DEFAULTS)
    if model_ok:
        known |= set(model_parameters(sweep.model))

    # Each name lives in exactly one of the four places.
    seen: dict[str, str] = {}
    for section in ("scientific", "nuisance", "fixed", "model_args"):
        for name in getattr(sweep, section):
            if name in seen:
                yield f"{section}.{name}", f"duplicate name: already set in {seen[name]}"
            seen.setdefault(name, section)
            if model_ok and name not in known:
                yield f"{section}.{name}", f"unknown hyperparameter; allowed: {', '.join(sorted(known))}"

    if not sweep.scientific:
        yield "scientific", "needs at least one hyperparameter with at least one value (the arms)"
    for name, values in sweep.scientific.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            yield f"scientific.{name}", "an empty arm list: give a non-empty list of values"
            continue
        if len(set(map(repr, values))) != len(values):
            yield f"scientific.{name}", f"duplicate arm values in {list(values)!r}"
        yield from _value_problems(f"scientific.{name}", name, values)

    for section in ("fixed", "model_args"):
        for name, value in getattr(sweep, section).items():
            yield from _value_problems(f"{section}.{name}", name, [value])

    for name, dist in sweep.nuisance.items():
        yield from _distribution_problems(f"nuisance.{name}", name, dist, sweep.budget.sampler)
    yield from _evaluation_problems(sweep)

    b = sweep.budget
    if not _is_int(b.trials_per_arm) or b.trials_per_arm < 1:
        yield "budget.trials_per_arm", f"must be a whole number >= 1, got {b.trials_per_arm!r}"
    if not _is_int(b.max_epochs) or b.max_epochs < 1:
        yield "budget.max_epochs", f"must be a whole number >= 1, got {b.max_epochs!r}"
    elif not _is_int(b.grace_epochs) or not 1 <= b.grace_epochs <= b.max_epochs:
        yield "budget.grace_epochs", f"must be a whole number in [1, max_epochs={b.max_epochs}], got {b.grace_epochs!r}"
    if not _is_int(b.reduction_factor) or b.reduction_factor < 2:
        yield "budget.reduction_factor", f"must be a whole number >= 2, got {b.reduction_factor!r}"
    if b.sampler not in SAMPLERS:
        yield "budget.sampler", f"must be one of {', '.join(SAMPLERS)}, got {b.sampler!r}"
    if b.max_concurrent_trials is not None and (not _is_int(b.max_concurrent_trials) or b.max_concurrent_trials < 1):
        yield "budget.max_concurrent_trials", f"must be a whole number >= 1 or None, got {b.max_concurrent_trials!r}"
    if not _is_int(b.search_seed) or b.search_seed < 0:
        yield "budget.search_seed", f"must be a whole number >= 0, got {b.search_seed!r}"
    if not _is_real(b.checkpoint_every_s) or b.checkpoint_every_s < 0:
        yield "budget.checkpoint_every_s", f"must be a number of seconds >= 0, got {b.checkpoint_every_s!r}"
    if not _is_int(b.seeds) or b.seeds < 2:
        yield "budget.seeds", f"must be a whole number >= 2 (statistics need at least two seeds per arm), got {b.seeds!r}"
    looks = tuple(b.looks) if isinstance(b.looks, (tuple, list)) else None
    if looks is None or not all(_is_int(n) for n in looks):
        yield "budget.looks", f"must be a tuple of seed counts, got {b.looks!r}"
    elif looks and (any(n < 2 for n in looks) or list(looks) != sorted(set(looks)) or looks[-1] != b.seeds):
        yield "budget.looks", (f"must be increasing seed counts >= 2 ending at budget.seeds ({b.seeds!r}), "
                               f"e.g. ({max(2, b.seeds // 4)}, {max(3, b.seeds // 2)}, {b.seeds}); got {b.looks!r}")
    if b.spending not in SPENDING:
        yield "budget.spending", f"must be one of {', '.join(SPENDING)}, got {b.spending!r}"

    try:
        arms = list(sweep.arms())
    except TypeError:  # a malformed arm list, reported above
        arms = []
    for i, c in enumerate(sweep.comparisons):
        where = f"comparisons[{i}]"
        if not isinstance(c, Comparison):
            yield where, f"must be a Comparison(a, b, kind, sesoi), got {c!r}"
            continue
        sides = [getattr(c, side) for side in ("a", "b")]
        pair = [isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in sides]
        for side, value, is_pair in zip(("a", "b"), sides, pair):
            if not (isinstance(value, str) or is_pair):
                yield f"{where}.{side}", f"must be an arm name, or a pair of arm names for an interaction, got {value!r}"
            for arm in (value,) if isinstance(value, str) else value if is_pair else ():
                if arm not in arms:
                    yield f"{where}.{side}", f"unknown arm {arm!r}; arms: {', '.join(arms)}"
        if isinstance(sides[0], str) != isinstance(sides[1], str):
            yield where, "compares an arm with a difference of arms: give both sides as arms, or both as pairs"
        elif c.a == c.b or any(p and v[0] == v[1] for p, v in zip(pair, sides)):
            yield where, f"compares {c.a!r} with itself"
        if c.kind not in QUESTION_KINDS:
            yield f"{where}.kind", f"must be one of {', '.join(QUESTION_KINDS)}, got {c.kind!r}"
        if not _is_real(c.sesoi) or c.sesoi <= 0:
            yield f"{where}.sesoi", f"must be a number > 0 (accuracy points), got {c.sesoi!r}"
    if sweep.report_metric not in REPORT_METRICS:
        yield "report_metric", f"must be one of {', '.join(REPORT_METRICS)}, got {sweep.report_metric!r}"

    r = sweep.resources
    if not _is_real(r.cpu) or r.cpu <= 0:
        yield "resources.cpu", f"must be a number > 0, got {r.cpu!r}"
    if not _is_real(r.gpu) or r.gpu < 0 or (r.gpu > 1 and r.gpu != int(r.gpu)):
        yield "resources.gpu", f"must be 0, a fraction in (0, 1] or a whole number, got {r.gpu!r}"

    if sweep.metric not in METRICS:
        yield "metric", f"must be one of {', '.join(METRICS)}, got {sweep.metric!r}"
    if sweep.mode not in ("min", "max"):
        yield "mode", f"must be 'min' or 'max', got {sweep.mode!r}"
    elif sweep.metric in METRICS and METRICS[sweep.metric] != sweep.mode:
        yield "mode", f"{sweep.metric} is to be {'maximised' if METRICS[sweep.metric] == 'max' else 'minimised'}: use mode={METRICS[sweep.metric]!r}"


def _evaluation_problems(sweep: Sweep):
    """BN momentum only moves the moving averages; with precise evaluation they are recomputed
    before every evaluation, so searching or comparing momentum there spends trials on nothing."""
    if "bn_statistics" in sweep.nuisance:
        yield "nuisance.bn_statistics", "is how results are measured, not a nuisance: set it in fixed, or make it scientific"
    try:
        arms = [sweep.resolve(arm) for arm in sweep.arms()]
    except (TypeError, KeyError):  # malformed arms, reported elsewhere
        return
    def momentum_matters(arm) -> bool:  # beyond the moving averages: renorm trains with it
        return arm.config.get("bn_statistics") != "precise" or arm.config.get("norm") == "renorm" or "norm" in sweep.nuisance

    for section in ("scientific", "fixed", "nuisance"):
        for name in getattr(sweep, section):
            if name in BN_PARAMETERS and not any(name in a.config or name in a.nuisance for a in arms):
                norms = sorted({str(a.config.get("norm", "none")) for a in arms})
                yield f"{section}.{name}", f"means nothing for any arm's norm ({', '.join(norms)}): remove it"
    for section in ("scientific", "nuisance"):
        kept = [a for a in arms if "bn_momentum" in a.config]
        if "bn_momentum" in getattr(sweep, section) and kept and not any(momentum_matters(a) for a in kept):
            yield f"{section}.bn_momentum", ("cannot change a result evaluated with bn_statistics='precise' (momentum only "
                                             "moves the moving averages, which precise evaluation recomputes): remove it, or "
                                             "set fixed={'bn_statistics': 'moving'}")
    max_epochs = sweep.budget.max_epochs
    for arm in arms:
        warmup = arm.config.get("warmup_epochs", 0)
        if _is_real(warmup) and _is_int(max_epochs) and warmup >= max_epochs:
            where = "scientific.warmup_epochs" if "warmup_epochs" in sweep.scientific else "fixed.warmup_epochs"
            yield where, f"must be below budget.max_epochs={max_epochs} (the run would never reach its learning rate), got {warmup!r}"
            return


def _value_problems(where: str, name: str, values: Sequence):
    """The first disallowed value of a hyperparameter with a known check, if any."""
    check = CHECKS.get(name)
    for value in values if check else ():
        why = check(value)
        if why:
            yield where, why
            return


def _distribution_problems(where: str, name: str, dist, sampler: str):
    if not isinstance(dist, DISTRIBUTIONS):
        yield where, f"must be a distribution (Uniform, LogUniform, IntUniform, Choice, ComplementLogUniform), got {dist!r}; put constants in fixed"
        return
    if isinstance(dist, Choice):
        if not dist.values:
            yield where, "Choice needs at least one value"
        elif len(set(map(repr, dist.values))) != len(dist.values):
            yield where, f"duplicate values in Choice{list(dist.values)!r}"
        else:
            yield from _value_problems(where, name, dist.values)
        return
    if sampler == "grid":
        yield where, f"the grid sampler needs Choice distributions, got {type(dist).__name__}"
        return
    if not (_is_real(dist.low) and _is_real(dist.high)):
        yield where, f"bounds must be finite numbers, got low={dist.low!r}, high={dist.high!r}"
        return
    if dist.low > dist.high:
        yield where, f"low bound {dist.low} is above its high bound {dist.high}"
        return
    if isinstance(dist, IntUniform) and not (_is_int(dist.low) and _is_int(dist.high)):
        yield where, f"IntUniform bounds must be whole numbers, got low={dist.low!r}, high={dist.high!r}"
        return
    if isinstance(dist, (LogUniform,)) or (isinstance(dist, IntUniform) and dist.log):
        if dist.low <= 0:
            yield where, f"a log scale needs low > 0, got {dist.low}"
            return
    if isinstance(dist, ComplementLogUniform) and not (0 <= dist.low and dist.high < 1):
        yield where, f"ComplementLogUniform needs 0 <= low <= high < 1, got low={dist.low}, high={dist.high}"
        return
    yield from _value_problems(where, name, [dist.low, dist.high])

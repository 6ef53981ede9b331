"""What a sweep asks, as plain data: no Ray, Optuna or Keras here.

A :class:`Sweep` names the scientific hyperparameter (its values are the arms), the nuisance
hyperparameters re-tuned for every arm, and the fixed ones, plus the budget, resources and the
metric. ``Sweep.validate()`` checks everything before any cluster resource is touched and
raises :class:`SpecError`, one line per bad field naming what is allowed.

Example:
    >>> sweep = Sweep(
    ...     name="demo", model="mlp", dataset="digits",
    ...     scientific={"bn_placement": ("none", "before")},
    ...     nuisance={"learning_rate": LogUniform(1e-4, 1e-1)},
    ... )
    >>> sweep.validate()
    >>> list(sweep.arms())
    ['none', 'before']
    >>> arm = sweep.resolve("none")
    >>> arm.has_bn, sorted(arm.nuisance), arm.config["bn_placement"]
    (False, ['learning_rate'], 'none')
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable


class SpecError(ValueError):
    """A sweep spec or CLI value is invalid; ``str(error)`` has one line per bad field."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("\n".join(f"{name}: {why}" for name, why in self.problems))


# --- distributions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float


@dataclass(frozen=True)
class IntUniform:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __init__(self, values: Sequence):
        object.__setattr__(self, "values", tuple(values))


@dataclass(frozen=True)
class ComplementLogUniform:
    """A value in [low, high] < 1 whose complement ``1 - value`` is drawn log-uniformly.

    The natural scale for BN momentum (a moving-average decay): 0.9, 0.99 and 0.999 are
    equally far apart.
    """

    low: float
    high: float


Distribution = Uniform | LogUniform | IntUniform | Choice | ComplementLogUniform
DISTRIBUTIONS = (Uniform, LogUniform, IntUniform, Choice, ComplementLogUniform)


# --- the hyperparameters bnsearch understands -----------------------------------------------

PLACEMENTS = ("none", "before", "after")
ACTIVATIONS = ("relu", "relu6", "sigmoid", "tanh")
OPTIMIZERS = ("sgd", "adam")
METRICS = {"val_accuracy": "max", "val_loss": "min", "accuracy": "max", "loss": "min"}
SAMPLERS = ("tpe", "random", "grid")
QUESTION_KINDS = ("difference", "equivalence")
REPORT_METRICS = ("test_accuracy", "val_accuracy", "accuracy")
# Which BN statistics every evaluation uses. `precise` (PreciseBN, Wu & Johnson 2021): the
# population statistics recomputed over training batches with the current weights just before
# the evaluation; `moving`: Keras' exponential moving averages, which lag the weights.
BN_STATISTICS = ("precise", "moving")
LR_SCHEDULES = ("constant", "cosine")  # after a linear warmup of `warmup_epochs`

# How a trial ends, in one place (while it runs: `running`). `diverged` (loss NaN/inf) and
# `collapsed` (training at chance) ran but failed as results; `failed` is a crash. All three
# are failures of the arm.
COMPLETED = ("finished", "stopped_early", "diverged", "collapsed")  # ran to an end the trial chose
FAILURES = ("diverged", "collapsed", "failed")

# Defaults follow Keras (BN momentum 0.99 is a moving-average decay, epsilon 1e-3).
DEFAULTS: dict[str, Any] = {
    "bn_placement": "before",
    "bn_momentum": 0.99,
    "bn_epsilon": 1e-3,
    "bn_center": True,
    "bn_scale": True,
    "optimizer": "adam",
    "learning_rate": 1e-3,
    "batch_size": 32,
    "sgd_momentum": 0.9,
    "weight_decay": 0.0,
    "lr_schedule": "constant",
    "warmup_epochs": 0,
    "bn_statistics": "precise",
}
BN_PARAMETERS = ("bn_momentum", "bn_epsilon", "bn_center", "bn_scale", "bn_statistics")


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
    "activation": _one_of(ACTIVATIONS),
    "output_bn": _BOOL,
    "hidden_sizes": _SIZES,
    "filters": _SIZES,
    "width_multiplier": _POSITIVE,
    "kernel_size": _check(lambda v: _is_int(v) and v >= 1, "a whole number >= 1"),
}


def has_bn(config: Mapping[str, Any]) -> bool:
    """Whether a resolved configuration (model options included) has any BatchNormalization layer."""
    return config.get("bn_placement", DEFAULTS["bn_placement"]) != "none" or bool(config.get("output_bn", False))


@dataclass(frozen=True)
class Arm:
    """One arm, resolved once (:meth:`Sweep.resolve`) and used by the spec, the search space
    and the trial: its full fixed configuration (defaults, model options, fixed values, the
    arm's scientific values), whether it has BN, and the nuisance space it searches (BN
    parameters only where there is BN)."""

    name: str
    config: Mapping[str, Any]
    nuisance: Mapping[str, "Distribution"]

    @property
    def has_bn(self) -> bool:
        return has_bn(self.config)


# --- budget, resources ---------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How much machine time the search phase gets, the same for every arm.

    ``grace_epochs`` and ``reduction_factor`` configure ASHA: a trial runs at least
    ``grace_epochs`` and only the best 1/``reduction_factor`` of trials go on at each rung.
    """

    trials_per_arm: int = 8
    max_epochs: int = 10
    early_stopping: bool = True
    grace_epochs: int = 1
    reduction_factor: int = 2
    sampler: str = "tpe"
    max_concurrent_trials: int | None = None  # None: as many as the resources allow
    search_seed: int = 0
    seeds: int = 10  # replicate phase: every arm's best configuration re-run on seeds 0..seeds-1
    checkpoint_every_s: float = 30.0  # a trial checkpoints at most this often (0: every epoch)


@dataclass(frozen=True)
class Comparison:
    """A claim the report settles: arm ``a`` against arm ``b`` on the sweep's report metric.

    ``kind="difference"`` asks whether the arms differ; ``kind="equivalence"`` whether they
    are the same within ``sesoi``, the smallest effect of interest, in accuracy points
    (0.5 = half a percentage point).
    """

    a: str
    b: str
    kind: str = "difference"
    sesoi: float = 0.5

    @property
    def label(self) -> str:
        return f"{self.a} vs {self.b}"


@dataclass(frozen=True)
class Resources:
    """Per trial. ``gpu`` is a fraction in (0, 1] (trials share a GPU) or a whole number."""

    cpu: float = 1
    gpu: float = 0


# --- the sweep -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sweep:
    name: str
    model: str
    dataset: str
    scientific: Mapping[str, Sequence]
    nuisance: Mapping[str, Distribution] = field(default_factory=dict)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    model_args: Mapping[str, Any] = field(default_factory=dict)
    dataset_args: Mapping[str, Any] = field(default_factory=dict)
    budget: Budget = Budget()
    resources: Resources = Resources()
    metric: str = "val_accuracy"
    mode: str = "max"
    question: str = ""
    comparisons: Sequence[Comparison] = ()  # none declared: every pair of arms, "difference"
    report_metric: str = "test_accuracy"  # final value at the full epoch budget, in the replicate phase

    # -- arms and spaces --------------------------------------------------------------------

    def arms(self) -> dict[str, dict[str, Any]]:
        """Arm name → the scientific values it fixes, in declaration order.

        One scientific hyperparameter names arms by value ("before"); several by
        ``name=value`` pairs ("bn_placement=before,batch_size=32").
        """
        names = list(self.scientific)
        arms = {}
        for combo in itertools.product(*(self.scientific[n] for n in names)):
            values = dict(zip(names, combo))
            if len(names) == 1:
                label = str(combo[0])
            else:
                label = ",".join(f"{n}={v}" for n, v in values.items())
            arms[label] = values
        return arms

    def resolve(self, arm: str) -> Arm:
        """The one place an arm's configuration is decided: defaults, then model options, then
        fixed values, then the arm's scientific values. An arm without BN has no BN parameters,
        neither fixed nor searched."""
        scientific = self.arms()[arm]
        config = {**DEFAULTS, **self.model_args, **self.fixed, **scientific}
        with_bn = has_bn(config)
        if not with_bn:
            for name in BN_PARAMETERS:
                config.pop(name, None)
        nuisance = {name: dist for name, dist in self.nuisance.items() if with_bn or name not in BN_PARAMETERS}
        return Arm(arm, config, nuisance)

    def declared_comparisons(self) -> list[Comparison]:
        """The family the report tests (and Holm-corrects): the declared comparisons, else
        every pair of arms as a difference question."""
        if self.comparisons:
            return list(self.comparisons)
        return [Comparison(a, b) for a, b in itertools.combinations(self.arms(), 2)]

    def replace(self, **changes) -> "Sweep":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record of the spec (distributions tagged with their type)."""

        def encode(value):
            if isinstance(value, DISTRIBUTIONS):
                return {"distribution": type(value).__name__, **dataclasses.asdict(value)}
            if dataclasses.is_dataclass(value):
                return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
            if isinstance(value, Mapping):
                return {k: encode(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [encode(v) for v in value]
            return value

        return encode(self)

    # -- validation -------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise :class:`SpecError` listing every bad field; return None when all is well."""
        problems = list(_problems(self))
        if problems:
            raise SpecError(problems)


def _problems(sweep: Sweep):
    # Registries are imported here, not at module top, to keep `spec` import-light; neither
    # imports a framework at import time.
    from bnsearch.data import dataset_parameters, list_datasets
    from bnsearch.models import list_models, model_parameters

    if not isinstance(sweep.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", sweep.name):
        yield "name", f"must be letters, digits, '_', '-' or '.', got {sweep.name!r}"

    model_ok = sweep.model in list_models()
    if not model_ok:
        yield "model", f"unknown model {sweep.model!r}; known: {', '.join(list_models())}"
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

    try:
        arms = list(sweep.arms())
    except TypeError:  # a malformed arm list, reported above
        arms = []
    for i, c in enumerate(sweep.comparisons):
        where = f"comparisons[{i}]"
        if not isinstance(c, Comparison):
            yield where, f"must be a Comparison(a, b, kind, sesoi), got {c!r}"
            continue
        for side in ("a", "b"):
            if getattr(c, side) not in arms:
                yield f"{where}.{side}", f"unknown arm {getattr(c, side)!r}; arms: {', '.join(arms)}"
        if c.a == c.b:
            yield where, f"compares arm {c.a!r} with itself"
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
    for section in ("scientific", "nuisance"):
        if "bn_momentum" in getattr(sweep, section) and any(a.config.get("bn_statistics") == "precise" for a in arms):
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

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class SpecError(ValueError):
    """A sweep spec or CLI value is invalid; ``str(error)`` has one line per bad field."""

    def __init__(self, problems: Sequence[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__("\n".join(f"{name}: {why}" for name, why in self.problems))


def one_line(error: BaseException) -> str:
    """An exception as ``Type: first line of its message``, for a SpecError's reason."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


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
# The norm layer put at every placement site (bnsearch.models.norms). `group` and `layer` need
# no batch statistics and keep no moving averages.
NORMS = ("batch", "renorm", "ghost", "synchronized", "group", "layer")
BATCH_FREE_NORMS = ("group", "layer")
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

# Seeds, in one place. Search-phase trials are seeded 10000 + trial index (replicate seeds start
# at 0, so the two never meet), and every search trial of every arm validates on one split, so
# ASHA, the samplers and the choice of each arm's best configuration compare like with like
# (replicates re-draw the split per seed).
SEARCH_SEED_BASE = 10_000
SEARCH_SPLIT_SEED = 9_999

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
    "norm": "batch",
    "ghost_batch_size": 32,  # Hoffer et al. 2017's virtual batch
    "norm_groups": 32,  # Wu & He 2018
    "renorm_rmax": 3.0,  # Ioffe 2017's clipping after its ramp
    "renorm_dmax": 5.0,
}
# Parameters of the norm layers: an arm without any has none of them, neither fixed nor searched;
# a variant's own parameters go with that variant only, and a batch-free norm has no moving
# averages to set the momentum of or recompute.
VARIANT_PARAMETERS = {"ghost": ("ghost_batch_size",), "group": ("norm_groups",), "renorm": ("renorm_rmax", "renorm_dmax")}
MOVING_AVERAGE_PARAMETERS = ("bn_momentum", "bn_statistics")
BN_PARAMETERS = ("norm", "bn_epsilon", "bn_center", "bn_scale", *MOVING_AVERAGE_PARAMETERS,
                 *(name for names in VARIANT_PARAMETERS.values() for name in names))


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
    # Group-sequential replicate phase: the seed counts at which the verdicts are looked at (the
    # last is ``seeds``); it stops once every comparison is decided. () = one look, at ``seeds``.
    looks: tuple[int, ...] = ()
    spending: str = "obrien_fleming"  # or "pocock": how the looks share alpha (Lan-DeMets)
    checkpoint_every_s: float = 30.0  # a trial checkpoints at most this often (0: every epoch)


@dataclass(frozen=True)
class Comparison:
    """A claim the report settles, on the sweep's report metric: arm ``a`` against arm ``b``, or
    an interaction, a difference of differences such as ``("bn,b8", "none,b8")`` against
    ``("bn,b128", "none,b128")`` (is BN's gain at batch 8 the same as at 128?).

    ``kind="difference"`` asks whether the two sides differ; ``kind="equivalence"`` whether
    they are the same within ``sesoi``, the smallest effect of interest, in accuracy points
    (0.5 = half a percentage point).
    """

    a: str | tuple[str, str]
    b: str | tuple[str, str]
    kind: str = "difference"
    sesoi: float = 0.5

    def __post_init__(self):  # a spec read back from JSON has lists where tuples were
        for side in ("a", "b"):
            if isinstance(getattr(self, side), list):
                object.__setattr__(self, side, tuple(getattr(self, side)))

    @property
    def terms(self) -> dict[str, int]:
        """Each arm's weight in the contrast: a - b, or (a[0] - a[1]) - (b[0] - b[1])."""
        weights: dict[str, int] = {}
        for side, sign in ((self.a, 1), (self.b, -1)):
            for arm, inner in zip((side,) if isinstance(side, str) else side, (1, -1)):
                weights[arm] = weights.get(arm, 0) + sign * inner
        return {arm: w for arm, w in weights.items() if w}

    @property
    def sides(self) -> tuple[str, str]:
        """The two sides' names: an arm, or ``(x − y)`` for a difference of arms."""
        return tuple(side if isinstance(side, str) else f"({side[0]} − {side[1]})" for side in (self.a, self.b))

    @property
    def label(self) -> str:
        return " vs ".join(self.sides)


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
        fixed values, then the arm's scientific values. Parameters that mean nothing for the
        arm's norm (see ``VARIANT_PARAMETERS``) are dropped, neither fixed nor searched."""
        scientific = self.arms()[arm]
        config = {**DEFAULTS, **self.model_args, **self.fixed, **scientific}
        norm = config["norm"] if has_bn(config) else None
        unused = set(BN_PARAMETERS) if norm is None else set()
        if norm is not None and "norm" not in self.nuisance:  # a searched norm may be any variant
            unused |= {name for variant, names in VARIANT_PARAMETERS.items() if variant != norm for name in names}
            unused |= set(MOVING_AVERAGE_PARAMETERS) if norm in BATCH_FREE_NORMS else set()
        for name in unused:
            config.pop(name, None)
        nuisance = {name: dist for name, dist in self.nuisance.items() if name not in unused}
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
        from bnsearch.validation import problems  # it reads the spec's vocabulary: imported here

        found = list(problems(self))
        if found:
            raise SpecError(found)

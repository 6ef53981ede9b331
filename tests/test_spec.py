import json
import re
from pathlib import Path

import pytest

from bnsearch.cli import load_sweep
from bnsearch.spec import Budget, Choice, Comparison, ComplementLogUniform, IntUniform, LogUniform, Resources, SpecError, Sweep, Uniform

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.py"))


def base(**changes) -> Sweep:
    sweep = Sweep(
        name="t", model="mlp", dataset="digits",
        scientific={"bn_placement": ("none", "before")},
        nuisance={"learning_rate": LogUniform(1e-4, 1e-1), "bn_epsilon": LogUniform(1e-5, 1e-2)},
    )
    return sweep.replace(**changes)


def moving(**changes) -> Sweep:
    """A sweep about the moving averages themselves, where BN momentum can matter."""
    return base(fixed={"bn_statistics": "moving"}, nuisance={"learning_rate": LogUniform(1e-4, 1e-1),
                                                             "bn_momentum": ComplementLogUniform(0.9, 0.999)}).replace(**changes)


def problems(sweep: Sweep) -> dict[str, str]:
    with pytest.raises(SpecError) as error:
        sweep.validate()
    return dict(error.value.problems)


def test_a_good_spec_validates():
    assert base().validate() is None


@pytest.mark.parametrize(
    "changes, field, message",
    [
        ({"model": "resnet"}, "model", "unknown model 'resnet'; known: convnet, mlp, mobilenet_v2"),
        ({"dataset": "imagenet"}, "dataset", "known: cifar10, digits"),
        ({"nuisance": {"learning_rate": LogUniform(0, 1)}}, "nuisance.learning_rate", "log scale needs low > 0"),
        ({"nuisance": {"learning_rate": Uniform(-1, 1)}}, "nuisance.learning_rate", "must be a number > 0, got -1"),
        ({"fixed": {"learning_rate": 0.0}}, "fixed.learning_rate", "must be a number > 0"),
        ({"fixed": {"bn_momentum": 1.0}}, "fixed.bn_momentum", "in (0, 1)"),
        ({"nuisance": {"bn_momentum": ComplementLogUniform(0.9, 0.99)}}, "nuisance.bn_momentum",
         "cannot change a result evaluated with bn_statistics='precise'"),
        ({"scientific": {"bn_momentum": (0.9, 0.99)}}, "scientific.bn_momentum", "set fixed={'bn_statistics': 'moving'}"),
        ({"nuisance": {"bn_statistics": Choice(("precise", "moving"))}}, "nuisance.bn_statistics", "not a nuisance"),
        ({"fixed": {"bn_statistics": "running"}}, "fixed.bn_statistics", "one of precise, moving"),
        ({"fixed": {"lr_schedule": "step"}}, "fixed.lr_schedule", "one of constant, cosine"),
        ({"fixed": {"warmup_epochs": -1}}, "fixed.warmup_epochs", "a number of epochs >= 0"),
        ({"fixed": {"warmup_epochs": 10}, "budget": Budget(max_epochs=10)}, "fixed.warmup_epochs", "below budget.max_epochs=10"),
        ({"fixed": {"bn_epsilon": 0}}, "fixed.bn_epsilon", "must be a number > 0"),
        ({"nuisance": {"batch_size": Choice((32, 0))}}, "nuisance.batch_size", "a whole number >= 1, got 0"),
        ({"fixed": {"batch_size": 1.5}}, "fixed.batch_size", "a whole number >= 1"),
        ({"scientific": {"bn_placement": ()}}, "scientific.bn_placement", "an empty arm list"),
        ({"scientific": {}}, "scientific", "at least one"),
        ({"scientific": {"bn_placement": ("before", "before")}}, "scientific.bn_placement", "duplicate arm values"),
        ({"scientific": {"bn_placement": ("before", "middle")}}, "scientific.bn_placement", "one of none, before, after"),
        ({"fixed": {"bn_placement": "after"}}, "fixed.bn_placement", "duplicate name: already set in scientific"),
        ({"nuisance": {"learning_rate": LogUniform(0.1, 0.01)}}, "nuisance.learning_rate", "low bound 0.1 is above its high bound 0.01"),
        ({"nuisance": {"learning_rate": 0.1}}, "nuisance.learning_rate", "put constants in fixed"),
        ({"nuisance": {"batch_size": IntUniform(8, 4)}}, "nuisance.batch_size", "above its high bound"),
        ({"nuisance": {"batch_size": Choice((32, 32))}}, "nuisance.batch_size", "duplicate values"),
        ({"resources": Resources(gpu=1.5)}, "resources.gpu", "a fraction in (0, 1] or a whole number, got 1.5"),
        ({"resources": Resources(gpu=-0.5)}, "resources.gpu", "a fraction in (0, 1]"),
        ({"resources": Resources(cpu=0)}, "resources.cpu", "> 0"),
        ({"fixed": {"depth": 3}}, "fixed.depth", "unknown hyperparameter; allowed:"),
        ({"fixed": {"activation": "gelu"}}, "fixed.activation", "one of relu, relu6, sigmoid, tanh"),
        ({"fixed": {"optimizer": "lamb"}}, "fixed.optimizer", "one of sgd, adam"),
        ({"model_args": {"hidden_sizes": ()}}, "model_args.hidden_sizes", "non-empty list"),
        ({"dataset_args": {"rows": 3}}, "dataset_args.rows", "allowed: test_fraction"),
        ({"budget": Budget(trials_per_arm=0)}, "budget.trials_per_arm", ">= 1"),
        ({"budget": Budget(max_epochs=3, grace_epochs=5)}, "budget.grace_epochs", "[1, max_epochs=3]"),
        ({"budget": Budget(reduction_factor=1)}, "budget.reduction_factor", ">= 2"),
        ({"budget": Budget(sampler="cmaes")}, "budget.sampler", "one of tpe, random, grid"),
        ({"budget": Budget(sampler="grid")}, "nuisance.learning_rate", "grid sampler needs Choice"),
        ({"metric": "f1"}, "metric", "one of val_accuracy, val_loss"),
        ({"mode": "min"}, "mode", "use mode='max'"),
        ({"name": "no spaces"}, "name", "letters, digits"),
        ({"budget": Budget(seeds=1)}, "budget.seeds", "whole number >= 2"),
        ({"comparisons": [Comparison("before", "after")]}, "comparisons[0].b", "unknown arm 'after'; arms: none, before"),
        ({"comparisons": [Comparison("before", "before")]}, "comparisons[0]", "compares 'before' with itself"),
        ({"comparisons": [Comparison(("before", "none"), "none")]}, "comparisons[0]", "both sides as arms, or both as pairs"),
        ({"comparisons": [Comparison(("before", "x"), ("none", "before"))]}, "comparisons[0].a", "unknown arm 'x'"),
        ({"comparisons": [Comparison(("before", "none", "none"), ("none", "before"))]}, "comparisons[0].a", "a pair of arm names"),
        ({"budget": Budget(seeds=10, looks=(5, 8))}, "budget.looks", "ending at budget.seeds (10)"),
        ({"budget": Budget(seeds=10, looks=(6, 4, 10))}, "budget.looks", "increasing seed counts >= 2"),
        ({"budget": Budget(seeds=10, looks=5)}, "budget.looks", "must be a tuple of seed counts"),
        ({"budget": Budget(spending="linear")}, "budget.spending", "one of obrien_fleming, pocock"),
        ({"comparisons": [Comparison("before", "none", kind="same")]}, "comparisons[0].kind", "one of difference, equivalence"),
        ({"comparisons": [Comparison("before", "none", sesoi=0)]}, "comparisons[0].sesoi", "number > 0 (accuracy points)"),
        ({"comparisons": [("before", "none")]}, "comparisons[0]", "must be a Comparison"),
        ({"report_metric": "val_loss"}, "report_metric", "one of test_accuracy"),
        ({"fixed": {"norm": "instance"}}, "fixed.norm", "one of batch, renorm, ghost, synchronized, group, layer"),
        ({"fixed": {"norm": "ghost", "ghost_batch_size": 1}}, "fixed.ghost_batch_size", "a whole number of examples >= 2"),
        ({"fixed": {"norm": "group", "norm_groups": 0}}, "fixed.norm_groups", "a whole number >= 1"),
        ({"fixed": {"norm": "renorm", "renorm_rmax": 0.5}}, "fixed.renorm_rmax", "a number >= 1"),
        ({"model": "tests.usermodels.nets:nothing"}, "model", "cannot import 'tests.usermodels.nets:nothing' (AttributeError"),
        ({"scientific": {"ghost_batch_size": (8, 16)}, "fixed": {"norm": "group"}}, "scientific.ghost_batch_size",
         "means nothing for any arm's norm (group): remove it"),
        ({"fixed": {"norm": "layer"}, "nuisance": {"bn_momentum": ComplementLogUniform(0.9, 0.99)}}, "nuisance.bn_momentum",
         "means nothing for any arm's norm (layer, none)"),
    ],
)
def test_each_bad_value_gets_one_line_naming_the_field(changes, field, message):
    found = problems(base(**changes))
    assert field in found, found
    assert message in found[field]


@pytest.mark.parametrize("changes, field, message", [
    ({"nuisance": {"bn_momentum": ComplementLogUniform(0.9, 1.0)}}, "nuisance.bn_momentum", "high < 1"),
    ({"nuisance": {"bn_momentum": Choice((0.9, 0.0))}}, "nuisance.bn_momentum", "in (0, 1)"),
])
def test_bad_momentum_values_are_named_where_momentum_can_matter(changes, field, message):
    assert moving().validate() is None
    assert message in problems(moving(**changes))[field]


def test_all_bad_fields_are_reported_together():
    found = problems(base(fixed={"learning_rate": -1.0, "batch_size": 0}))
    assert set(found) == {"fixed.learning_rate", "fixed.batch_size"}
    assert str(SpecError(list(found.items()))).count("\n") == 1


def test_arms_and_conditional_bn_parameters():
    sweep = base()
    assert list(sweep.arms()) == ["none", "before"]
    before, none = sweep.resolve("before"), sweep.resolve("none")
    assert before.has_bn and not none.has_bn
    assert set(before.nuisance) == {"learning_rate", "bn_epsilon"}
    assert set(none.nuisance) == {"learning_rate"}  # no BN, no BN parameters
    assert "bn_momentum" not in none.config and "bn_statistics" not in none.config
    assert before.config["bn_momentum"] == 0.99 and before.config["bn_statistics"] == "precise"


def test_each_norm_variant_keeps_only_the_parameters_it_has():
    sweep = base(scientific={"norm": ("batch", "ghost", "group")}, fixed={"ghost_batch_size": 16},
                 nuisance={"learning_rate": LogUniform(1e-4, 1e-1), "norm_groups": Choice((4, 8))})
    batch, ghost, group = (sweep.resolve(arm) for arm in ("batch", "ghost", "group"))
    assert "ghost_batch_size" not in batch.config and ghost.config["ghost_batch_size"] == 16
    assert set(group.nuisance) == {"learning_rate", "norm_groups"} and "norm_groups" not in ghost.nuisance
    # a batch-free norm has no moving averages: no momentum, nothing to recompute
    assert "bn_momentum" not in group.config and "bn_statistics" not in group.config
    assert group.config["bn_epsilon"] == 1e-3 and ghost.config["bn_statistics"] == "precise"
    # a searched norm may turn out to be any variant: every variant's parameters stay
    searched = base(nuisance={"norm": Choice(("batch", "ghost"))}, fixed={"ghost_batch_size": 16}).resolve("before")
    assert searched.config["ghost_batch_size"] == 16 and "norm" in searched.nuisance
    assert "norm" not in base().resolve("none").config


def test_bn_momentum_may_be_searched_for_renorm_which_trains_with_it():
    assert base(fixed={"norm": "renorm"}, nuisance={"bn_momentum": ComplementLogUniform(0.9, 0.999)}).validate() is None


def test_a_model_by_import_path_takes_its_builders_options():
    sweep = base(model="tests.usermodels.nets:resnet", model_args={"width": 4})
    assert sweep.validate() is None
    assert "fixed.depth" in problems(sweep.replace(fixed={"depth": 2}))


def test_an_arm_whose_only_bn_is_before_the_output_searches_bn_parameters():
    sweep = base(scientific={"output_bn": (False, True)}, fixed={"bn_placement": "none"})
    assert set(sweep.resolve("True").nuisance) == {"learning_rate", "bn_epsilon"}
    assert set(sweep.resolve("False").nuisance) == {"learning_rate"}
    # the same through model_args: the spec, the search space and the trial all see one resolution
    via_model_args = base(scientific={"bn_placement": ("none",)}, model_args={"output_bn": True})
    arm = via_model_args.resolve("none")
    assert arm.has_bn and "bn_epsilon" in arm.nuisance and arm.config["bn_epsilon"] == 1e-3


def test_several_scientific_hyperparameters_cross_into_named_arms():
    sweep = base(scientific={"bn_placement": ("none", "before"), "batch_size": (16, 256)})
    assert list(sweep.arms()) == [
        "bn_placement=none,batch_size=16", "bn_placement=none,batch_size=256",
        "bn_placement=before,batch_size=16", "bn_placement=before,batch_size=256",
    ]
    assert sweep.resolve("bn_placement=before,batch_size=256").config["batch_size"] == 256


def test_spec_record_is_json():
    record = json.loads(json.dumps(moving().to_dict()))
    assert record["nuisance"]["bn_momentum"] == {"distribution": "ComplementLogUniform", "low": 0.9, "high": 0.999}
    assert record["budget"]["trials_per_arm"] == 8


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
@pytest.mark.parametrize("dry_run", [False, True], ids=["full", "dry-run"])
def test_every_sweep_file_validates(path, dry_run):
    sweep = load_sweep(str(path), dry_run)
    sweep.validate()
    if dry_run:
        assert sweep.dataset in ("digits", "mnist1d"), "a dry run must work offline"
    text = path.read_text()
    assert all(word in text for word in ("Question", "Command", "Cost", "Compares")), "the docstring states them"
    assert sweep.comparisons, "every sweep declares the comparisons its report settles"
    imported = re.findall(r"^\s*(?:from|import) ([\w.]+)", text, flags=re.M)
    assert {m.split(".")[0] for m in imported} <= {"bnsearch", "os"}, "ray submit ships the file alone: bnsearch only"


def test_undeclared_comparisons_default_to_every_pair_as_a_difference():
    sweep = base(scientific={"bn_placement": ("none", "before", "after")})
    assert [(c.a, c.b, c.kind, c.sesoi) for c in sweep.declared_comparisons()] == [
        ("none", "before", "difference", 0.5), ("none", "after", "difference", 0.5), ("before", "after", "difference", 0.5)]
    declared = [Comparison("before", "after", kind="equivalence", sesoi=1.0)]
    assert base(scientific={"bn_placement": ("none", "before", "after")}, comparisons=declared).declared_comparisons() == declared

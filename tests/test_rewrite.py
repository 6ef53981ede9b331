"""Your own model, rewritten: every placement and variant against the same network built by hand
(layer order and parameter count), Keras Applications' MobileNetV2 against the registry's, and
the models bnsearch must refuse."""

import keras
import pytest

from bnsearch.models import Norm, create_model
from bnsearch.models.norms import NORM_LAYERS, make_norm
from bnsearch.models.rewrite import WEIGHTED, RewriteError, anatomy, check_classes, describe, rewrite
from bnsearch.spec import NORMS, PLACEMENTS
from tests.usermodels import nets

SHAPE = (8, 8, 1)


def order(model):
    """Each layer as what it is to a placement: weighted (with or without bias), norm, activation, other."""
    def kind(layer):
        if isinstance(layer, WEIGHTED):
            return "W+b" if layer.use_bias else "W"
        if isinstance(layer, NORM_LAYERS):
            return type(layer).__name__ + ("-renorm" if getattr(layer, "renorm", False) else "")
        if isinstance(layer, (keras.layers.Activation, keras.layers.ReLU)):
            return "act"
        return type(layer).__name__
    return [kind(layer) for layer in model.layers]


def by_hand(norm):
    return lambda name, shape: make_norm(norm, name, shape)


CASES = [(placement, kind) for placement in PLACEMENTS for kind in NORMS]


@pytest.mark.parametrize("placement, kind", CASES)
def test_a_resnet_with_residual_adds_rewrites_like_one_built_by_hand(placement, kind):
    norm = Norm(placement, kind=kind, momentum=0.9, epsilon=1e-4, groups=4)
    ours = create_model("tests.usermodels.nets:resnet", SHAPE, 10, norm)
    hand = nets.resnet(SHAPE, 10, placement=placement, norm=by_hand(norm))
    assert order(ours) == order(hand)
    assert ours.count_params() == hand.count_params()
    sites = anatomy(ours).sites
    assert [s.layer for s in sites] == ["stem", "block0_conv1", "block1_conv1"]
    assert all(s.placement == placement for s in sites)
    # the BNs before the residual adds are no placement sites: kept (as the variant), or gone in none
    linear = anatomy(ours).linear_norms
    assert sorted(linear) == ([] if placement == "none" else ["block0_conv2_bn", "block1_conv2_bn", "block1_proj_bn"])
    norms = [layer for layer in ours.layers if isinstance(layer, NORM_LAYERS)]
    assert all(layer.epsilon == 1e-4 for layer in norms)
    assert all(layer.momentum == 0.9 for layer in norms if isinstance(layer, keras.layers.BatchNormalization))


@pytest.mark.parametrize("placement, kind", CASES)
def test_a_model_with_a_concat_branch_fused_activations_and_a_softmax_rewrites_like_one_built_by_hand(placement, kind):
    norm = Norm(placement, kind=kind, groups=4)
    ours = create_model("tests.usermodels.nets:branches", SHAPE, 10, norm)
    hand = nets.branches(SHAPE, 10, placement=placement, norm=by_hand(norm), by_hand=True)
    assert order(ours) == order(hand)
    assert ours.count_params() == hand.count_params()
    assert [s.layer for s in anatomy(ours).sites] == ["stem", "right_reduce", "left", "right"]
    assert ours.get_layer("logits").activation.__name__ == "linear"  # trained on logits


def test_the_user_model_is_left_as_it_was_and_every_rewrite_has_fresh_weights():
    original = nets.resnet(SHAPE, 10)
    names = [layer.name for layer in original.layers]
    first, second = rewrite(original, Norm("after"), SHAPE), rewrite(original, Norm("after"), SHAPE)
    assert [layer.name for layer in original.layers] == names and order(original) == order(nets.resnet(SHAPE, 10))
    assert not any(a is b for a in first.weights for b in original.weights + second.weights)


def test_a_sequential_model_is_rewritten():
    model = create_model("tests.usermodels.nets:sequential", SHAPE, 10, Norm("after"), units=16)
    assert order(model) == ["InputLayer", "Flatten", "W+b", "act", "BatchNormalization", "W+b"]


def test_keras_applications_mobilenet_v2_rewritten_to_before_is_the_registry_mobilenet_v2():
    apps = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3), classes=1000)
    ours = create_model("mobilenet_v2", (224, 224, 3), 1000, Norm("before"))
    rewritten = rewrite(apps, Norm("before"), (224, 224, 3))
    assert order(rewritten) == order(ours)
    assert rewritten.count_params() == ours.count_params() == 3_538_984
    assert len(anatomy(rewritten).sites) == len(anatomy(ours).sites) == 35  # stem, 17 depthwise, 16 expand, head


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_the_registry_mobilenet_v2_rewritten_to_a_placement_is_the_registry_one_at_that_placement(placement):
    source = create_model("mobilenet_v2", (32, 32, 3), 10, Norm("before"), width_multiplier=0.35)
    target = create_model("mobilenet_v2", (32, 32, 3), 10, Norm(placement), width_multiplier=0.35)
    rewritten = rewrite(source, Norm(placement), (32, 32, 3))
    assert order(rewritten) == order(target) and rewritten.count_params() == target.count_params()


def test_a_subclassed_model_is_refused_with_the_reason():
    with pytest.raises(RewriteError, match=r"'subclassed' is a subclassed keras.Model with its own call\(\)"):
        create_model("tests.usermodels.nets:subclassed", SHAPE, 10, Norm("before"))


def test_nested_shared_and_hidden_norms_are_refused_naming_the_layer():
    inner = nets.resnet(SHAPE, 10)
    x = keras.Input(SHAPE)
    with pytest.raises(RewriteError, match=r"'resnet' \(Functional\) is a nested model"):
        rewrite(keras.Model(x, inner(x)), Norm("after"), SHAPE)
    dense = keras.layers.Dense(4, name="shared")
    x = keras.Input((4,))
    with pytest.raises(RewriteError, match=r"'shared' \(Dense\) is used 2 times"):
        rewrite(keras.Model(x, dense(dense(x))), Norm("after"), (4,))

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.bn = keras.layers.BatchNormalization()

        def call(self, x):
            return self.bn(x)

    x = keras.Input((4,))
    with pytest.raises(RewriteError, match=r"'block' \(Block\) holds norm layers"):
        rewrite(keras.Model(x, Block(name="block")(x)), Norm("after"), (4,))


def test_a_model_with_the_wrong_number_of_outputs_is_refused():
    with pytest.raises(RewriteError, match="outputs 10 values per example; the dataset has 3 classes"):
        check_classes(nets.sequential(SHAPE, 10), 3)


def test_describe_names_every_site_in_layer_order_with_its_settings():
    lines = describe(create_model("tests.usermodels.nets:resnet", SHAPE, 10, Norm("before", kind="ghost", ghost_batch_size=8)))
    assert lines[0] == "stem: Conv2D(no bias) → GhostBN(virtual batch 8, momentum 0.99, ε 0.001) → ReLU"
    assert any(line.startswith("block1_proj_bn: GhostBN") and "no activation next to it" in line for line in lines)


def refused(build, message, shape=SHAPE):
    x = keras.Input(shape)
    with pytest.raises(RewriteError, match=message):
        rewrite(keras.Model(x, build(x)), Norm("after"), shape)


def test_a_norm_that_follows_a_site_only_through_pooling_or_beside_another_consumer_is_refused():
    L = keras.layers
    refused(lambda x: L.Dense(10)(L.Flatten()(L.BatchNormalization(name="bn")(L.MaxPooling2D(name="pool")(
        L.Conv2D(4, 3, activation="relu", name="conv")(x))))), "'bn' follows the placement site 'conv' through pool")

    def beside(x):
        act = L.ReLU(name="act")(L.Conv2D(4, 3, name="conv")(x))
        return L.Dense(10)(L.Flatten()(L.Concatenate()([L.BatchNormalization(name="bn")(act), act])))
    refused(beside, "'bn' follows the placement site 'conv' beside another layer using its output")


def test_keras_ops_activations_channels_first_and_non_softmax_heads_are_refused():
    L = keras.layers
    refused(lambda x: L.Dense(10)(L.Flatten()(keras.ops.relu(L.BatchNormalization()(L.Conv2D(4, 3)(x))))),
            r"is a keras.ops activation, not a layer")
    refused(lambda x: L.Dense(10)(L.Flatten()(L.BatchNormalization(axis=1)(L.Conv2D(4, 3, data_format="channels_first")(x)))),
            "is channels-first", shape=(1, 8, 8))
    refused(lambda x: L.Dense(10, activation="sigmoid", name="head")(L.Flatten()(x)), "the output layer 'head' applies sigmoid")


def test_a_second_norm_right_after_a_site_stays_and_a_fused_activation_gets_a_free_name():
    L = keras.layers
    x = keras.Input((6,))
    d = L.Dense(8, activation="relu", name="d")(x)
    taken = L.Dense(8, name="d_act")(d)  # the name the split-out activation would take
    model = keras.Model(x, L.Dense(3)(L.BatchNormalization(name="output_bn")(L.Activation("relu")(L.BatchNormalization()(taken)))))
    rewritten = rewrite(model, Norm("after"), (6,))
    assert "d_act1" in [layer.name for layer in rewritten.layers]
    assert "output_bn" in anatomy(rewritten).linear_norms

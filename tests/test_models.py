import keras
import pytest

from bnsearch.models import Norm, create_model, list_models, model_parameters

PLACEMENTS = ("none", "before", "after")
# (input shape, options) each registered model is built with
INPUTS = {
    "mlp": [((8, 8, 1), {}), ((28, 28, 1), {"output_bn": True})],
    "convnet": [((28, 28, 1), {}), ((32, 32, 3), {}), ((40,), {})],
    "mobilenet_v2": [((32, 32, 3), {"width_multiplier": 0.35}), ((28, 28, 1), {"width_multiplier": 0.35})],
}
WEIGHTED = (keras.layers.Dense, keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def test_every_registered_model_has_test_inputs():
    assert sorted(INPUTS) == list_models()


def cases():
    for name, inputs in INPUTS.items():
        for shape, options in inputs:
            for placement in PLACEMENTS:
                yield pytest.param(name, shape, options, placement, id=f"{name}-{'x'.join(map(str, shape))}-{placement}")


def kinds(model):
    return [type(layer).__name__ for layer in model.layers]


@pytest.mark.parametrize("name, shape, options, placement", list(cases()))
def test_layer_order_follows_the_placement(name, shape, options, placement):
    norm = Norm(placement, momentum=0.9, epsilon=1e-5)
    model = create_model(name, shape, 10, norm, **options)
    assert model.output_shape == (None, 10)
    layers = model.layers
    # output_bn is its own option (BN right before the logits), independent of the placement
    bns = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization) and layer.name != "output_bn"]
    if placement == "none":
        assert bns == [] and all(layer.use_bias for layer in layers if isinstance(layer, WEIGHTED))
        return
    assert bns and all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    for i, layer in enumerate(layers):
        if not isinstance(layer, keras.layers.Activation):
            continue
        before, after = layers[i - 1], layers[i + 1] if i + 1 < len(layers) else None
        if placement == "before":  # Layer(no bias) → BN → Act
            assert isinstance(before, keras.layers.BatchNormalization), (layer.name, before.name)
            weighted = layers[i - 2]
            assert isinstance(weighted, WEIGHTED) and not weighted.use_bias
        else:  # Layer → Act → BN
            assert isinstance(before, WEIGHTED) and before.use_bias, (layer.name, before.name)
            assert isinstance(after, keras.layers.BatchNormalization), (layer.name, getattr(after, "name", None))


@pytest.mark.parametrize("name", list(INPUTS))
def test_layer_names_are_deterministic(name):
    shape, options = INPUTS[name][0]
    first = [layer.name for layer in create_model(name, shape, 10, Norm("after"), **options).layers]
    second = [layer.name for layer in create_model(name, shape, 10, Norm("after"), **options).layers]
    assert first == second and len(set(first)) == len(first)


@pytest.mark.parametrize("alpha", [1.0, 0.35])
def test_mobilenet_v2_matches_keras_applications(alpha):
    ours = create_model("mobilenet_v2", (224, 224, 3), 1000, Norm("before"), width_multiplier=alpha)
    reference = keras.applications.MobileNetV2(weights=None, alpha=alpha)
    assert ours.count_params() == reference.count_params()  # 3,538,984 at alpha 1
    convs = lambda m: [(l.name, l.kernel.shape) for l in m.layers if isinstance(l, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]  # noqa: E731
    assert convs(ours) == convs(reference)


def test_mobilenet_v2_layout():
    model = create_model("mobilenet_v2", (32, 32, 3), 10, Norm("before"))
    names = [layer.name for layer in model.layers]
    assert sum(n.endswith("_project") for n in names) == 17
    assert sum(n.endswith("_add") for n in names) == 10
    pads = [model.get_layer(n) for n in names if n.endswith("_pad")]
    assert [p.padding for p in pads] == [((0, 1), (0, 1))] * 4
    assert all(model.get_layer(n.replace("_pad", "_depthwise")).padding == "valid" for n in names if n.endswith("_pad"))
    assert model.get_layer("Conv_1").filters == 1280 and model.get_layer("Conv1").strides == (1, 1)  # small-input stem
    assert model.get_layer("Conv_1_act").output.shape[1:3] == (2, 2)
    # the projection BN has no activation next to it: it stays in 'after' and goes in 'none'
    assert "block_5_project_bn" in [l.name for l in create_model("mobilenet_v2", (32, 32, 3), 10, Norm("after")).layers]


def test_parameter_counts_of_the_mlp():
    # 64→32→32→10: weights + biases; 'before' drops the hidden biases and adds 4 BN params per unit
    none = create_model("mlp", (8, 8, 1), 10, Norm("none"), hidden_sizes=(32, 32)).count_params()
    before = create_model("mlp", (8, 8, 1), 10, Norm("before"), hidden_sizes=(32, 32)).count_params()
    after = create_model("mlp", (8, 8, 1), 10, Norm("after"), hidden_sizes=(32, 32)).count_params()
    dense = 64 * 32 + 32 * 32 + 32 * 10 + 10
    assert none == dense + 64 and before == dense + 64 * 4 and after == dense + 64 + 64 * 4
    with_output_bn = create_model("mlp", (8, 8, 1), 10, Norm("before"), hidden_sizes=(32, 32), output_bn=True)
    assert [l.name for l in with_output_bn.layers][-2:] == ["output_bn", "logits"]


def test_model_parameters_are_introspected_without_building():
    assert model_parameters("mlp") == {"hidden_sizes": (32, 32), "activation": "relu", "output_bn": False}
    assert "width_multiplier" in model_parameters("mobilenet_v2")

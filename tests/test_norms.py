"""The norm variants: Ghost BN against a hand computation, each variant's layer and settings,
GroupNorm's group count, and each variant through PreciseBN."""

import keras
import numpy as np
import pytest

from bnsearch.models import Norm, create_model
from bnsearch.models.norms import BatchNormalization, GhostBatchNormalization, group_count, make_norm
from bnsearch.precise_bn import TrainModePass, bn_layers, precise_statistics
from bnsearch.spec import NORMS


def ghost_by_hand(x, virtual, eps):
    """Each virtual batch normalized by its own mean and biased variance (over examples and positions)."""
    out, means, variances, sizes = np.empty_like(x), [], [], []
    for start in range(0, len(x), virtual):
        part = x[start:start + virtual]
        axes = tuple(range(part.ndim - 1))
        mean, var = part.mean(axis=axes), part.var(axis=axes)
        out[start:start + virtual] = (part - mean) / np.sqrt(var + eps)
        means.append(mean), variances.append(var), sizes.append(len(part))
    w = np.array(sizes)[:, None] / len(x)
    return out, (np.array(means) * w).sum(0), (np.array(variances) * w).sum(0)


@pytest.mark.parametrize("shape", [(10, 3), (10, 4, 4, 3)])
def test_ghost_bn_normalizes_each_virtual_batch_and_updates_the_moving_averages_with_their_mean(shape):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * rng.uniform(0.5, 3, size=shape[-1]) + np.arange(shape[-1])).astype("float32")
    layer = GhostBatchNormalization(virtual_batch_size=4, momentum=0.9, epsilon=1e-3)  # batches of 4, 4 and 2
    out = layer(x, training=True).numpy()
    expected, mean, variance = ghost_by_hand(x.astype(np.float64), 4, 1e-3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), 0.9 + 0.1 * variance, rtol=1e-4)
    np.testing.assert_allclose(np.array(layer.batch_moments(x)[1]), variance, rtol=1e-4)
    # inference is plain BN with the moving statistics
    inference = (x - layer.moving_mean.numpy()) / np.sqrt(layer.moving_variance.numpy() + 1e-3)
    np.testing.assert_allclose(layer(x, training=False).numpy(), inference, rtol=1e-4, atol=1e-4)


def test_ghost_bn_with_one_virtual_batch_is_batch_norm():
    x = np.random.default_rng(1).normal(size=(8, 5)).astype("float32")
    ghost, plain = GhostBatchNormalization(virtual_batch_size=8), keras.layers.BatchNormalization()
    np.testing.assert_allclose(ghost(x, training=True).numpy(), plain(x, training=True).numpy(), atol=1e-5)
    np.testing.assert_allclose(ghost.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)


def test_ghost_bn_survives_saving(tmp_path):
    model = create_model("mlp", (6,), 3, Norm("before", kind="ghost", ghost_batch_size=5), hidden_sizes=(8,))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert [l.virtual_batch_size for l in bn_layers(loaded)] == [5]


def test_each_variant_makes_its_layer_with_its_settings():
    made = {kind: make_norm(Norm(kind=kind, momentum=0.9, epsilon=1e-5, groups=4, ghost_batch_size=16,
                                 renorm_rmax=2.0, renorm_dmax=1.0), "n", (4, 4, 8)) for kind in NORMS}
    assert type(made["batch"]) is BatchNormalization and not made["batch"].renorm
    assert made["renorm"].renorm and made["renorm"].renorm_clipping == {"rmax": 2.0, "rmin": 0.5, "dmax": 1.0}
    assert made["renorm"].renorm_momentum == 0.9
    assert made["ghost"].virtual_batch_size == 16 and made["ghost"].momentum == 0.9
    assert made["synchronized"].synchronized
    assert made["group"].groups == 4 and made["layer"].groups == 1
    assert all(layer.epsilon == 1e-5 for layer in made.values())


@pytest.mark.parametrize("wanted, shape, groups", [
    (32, (8, 8, 64), 32), (32, (8, 8, 24), 8), (32, (4, 4, 16), 16),  # gcd
    (32, (32,), 4), (32, (12,), 1), (32, (2, 32), 8),  # at least 8 values per group
])
def test_group_count(wanted, shape, groups):
    assert group_count(wanted, shape) == groups


@pytest.mark.parametrize("kind", NORMS)
def test_every_variant_trains_and_recalibrates_where_it_has_moving_statistics(kind):
    model = create_model("convnet", (8, 8, 1), 3, Norm("before", kind=kind, ghost_batch_size=4, groups=4), filters=(8,))
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    layers = bn_layers(model)
    if kind in ("group", "layer"):
        assert layers == []  # nothing to recalibrate: no moving statistics
        return
    passes = TrainModePass(model)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]
    before = [v.numpy().copy() for v in model.non_trainable_variables]
    with precise_statistics(passes, batches) as (population, _):
        assert np.allclose(layers[0].moving_mean.numpy(), population.mean[0], atol=1e-6)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.non_trainable_variables))
    if kind == "ghost":  # the population variance PreciseBN computes is the virtual batches'
        inputs = keras.Model(model.inputs, layers[0].input)(x[:8]).numpy().astype(np.float64)
        _, _, variance = ghost_by_hand(inputs, 4, 1e-3)
        np.testing.assert_allclose(passes.statistics(batches[:1]).variance[0], variance, rtol=1e-4)

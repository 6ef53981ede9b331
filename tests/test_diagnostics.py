import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from bnsearch import compiled, data, train
from bnsearch.diagnostics import bn_diagnostics, bn_layers

KEYS = {"bn_layers", "bn_channels", "bn_dead_channels", "bn_train_mode_val_accuracy", "bn_eval_mode_val_accuracy",
        "bn_precise_val_accuracy", "bn_mode_gap", "bn_mean_shift", "bn_var_log_ratio", "bn_stale_stats"}
SPLITS = data.split(data.load("digits"), 0, 0.1)
SHAPE, CLASSES = SPLITS.input_shape, SPLITS.num_classes


def datasets():
    shuffled = data.tf_dataset(*SPLITS.train, 64, shuffle_seed=0)
    return shuffled, data.tf_dataset(*SPLITS.train, 64), data.tf_dataset(*SPLITS.validation, 64)


def mlp(placement="before", momentum=0.9, seed=0):
    keras.utils.set_random_seed(seed)
    return compiled.build_model("mlp", {"bn_placement": placement, "bn_momentum": momentum, "hidden_sizes": (32, 32)}, SHAPE, CLASSES)


def fit(model, epochs=4):
    shuffled, _, val = datasets()
    compiled.compile_model(model, compiled.make_optimizer({"learning_rate": 0.01}))
    model.fit(shuffled, validation_data=val, epochs=epochs, verbose=0, shuffle=False)
    return model


def fit_with_the_training_flag_bug(model, epochs=4):
    """A custom loop that runs the forward pass with training=False: BN normalizes with its
    moving statistics and never updates them. (In Keras 3 the functional-API form,
    ``BatchNormalization()(x, training=False)``, does not reproduce it: Functional.call passes
    the outer training flag to every layer, overriding the one given at construction.)"""
    shuffled, _, _ = datasets()
    optimizer = keras.optimizers.Adam(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))  # the bug
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    for _ in range(epochs):
        for x, y in shuffled:
            step(x, y)
    return model


def diagnose(model):
    _, plain, val = datasets()
    return bn_diagnostics(model, plain, val)


def test_the_training_flag_bug_is_flagged_as_stale_with_large_shifts():
    d = diagnose(fit_with_the_training_flag_bug(mlp()))
    assert set(d) == KEYS and d["bn_layers"] == 2.0
    assert d["bn_stale_stats"] == 1.0
    # measured over seeds 0-3: shift 1.5-2.3, log ratio 0.9-1.2, gap -0.03 to -0.17
    assert d["bn_mean_shift"] > 1.0 and d["bn_var_log_ratio"] > 0.5
    assert d["bn_eval_mode_val_accuracy"] > 0.8  # it learns, around fixed 0/1 statistics
    assert d["bn_mode_gap"] < 0  # batch statistics are foreign to it
    assert d["bn_mode_gap"] == pytest.approx(d["bn_train_mode_val_accuracy"] - d["bn_eval_mode_val_accuracy"])


@pytest.mark.parametrize("momentum", [0.5, 0.9])
def test_a_healthy_model_tracks_its_population_statistics(momentum):
    d = diagnose(fit(mlp(momentum=momentum)))
    assert d["bn_stale_stats"] == 0.0
    # measured over seeds 0-2: shift 0.07-0.14, log ratio 0.06-0.18, |gap| <= 0.03
    assert d["bn_mean_shift"] < 0.3 and d["bn_var_log_ratio"] < 0.4
    assert abs(d["bn_mode_gap"]) < 0.06 and d["bn_eval_mode_val_accuracy"] > 0.9


def test_high_momentum_lags_but_is_not_stale():
    low, high = (diagnose(fit(mlp(momentum=m))) for m in (0.9, 0.99))
    assert high["bn_stale_stats"] == 0.0  # 0.99 for ~80 steps: still half the initial 0/1
    assert high["bn_mean_shift"] > 2 * low["bn_mean_shift"] and high["bn_var_log_ratio"] > 2 * low["bn_var_log_ratio"]


def test_an_untrained_model_is_stale():
    assert diagnose(mlp())["bn_stale_stats"] == 1.0


def test_diagnostics_leave_every_variable_bit_identical():
    model = fit(mlp(), epochs=1)
    before = [v.numpy().copy() for v in model.variables]  # weights, BN moving stats, seed states
    diagnose(model)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, model.variables))


def test_no_bn_no_diagnostics():
    model = mlp("none")
    assert bn_layers(model) == [] and diagnose(model) == {}


def test_nested_models_are_searched_and_probed():
    L = keras.layers
    inner_in = keras.Input((16,))
    inner = keras.Model(inner_in, L.Activation("relu")(L.BatchNormalization(name="inner_bn")(L.Dense(16)(inner_in))))
    seq = keras.Sequential([keras.Input((16,)), L.Dense(16), L.BatchNormalization(name="seq_bn")])
    x = inputs = keras.Input(SHAPE)
    x = L.BatchNormalization(name="outer_bn")(L.Dense(16)(L.Flatten()(x)))
    model = keras.Model(inputs, L.Dense(CLASSES)(seq(inner(x))))
    assert [layer.name for layer in bn_layers(model)] == ["outer_bn", "inner_bn", "seq_bn"]
    d = diagnose(fit(model, epochs=2))
    assert d["bn_layers"] == 3.0 and d["bn_stale_stats"] == 0.0 and all(math.isfinite(v) for v in d.values())


# mobilenet_v2 (52 BN layers, residual adds) passes too but takes ~15 s, mostly tf.function tracing.
@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_registered_models_can_be_diagnosed(name):
    shape, options = {"mlp": ((8, 8, 1), {}), "convnet": ((12, 12, 1), {"filters": (4, 4)})}[name]
    keras.utils.set_random_seed(0)
    model = compiled.build_model(name, {"bn_placement": "before", **options}, shape, 3)
    ds = tf.data.Dataset.from_tensor_slices((np.random.default_rng(0).random((16, *shape), np.float32), np.arange(16) % 3)).batch(8)
    d = bn_diagnostics(model, ds.take(1), ds)
    assert d["bn_layers"] == len(bn_layers(model)) > 0 and d["bn_stale_stats"] == 1.0  # never trained


def test_run_reports_bn_diagnostics_with_the_final_epoch_only():
    reports = []
    config = {"seed": 3, "bn_placement": "before", "bn_momentum": 0.9, "learning_rate": 0.01, "batch_size": 64, "hidden_sizes": (16,)}
    final = train.run(config, model="mlp", dataset="digits", dataset_args={}, max_epochs=3, report=lambda m, _: reports.append(m))
    assert [m["epoch"] for m in reports] == [1, 2, 3]
    assert all(not any(k.startswith("bn_") for k in m) for m in reports[:-1])
    assert KEYS <= set(final) and final["bn_layers"] == 1.0 and final["bn_stale_stats"] == 0.0
    # verdicts use precise statistics by default; the moving ones are logged beside them
    assert final["bn_precise_val_accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-6)
    assert final["bn_eval_mode_val_accuracy"] == pytest.approx(final["val_accuracy_moving"], abs=1e-6)


def test_dead_channels_are_counted_not_exploded():
    model = fit(mlp("after"), epochs=2)  # BN after the ReLU: a dead unit feeds BN a constant 0
    dense, bn = model.get_layer("dense0"), model.get_layer("dense0_bn")
    kernel, bias = dense.get_weights()
    kernel[:, :5], bias[:5] = 0.0, -1.0  # five units that never fire
    dense.set_weights([kernel, bias])
    bn.moving_mean.assign(bn.moving_mean.numpy() + 0.5)  # and stale moving means on them
    d = diagnose(model)
    assert d["bn_channels"] == 64.0 and 5.0 <= d["bn_dead_channels"] < 32  # ours, and any the run killed itself
    assert d["bn_mean_shift"] < 20  # without the dead channels' zero variance in the denominator


def test_lost_updates_a_frozen_bn_and_a_forced_inference_pass_give_the_signs_the_docstring_says():
    lost = fit(mlp(momentum=0.9))
    for layer in bn_layers(lost):  # training normalized with batch statistics; the updates never landed
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape))
    d = diagnose(lost)
    assert d["bn_stale_stats"] == 1.0 and d["bn_mode_gap"] > 0.1  # measured: +0.15
    frozen = mlp()
    for layer in bn_layers(frozen):
        layer.trainable = False  # Keras 3 then runs BN in inference mode, also in training
    d = diagnose(fit(frozen))
    assert d["bn_stale_stats"] == 1.0 and d["bn_mode_gap"] == 0.0
    assert diagnose(fit_with_the_training_flag_bug(mlp()))["bn_mode_gap"] < 0

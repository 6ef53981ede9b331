"""Trace once, train many: a kept model trains the next trial exactly as a fresh build would,
without tracing again, whatever its learning rate, schedule, batch size, BN momentum and
epsilon and weight decay."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bnsearch import compiled, results, train
from bnsearch.models.norms import BatchNormalization, GroupNormalization

BRANCHES = "tests.usermodels.nets:branches"  # convolutions, 4-D BN, a concatenation and a Dropout (seed state)
FIRST = {"seed": 1, "bn_placement": "before", "optimizer": "sgd", "sgd_momentum": 0.9, "learning_rate": 0.05, "batch_size": 32,
         "bn_momentum": 0.9, "bn_epsilon": 1e-3, "weight_decay": 1e-4, "lr_schedule": "cosine", "warmup_epochs": 1}
SECOND = {**FIRST, "seed": 2, "learning_rate": 0.01, "batch_size": 64, "bn_momentum": 0.5, "bn_epsilon": 1e-2,
          "weight_decay": 5e-4, "lr_schedule": "constant", "warmup_epochs": 0}
TIMINGS = ("time_s", "samples_per_s")


def trial(config, model=BRANCHES, epochs=2):
    reports, files = [], {}
    train.run(config, model=model, dataset="digits", dataset_args={}, max_epochs=epochs,
              report=lambda metrics, _: reports.append(metrics), keep=files.update)
    untimed = [{k: v for k, v in m.items() if not k.endswith(TIMINGS)} for m in reports]
    return untimed, results.unpack_correct(files[train.TEST_CORRECT_FILE])


def traces(kept: compiled.Compiled) -> list[int]:
    """How often the training step, inference and the training-mode pass were traced."""
    # Keras' train_function is a plain function around its tf.function (no public handle on it).
    (step,) = [c.cell_contents for c in kept.model.train_function.__closure__
               if hasattr(c.cell_contents, "experimental_get_tracing_count")]
    return [f.experimental_get_tracing_count() for f in (step, kept.infer, kept.passes.forward)]


def test_a_kept_model_trains_the_next_trial_exactly_as_a_fresh_build_without_tracing_again():
    compiled.forget()
    trial(FIRST)
    (kept,) = compiled._kept.values()
    assert traces(kept) == [1, 1, 1]
    reused, reused_correct = trial(SECOND)
    assert list(compiled._kept.values()) == [kept] and traces(kept) == [1, 1, 1]  # same model, no new trace

    compiled.forget()
    fresh, fresh_correct = trial(SECOND)
    (new,) = compiled._kept.values()
    assert new is not kept and traces(new) == [1, 1, 1]
    assert reused == fresh and (reused_correct == fresh_correct).all()  # every metric, every epoch, bit for bit
    assert reused[-1]["test_accuracy"] > 0.5


def test_another_structure_gets_its_own_model_and_a_process_keeps_two():
    compiled.forget()
    config = {**FIRST, "hidden_sizes": (16,)}
    trial(config, model="mlp", epochs=1)
    trial({**config, "bn_placement": "after"}, model="mlp", epochs=1)
    trial({**config, "hidden_sizes": (8,)}, model="mlp", epochs=1)
    trial({**config, "seed": 5}, model="mlp", epochs=1)  # the first structure again: built anew, the oldest forgotten
    assert len(compiled._kept) == compiled.KEPT_MODELS
    placements = [compiled.structure("mlp", c, (64,), 10) for c in (config, {**config, "bn_placement": "after"})]
    assert placements[0] != placements[1]
    assert compiled.structure("mlp", config, (64,), 10) == compiled.structure("mlp", {**SECOND, "hidden_sizes": (16,)}, (64,), 10)
    assert compiled.structure("mlp", config, (64,), 10) != compiled.structure("mlp", {**config, "weight_decay": 0}, (64,), 10)


@pytest.mark.parametrize("layer", [BatchNormalization, GroupNormalization])
def test_a_traced_norm_takes_new_momentum_and_epsilon_without_retracing(layer):
    x = tf.constant(np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32"))
    options = {"groups": 4} if layer is GroupNormalization else {"momentum": 0.9}
    norm = layer(epsilon=1e-3, **options)
    norm.build(x.shape)
    step = tf.function(lambda x: norm(x, training=True))
    step(x)
    new = {"groups": 4} if layer is GroupNormalization else {"momentum": 0.2}
    for name, value in {**new, "epsilon": 0.5}.items():
        if name != "groups":
            setattr(norm, name, value)
    reference = getattr(keras.layers, layer.__name__)(epsilon=0.5, **new)
    reference.build(x.shape)
    for target, source in zip(reference.weights, norm.weights):
        target.assign(source)
    np.testing.assert_allclose(step(x).numpy(), reference(x, training=True).numpy(), rtol=1e-6, atol=1e-6)
    assert step.experimental_get_tracing_count() == 1
    assert norm.get_config()["epsilon"] == 0.5 and len(norm.weights) == len(reference.weights)  # plain floats, no new weights
    if layer is BatchNormalization:
        np.testing.assert_allclose(norm.moving_mean.numpy(), reference.moving_mean.numpy(), rtol=1e-6)


def test_the_schedule_is_keras_cosine_decay_with_warmup():
    ours = compiled.WarmupCosine(0.1, warmup_steps=10, decay_steps=40, alpha=0.0)
    keras_ = keras.optimizers.schedules.CosineDecay(0.0, decay_steps=40, alpha=0.0, warmup_target=0.1, warmup_steps=10)
    for step in (0, 3, 10, 25, 50, 70):
        assert float(ours(step)) == pytest.approx(float(keras_(step)), abs=1e-8)
    assert keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(ours)).get_config() == ours.get_config()


def test_weight_decay_reads_the_schedule_once_per_step_and_decays_exactly_as_keras_does(monkeypatch):
    """Keras' weight decay evaluates the learning-rate schedule once per variable (ops traced
    into the step for each); bnsearch's once per step, with the same updates bit for bit."""
    calls = []
    schedule_call = compiled.WarmupCosine.__call__
    monkeypatch.setattr(compiled.WarmupCosine, "__call__", lambda self, step: calls.append(1) or schedule_call(self, step))
    x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
    y = np.arange(64) % 3
    weights = []
    for make in (compiled.SGD, keras.optimizers.SGD):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), *[keras.layers.Dense(8, activation="relu") for _ in range(4)], keras.layers.Dense(3)])
        model.compile(optimizer=make(compiled.WarmupCosine(0.1, 2, 6, 0.0), momentum=0.9, weight_decay=1e-2),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), steps_per_execution=1)
        calls.clear()
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        weights.append([w.numpy() for w in model.weights])
        if make is compiled.SGD:
            assert len(calls) <= 4  # per trace (Keras traces this step twice): one read for the decay, one for the update
        else:
            assert len(calls) > 2 * len(model.trainable_variables)  # per trace, one per variable and one for the update
    for ours, keras_own in zip(*weights):
        np.testing.assert_array_equal(ours, keras_own)


def test_a_trial_on_a_kept_model_keeps_tensorflows_kernel_cache(monkeypatch):
    """Keras' clear_session and set_random_seed empty TensorFlow's kernel cache, and with it the
    kept model's instantiated training step (seconds to make again): a trial keeps it; dropping
    the kept models empties it."""
    from tensorflow.python import pywrap_tfe

    compiled.forget()
    trial(FIRST, epochs=1)
    cleared = []
    empty = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", lambda handle: cleared.append(handle) or empty(handle))
    trial(SECOND, epochs=1)
    assert cleared == []
    compiled.forget()
    assert len(cleared) == 1

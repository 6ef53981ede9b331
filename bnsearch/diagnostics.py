"""BatchNorm diagnostics for a trained Keras model: does BN at inference match BN in training?

In training mode a BN layer normalizes with the current batch's statistics. In inference mode it
uses its moving (exponentially averaged) mean and variance. ``val_accuracy``, ``test_accuracy``
and every checkpoint choice use inference mode. If the moving statistics do not describe what the
layer actually sees, those metrics describe a different network from the one that was trained,
and a claim such as "BN placement X beats Y" may be about a bookkeeping failure, not about X or Y.
The numbers below (all floats, reported with the final epoch) separate the two:

- ``bn_layers``: how many BN layers the model has, nested models included.
- ``bn_eval_mode_val_accuracy``: validation accuracy (a fraction) in inference mode. This is what
  ``val_accuracy`` measures.
- ``bn_train_mode_val_accuracy``: the same with ``model(x, training=True)``, where every BN
  normalizes by the validation batch's own statistics. The batches are the validation dataset's,
  so the result depends on its batch size.
- ``bn_mode_gap``: train-mode minus inference-mode accuracy. It is near 0 when the moving
  statistics stand in well for batch statistics. It is positive when inference mode loses
  accuracy: the moving statistics are stale, lag behind the weights (momentum too high for the
  run's length) or were estimated on batches unlike the data. It is negative when the network
  learned to rely on fixed statistics (the training-flag bug below) or batches are too small.
- ``bn_mean_shift``: how far each layer's moving mean is from the population mean of its inputs,
  in population standard deviations and averaged over channels. The value reported is the worst
  layer's. The population statistics are recomputed over (up to ``max_train_batches`` batches
  of) the training data, with the whole network in inference mode: these are the inputs each
  layer sees at inference. 0.1 means the moving mean is off by 0.1σ.
- ``bn_var_log_ratio``: the same comparison for the variance, as
  ``|log((moving_var + ε) / (pop_var + ε))|`` averaged over channels, worst layer. 0.69 means a
  factor of 2. Both shift values are small when the moving averages converged to the population.
  They stay large after few steps at momentum 0.99, because the averages still remember their
  initial 0 and 1.
- ``bn_stale_stats``: 1.0 when the moving statistics never moved in any BN layer, although
  the population is not standardized. This is the classic training-flag bug: BN runs in
  inference mode during training (``training=False`` forced inside a layer, or a frozen BN), so
  gradient steps never update the moving mean and variance, which stay at 0 and 1. The network
  then learns around a fixed affine map, and ``bn_mode_gap`` is usually strongly negative.

Diagnostics leave the model bit-identical. A training-mode forward pass updates BN moving
statistics, and also Dropout's seed state, so every model variable is saved before that pass and
restored after it.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

BN = keras.layers.BatchNormalization
# bn_stale_stats needs the untouched 0/1 statistics to be measurably wrong for the population:
# off by more than 0.1σ in mean or ~10% in variance in at least one layer. Otherwise they are a
# fine estimate (e.g. BN right after a standardizing layer), and flagging them would be noise.
STALE_TOLERANCE = 0.1


def bn_layers(model) -> list:
    """Every ``keras.layers.BatchNormalization`` in ``model``, nested models' included, in layer
    order. BN layers hidden inside a subclassed layer's ``call`` are not in any layer list and are
    not found."""
    found = []
    for layer in getattr(model, "layers", ()):
        found.extend([layer] if isinstance(layer, BN) else bn_layers(layer))
    return found


def bn_diagnostics(model, train_ds, val_ds, max_train_batches: int | None = None) -> dict[str, float]:
    """BN diagnostics for a functional or Sequential ``model`` (see the module docstring).
    Returns {} if the model has no BN.

    ``train_ds`` and ``val_ds`` yield ``(x, y)`` batches with integer labels. Only ``x`` of
    ``train_ds`` is used, for at most ``max_train_batches`` batches, in one pass for all layers.
    """
    layers = bn_layers(model)
    if not layers:
        return {}
    moving = [(_f64(layer.moving_mean), _f64(layer.moving_variance)) for layer in layers]
    population = _population_stats(model, layers, train_ds, max_train_batches)
    shift, log_ratio = [], []
    for layer, (mm, mv), (pm, pv) in zip(layers, moving, population):
        eps = float(layer.epsilon)
        shift.append(np.mean(np.abs(mm - pm) / np.sqrt(pv + eps)))
        log_ratio.append(np.mean(np.abs(np.log((mv + eps) / (pv + eps)))))
    mean_shift, var_log_ratio = float(np.max(shift)), float(np.max(log_ratio))

    # Exact equality to the initial values is robust. A single update with momentum < 1 moves a
    # statistic off 0 or 1 (only a batch whose stats are exactly 0 and 1 could keep them there),
    # and saving and loading a checkpoint keeps float32 values bit-exact, so a healthy run cannot
    # look stale. The check requires every BN layer to be untouched: the whole-model form of the
    # bug. A single untouched layer is not flagged, but its shift values give it away. While the
    # moving statistics are still exactly 0 and 1, mean_shift and var_log_ratio measure how far
    # the population is from (0, 1): the "population is not standardized" test. NaNs compare
    # false: a NaN model is not reported as stale.
    untouched = all(not mm.any() and (mv == 1).all() for mm, mv in moving)
    stale = untouched and max(mean_shift, var_log_ratio) > STALE_TOLERANCE

    eval_accuracy = _accuracy(model, val_ds, training=False)
    saved = [v.numpy() for v in model.variables]  # includes BN moving stats and seed states
    try:
        train_accuracy = _accuracy(model, val_ds, training=True)
    finally:
        for variable, value in zip(model.variables, saved):
            variable.assign(value)
    return {
        "bn_layers": float(len(layers)),
        "bn_train_mode_val_accuracy": train_accuracy,
        "bn_eval_mode_val_accuracy": eval_accuracy,
        "bn_mode_gap": train_accuracy - eval_accuracy,
        "bn_mean_shift": mean_shift,
        "bn_var_log_ratio": var_log_ratio,
        "bn_stale_stats": float(stale),
    }


def _f64(variable) -> np.ndarray:
    return np.asarray(variable.numpy(), dtype=np.float64)


def _bn_inputs(model):
    """A function from a batch ``x`` to the input tensor of every BN layer in ``model``, in
    ``bn_layers`` order, with the network in inference mode. It runs a sub-model of ``model``'s
    graph whose outputs are the BN inputs. A nested model's own ``.input`` is its inner Input,
    so the sub-model outputs the tensor it was called on in this graph instead, and recursion
    continues inside it."""
    parts = [layer for layer in model.layers if isinstance(layer, BN) or bn_layers(layer)]

    def graph_input(layer):
        if isinstance(layer, BN):
            return layer.input
        tensors = layer._inbound_nodes[0].input_tensors  # its call in this graph (no public API)
        return tensors[0] if len(tensors) == 1 else list(tensors)

    probe = keras.Model(model.inputs, [graph_input(layer) for layer in parts])
    inner = [None if isinstance(layer, BN) else _bn_inputs(layer) for layer in parts]

    def run(x):
        outputs = probe(x, training=False)
        found = []
        for tensor, nested in zip([outputs] if len(parts) == 1 else outputs, inner):  # 1: unwrapped
            found.extend([tensor] if nested is None else nested(tensor))
        return found

    return run


def _population_stats(model, layers, train_ds, max_train_batches):
    """Per-channel mean and (biased) variance of every BN layer's input over the training data,
    as float64 arrays. Per-batch moments are computed on the device in float32, with
    ``tf.nn.moments``, which subtracts the mean before squaring. They are then merged on the host
    in float64 with Chan et al.'s pairwise update, so the result does not suffer from the
    cancellation in E[x²] − E[x]²."""
    bn_inputs = _bn_inputs(model)

    @tf.function(reduce_retracing=True)
    def batch_moments(x):
        result = []
        for layer, tensor in zip(layers, bn_inputs(x)):
            tensor = tf.cast(tensor, tf.float32)
            rank = tensor.shape.rank
            channel = layer.axis % rank
            mean, var = tf.nn.moments(tensor, [a for a in range(rank) if a != channel])
            result.append((mean, var, tf.size(tensor) // tf.shape(tensor)[channel]))
        return result

    totals = None  # per layer: [count, mean, M2 (sum of squared deviations)]
    dataset = train_ds if max_train_batches is None else train_ds.take(int(max_train_batches))
    for x, *_ in dataset:
        moments = [(float(n), m.numpy().astype(np.float64), v.numpy().astype(np.float64)) for m, v, n in batch_moments(x)]
        if totals is None:
            totals = [[n, m, v * n] for n, m, v in moments]
            continue
        for total, (n_b, m_b, v_b) in zip(totals, moments):
            n_a, m_a, m2_a = total
            n = n_a + n_b
            delta = m_b - m_a
            total[:] = [n, m_a + delta * (n_b / n), m2_a + v_b * n_b + delta**2 * (n_a * n_b / n)]
    if totals is None:
        raise ValueError("bn_diagnostics: the training dataset yielded no batches")
    return [(m, m2 / n) for n, m, m2 in totals]


def _accuracy(model, dataset, training: bool) -> float:
    """Top-1 accuracy (a fraction) of the logits or probabilities ``model`` outputs."""

    @tf.function(reduce_retracing=True)
    def hits(x, y):
        predicted = tf.argmax(model(x, training=training), axis=-1)
        return tf.reduce_sum(tf.cast(predicted == tf.cast(tf.reshape(y, [-1]), predicted.dtype), tf.int64))

    correct = total = 0
    for x, y in dataset:
        correct += int(hits(x, y))
        total += int(tf.size(y))
    if not total:
        raise ValueError("bn_diagnostics: the validation dataset yielded no batches")
    return correct / total

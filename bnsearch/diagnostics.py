"""BatchNorm diagnostics for a trained Keras model: does BN at inference match BN in training?

In training mode a BN layer normalizes with the current batch's statistics. In inference mode it
uses its moving (exponentially averaged) mean and variance. If the moving statistics do not
describe what the layer actually sees, inference-mode metrics describe a different network from
the one that was trained, and a claim such as "BN placement X beats Y" may be about a
bookkeeping failure, not about X or Y. The population statistics the moving ones should match
are recomputed with the final weights by :mod:`bnsearch.precise_bn`. The numbers below (all
floats, reported with the final epoch) separate the two:

- ``bn_layers``, ``bn_channels``: how many BN layers (nested models included) and channels.
- ``bn_dead_channels``: channels whose population variance is below 1% of the layer's ε, so
  that BN maps them to a constant (dead ReLUs feeding a BN placed after the activation, say).
  They are counted here and left out of the two shift measures, where their vanishing variance
  would turn any offset into thousands of standard deviations.
- ``bn_mean_shift``: how far each layer's moving mean is from the population mean of its
  inputs, in population standard deviations, averaged over live channels; the worst layer's.
  0.1 means the moving mean is off by 0.1σ.
- ``bn_var_log_ratio``: the same for the variance, ``|log((moving_var + ε) / (pop_var + ε))|``
  averaged over live channels, worst layer. 0.69 means a factor of 2. Both shift values are
  small when the moving averages converged; they stay large after few steps at momentum 0.99,
  because the averages still remember their initial 0 and 1.
- ``bn_stale_stats``: 1.0 when the moving statistics never moved in any BN layer, although the
  population is not standardized: BN's moving-average updates never ran.
- ``bn_eval_mode_val_accuracy``, ``bn_precise_val_accuracy``, ``bn_train_mode_val_accuracy``:
  validation accuracy (a fraction) with the moving statistics, with the recomputed population
  statistics, and with every BN normalizing by the validation batch's own statistics (batches
  of the training batch size).
- ``bn_mode_gap``: batch-statistics minus moving-statistics accuracy. Near 0 when the moving
  statistics stand in well for batch statistics; positive when inference with the moving
  statistics loses accuracy (they lag the weights, or were never updated).

The classic bug, by its three forms:
- moving statistics never updated while training normalized with batch statistics (updates
  lost, e.g. a custom loop that drops them): stale = 1 and a large positive gap, the worst case;
- a frozen BN (``trainable = False``): Keras then runs it in inference mode even in training,
  so both accuracies use the 0/1 statistics and the gap is exactly 0, with stale = 1;
- the forward pass forced to ``training=False`` in a custom training loop: the network learns
  around the fixed 0/1 statistics, stale = 1, and the gap is negative (batch statistics are
  foreign to it).

Diagnostics leave the model bit-identical.
"""

from __future__ import annotations

import numpy as np

from bnsearch.precise_bn import Statistics, TrainModePass, bn_layers, precise_statistics  # noqa: F401  (bn_layers re-exported)

# bn_stale_stats needs the untouched 0/1 statistics to be measurably wrong for the population:
# off by more than 0.1σ in mean or ~10% in variance in at least one layer. Otherwise they are a
# fine estimate (e.g. BN right after a standardizing layer), and flagging them would be noise.
STALE_TOLERANCE = 0.1
# A channel whose population variance is below this fraction of ε leaves BN as a constant.
DEAD_VARIANCE = 0.01


def compare(layers, moving: Statistics, population: Statistics) -> tuple[dict[str, float], list[dict]]:
    """The statistics part of the diagnostics (see the module docstring), and the same per layer."""
    per_layer = []
    for layer, mm, mv, pm, pv in zip(layers, moving.mean, moving.variance, population.mean, population.variance):
        eps = float(layer.epsilon)
        live = pv >= DEAD_VARIANCE * eps
        shift = np.abs(mm - pm)[live] / np.sqrt(pv[live] + eps)
        log_ratio = np.abs(np.log((mv[live] + eps) / (pv[live] + eps)))
        per_layer.append({
            "layer": layer.name, "channels": int(pv.size), "dead_channels": int((~live).sum()),
            "mean_shift": float(shift.mean()) if live.any() else None,  # None: every channel dead
            "var_log_ratio": float(log_ratio.mean()) if live.any() else None,
            "moving_untouched": bool(not mm.any() and (mv == 1).all()),
        })
    def worst(key: str) -> float:  # over layers with a live channel
        values = [r[key] for r in per_layer if r[key] is not None and r[key] == r[key]]
        return float(max(values)) if values else 0.0

    mean_shift, var_log_ratio = worst("mean_shift"), worst("var_log_ratio")
    # Exact equality to the initial values is robust. A single update with momentum < 1 moves a
    # statistic off 0 or 1, and saving and loading a checkpoint keeps float32 values bit-exact, so
    # a healthy run cannot look stale. Every layer must be untouched: the whole-model form of the
    # bug; a single untouched layer is not flagged, but its shift values give it away. NaNs
    # compare false: a NaN model is not reported as stale.
    untouched = all(r["moving_untouched"] for r in per_layer)
    stale = untouched and max(mean_shift, var_log_ratio) > STALE_TOLERANCE
    summary = {
        "bn_layers": float(len(layers)),
        "bn_channels": float(sum(r["channels"] for r in per_layer)),
        "bn_dead_channels": float(sum(r["dead_channels"] for r in per_layer)),
        "bn_mean_shift": mean_shift,
        "bn_var_log_ratio": var_log_ratio,
        "bn_stale_stats": float(stale),
    }
    return summary, per_layer


def accuracies(moving: float, precise: float, batch: float) -> dict[str, float]:
    """The accuracy part of the diagnostics, from validation accuracies the caller measured."""
    return {"bn_eval_mode_val_accuracy": moving, "bn_precise_val_accuracy": precise,
            "bn_train_mode_val_accuracy": batch, "bn_mode_gap": batch - moving}


def bn_diagnostics(model, train_batches, val_ds) -> dict[str, float]:
    """Every diagnostic for a functional or Sequential ``model``; {} if it has no BN.

    ``train_batches`` (of the training batch size) and ``val_ds`` yield ``(x, y)`` batches with
    integer labels; the population statistics are recomputed over all of ``train_batches``.
    """
    passes = TrainModePass(model)
    if not passes.layers:
        return {}
    labels = np.concatenate([np.reshape(y, -1) for _, y in val_ds])

    def accuracy() -> float:  # in inference mode, with whatever the moving statistics hold now
        return float(np.mean(np.concatenate([np.argmax(model(x, training=False), -1) for x, _ in val_ds]) == labels))

    moving_accuracy = accuracy()
    batch_accuracy = float(np.mean(passes.predictions(val_ds) == labels))
    with precise_statistics(passes, train_batches) as (population, moving):
        precise_accuracy = accuracy()
    summary, _ = compare(passes.layers, moving, population)
    return {**summary, **accuracies(moving_accuracy, precise_accuracy, batch_accuracy)}

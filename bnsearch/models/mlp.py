"""A multilayer perceptron: Flatten → [Dense → BN/act]×len(hidden_sizes) → (BN) → Dense logits."""

from __future__ import annotations

from bnsearch.models.blocks import Norm, layer_norm_act
from bnsearch.models.registry import register_model


@register_model
def mlp(input_shape, num_classes: int, norm: Norm = Norm(), hidden_sizes=(32, 32), activation: str = "relu", output_bn: bool = False):
    """``output_bn`` adds a BN layer right before the output layer (named ``output_bn``),
    whatever the placement; with ``after`` the last hidden block already ends in one."""
    import keras

    inputs = keras.Input(shape=input_shape, name="input")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(hidden_sizes):
        x = layer_norm_act(
            x, lambda use_bias, name, u=units: keras.layers.Dense(u, use_bias=use_bias, name=name),
            activation, norm, name=f"dense{i}",
        )
    if output_bn:
        x = norm.layer("output_bn", x.shape[1:])(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mlp")

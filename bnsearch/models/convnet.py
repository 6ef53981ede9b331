"""A small conv net for 28×28 / 32×32 images (Conv2D) and 1-D sequences such as MNIST-1D (Conv1D).

[Conv → BN/act → MaxPool]×len(filters) → GlobalAveragePooling → Dense logits. The rank of
``input_shape`` picks the convolution: (length,) or (length, channels) is 1-D,
(height, width, channels) is 2-D.
"""

from __future__ import annotations

from bnsearch.models.blocks import Norm, layer_norm_act
from bnsearch.models.registry import register_model


@register_model
def convnet(input_shape, num_classes: int, norm: Norm = Norm(), filters=(32, 64), kernel_size: int = 3, activation: str = "relu"):
    import keras

    L = keras.layers
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    if len(input_shape) == 1:
        x = L.Reshape((input_shape[0], 1), name="to_channels")(x)
    two_d = len(input_shape) == 3
    Conv, Pool, GlobalPool = (L.Conv2D, L.MaxPooling2D, L.GlobalAveragePooling2D) if two_d else (L.Conv1D, L.MaxPooling1D, L.GlobalAveragePooling1D)
    for i, f in enumerate(filters):
        x = layer_norm_act(
            x, lambda use_bias, name, f=f: Conv(f, kernel_size, padding="same", use_bias=use_bias, name=name),
            activation, norm, name=f"conv{i}",
        )
        x = Pool(2, name=f"pool{i}")(x)
    x = GlobalPool(name="global_pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="convnet")

"""MobileNetV2 (Sandler et al. 2018) with the Keras Applications layout and layer names.

Stem conv (32×α, stride 2) → 17 inverted-residual blocks (block 0: depthwise + 1×1 to 16,
expansion 1; blocks 1–16: expansion 6, channels 24,24,32,32,32,64,64,64,64,96,96,96,160,160,160,320)
→ 1×1 conv to 1280 → global average pooling → dense logits. Stride-2 blocks pad with
ZeroPadding (((0,1),(0,1)) on even sizes) and use a 'valid' depthwise conv; blocks whose
input and output shapes match add a residual.

BN placement sites are the stem, the expansion 1×1 convs, the depthwise convs and the final
1×1 conv, each next to its ReLU6. The linear projection's BN (before the residual add) has no
activation next to it: it stays in ``before`` and ``after`` and goes in ``none``.

Small inputs: for images smaller than 64 px the stem conv uses stride 1 (as CIFAR variants
do), so a 32×32 input still ends in a 2×2 map (28×28 in 2×2) instead of collapsing to 1×1
before the last stages. With ``placement='before'``, ``width_multiplier=1`` and 1000 classes
the parameter count equals ``keras.applications.MobileNetV2`` (3,538,984).
"""

from __future__ import annotations

from bnsearch.models.blocks import Norm, layer_norm, layer_norm_act
from bnsearch.models.registry import register_model

# (expansion, output channels, stride) for blocks 0..16
BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)  # fmt: skip
SMALL_INPUT = 64


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never dropping more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def correct_pad(size: int | None) -> tuple[int, int]:
    """Padding so a 3×3 'valid' stride-2 conv matches 'same' output size: (0, 1) if even."""
    return (0, 1) if size is None or size % 2 == 0 else (1, 1)


@register_model
def mobilenet_v2(input_shape, num_classes: int, norm: Norm = Norm(), width_multiplier: float = 1.0, activation: str = "relu6"):
    import keras

    L = keras.layers
    alpha = width_multiplier
    inputs = keras.Input(shape=input_shape, name="input")
    stem_stride = 1 if min(input_shape[:2]) < SMALL_INPUT else 2
    x = layer_norm_act(
        inputs,
        lambda use_bias, name: L.Conv2D(make_divisible(32 * alpha), 3, strides=stem_stride, padding="same", use_bias=use_bias, name=name),
        activation, norm, name="Conv1",
    )
    for block_id, (expansion, channels, stride) in enumerate(BLOCKS):
        x = _inverted_residual(x, expansion, stride, alpha, channels, block_id, activation, norm)

    last_channels = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
    x = layer_norm_act(
        x, lambda use_bias, name: L.Conv2D(last_channels, 1, use_bias=use_bias, name=name),
        activation, norm, name="Conv_1",
    )
    x = L.GlobalAveragePooling2D(name="global_pool")(x)
    outputs = L.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def _inverted_residual(inputs, expansion, stride, alpha, channels, block_id, activation, norm):
    import keras

    L = keras.layers
    in_channels = inputs.shape[-1]
    out_channels = make_divisible(int(channels * alpha))
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    x = inputs
    if block_id:
        x = layer_norm_act(
            x, lambda use_bias, name: L.Conv2D(expansion * in_channels, 1, use_bias=use_bias, name=name),
            activation, norm, name=prefix + "expand",
        )
    if stride == 2:
        x = L.ZeroPadding2D((correct_pad(x.shape[1]), correct_pad(x.shape[2])), name=prefix + "pad")(x)
    x = layer_norm_act(
        x,
        lambda use_bias, name: L.DepthwiseConv2D(3, strides=stride, padding="same" if stride == 1 else "valid", use_bias=use_bias, name=name),
        activation, norm, name=prefix + "depthwise",
    )
    x = layer_norm(x, lambda use_bias, name: L.Conv2D(out_channels, 1, use_bias=use_bias, name=name), norm, name=prefix + "project")
    if in_channels == out_channels and stride == 1:
        x = L.Add(name=prefix + "add")([inputs, x])
    return x

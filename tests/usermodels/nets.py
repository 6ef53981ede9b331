"""A user's own Keras models, written the way people write them, each also buildable "by hand"
with any placement and norm layer, to check bnsearch's rewrite against.

``resnet``: a small ResNet (stem, two basic blocks with identity and projection shortcuts:
conv → BN → ReLU → conv → BN → add → ReLU). ``branches``: two conv branches joined by a
concatenation, with a fused activation and a softmax head. ``sequential``: a Sequential MLP.
``Subclassed``: a model with its own ``call``, which bnsearch must refuse.
"""

import keras

L = keras.layers


def batch_norm(name, shape):
    return L.BatchNormalization(name=name)


def site(x, layer, name, placement, norm, activation=None):
    """Layer → norm → act (before), Layer → act → norm (after), Layer → act (none), by hand."""
    x = layer(x)
    if placement == "before":
        x = norm(f"{name}_bn", x.shape[1:])(x)
    x = (activation or L.ReLU(name=f"{name}_relu"))(x)
    if placement == "after":
        x = norm(f"{name}_bn", x.shape[1:])(x)
    return x


def resnet(input_shape, num_classes, width=8, placement="before", norm=batch_norm):
    def conv(filters, kernel, name, strides=1, bias=None):
        return L.Conv2D(filters, kernel, strides=strides, padding="same", name=name,
                        use_bias=placement != "before" if bias is None else bias)

    def linear_bn(x, name):  # a BN with no activation next to it: gone in none
        return x if placement == "none" else norm(f"{name}_bn", x.shape[1:])(x)

    inputs = keras.Input(input_shape, name="image")
    x = site(inputs, conv(width, 3, "stem"), "stem", placement, norm)
    for i, (filters, strides) in enumerate(((width, 1), (2 * width, 2))):
        shortcut = x
        y = site(x, conv(filters, 3, f"block{i}_conv1", strides), f"block{i}_conv1", placement, norm)
        y = linear_bn(conv(filters, 3, f"block{i}_conv2", bias=placement == "none")(y), f"block{i}_conv2")
        if strides != 1 or filters != x.shape[-1]:
            shortcut = linear_bn(conv(filters, 1, f"block{i}_proj", strides, bias=placement == "none")(x), f"block{i}_proj")
        x = L.ReLU(name=f"block{i}_out")(L.Add(name=f"block{i}_add")([shortcut, y]))
    x = L.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, L.Dense(num_classes, name="logits")(x), name="resnet")


def branches(input_shape, num_classes, placement="after", norm=batch_norm, by_hand=False):
    """As a user writes it (``by_hand=False``): fused ReLUs, BN after them, a softmax head."""
    inputs = keras.Input(input_shape, name="image")

    def conv_site(x, filters, kernel, name):
        if not by_hand:
            x = L.Conv2D(filters, kernel, padding="same", activation="relu", name=name)(x)
            return L.BatchNormalization(name=f"{name}_bn")(x)
        return site(x, L.Conv2D(filters, kernel, padding="same", use_bias=placement != "before", name=name),
                    name, placement, norm, L.Activation("relu", name=f"{name}_act"))

    x = conv_site(inputs, 8, 3, "stem")
    left = conv_site(x, 8, 1, "left")
    right = conv_site(conv_site(x, 4, 1, "right_reduce"), 8, 3, "right")
    x = L.Concatenate(name="concat")([left, right])
    x = L.MaxPooling2D(name="pool")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dropout(0.1, name="dropout")(x)
    if by_hand:
        return keras.Model(inputs, L.Dense(num_classes, name="logits")(x), name="branches")
    return keras.Model(inputs, L.Dense(num_classes, activation="softmax", name="logits")(x), name="branches")


def sequential(input_shape, num_classes, units=32):
    return keras.Sequential([keras.Input(input_shape), L.Flatten(), L.Dense(units), L.BatchNormalization(), L.Activation("relu"),
                             L.Dense(num_classes)], name="sequential_mlp")


class Subclassed(keras.Model):
    def __init__(self, num_classes=10):
        super().__init__()
        self.flatten, self.bn, self.out = L.Flatten(), L.BatchNormalization(), L.Dense(num_classes)

    def call(self, x):
        return self.out(self.bn(self.flatten(x)))


def broken(input_shape, num_classes):
    return 1 / 0  # a builder with a bug of its own


def subclassed(num_classes):
    return Subclassed(num_classes)

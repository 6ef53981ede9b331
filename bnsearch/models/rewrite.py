"""Your own Keras model, rewritten to every placement and norm variant (README: "BN placement, exactly").

A **placement site** is a weighted layer (Dense, a convolution, a depthwise or separable
convolution) whose output goes, possibly through one norm layer, to an activation: the three
placements are Layer(no bias) → Norm → Act (``before``), Layer(bias) → Act → Norm (``after``) and
Layer(bias) → Act (``none``). An activation fused into the layer (``Conv2D(activation="relu")``)
is split out into its own ``Activation`` layer. A norm layer that is not at a site (a linear
projection's BN, as in MobileNetV2; a BN before a residual add; a BN before the output layer)
stays, as the chosen variant, in ``before`` and ``after``, and goes in ``none``, where the layer
before it gets its bias back. Every other layer (residual adds, concatenations, pooling,
dropout, the head) is cloned as it was, with fresh weights. A softmax on the output is dropped:
bnsearch trains on logits.

:func:`rewrite` refuses, with :class:`RewriteError` naming the layer or reason, what it cannot
rewrite faithfully: subclassed models (a custom ``call``), nested models, custom layers holding
norm layers, layers used more than once, activations written as ``keras.ops`` calls, channels-first
layers, a norm that follows a site's activation only through another layer (pooling) or beside
another consumer, and an output with an activation other than softmax. The graph is read through Keras' node records
(``_inbound_nodes``, ``_keras_history``), which have no public equivalent.
"""

from __future__ import annotations

import inspect as pyinspect
from collections import defaultdict
from dataclasses import dataclass

import keras
from keras.src.models.functional import Functional  # what keras.Model(inputs, outputs) builds; no public name

from bnsearch.models.blocks import Norm
from bnsearch.models.norms import NORM_LAYERS, describe as describe_norm

L = keras.layers
WEIGHTED = (L.Dense, L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose,
            L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D)
ACTIVATIONS = (L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU)


class RewriteError(ValueError):
    """The model cannot be rewritten; the message names the layer or the reason."""


@dataclass(frozen=True)
class Site:
    """A placement site of a model, by layer names: ``activation`` is None when it is fused into
    ``layer``; ``norm`` is the site's norm layer (None: none there); ``placement`` says where."""

    layer: str
    activation: str | None
    norm: str | None
    placement: str


@dataclass(frozen=True)
class Anatomy:
    """What :func:`anatomy` finds: the sites in layer order; every norm layer at no site, with
    the layer it follows; the weighted layers right before such a norm (its β is their offset);
    and the output softmax layer, if any."""

    sites: tuple[Site, ...]
    linear_norms: dict[str, str]
    debiased: frozenset[str]
    output_softmax: str | None


def _activation_of(operation) -> str:
    return getattr(getattr(operation, "activation", None), "__name__", "linear")


def _is_softmax(operation) -> bool:
    return isinstance(operation, L.Softmax) or _activation_of(operation) == "softmax"


def _fused(layer) -> bool:
    return isinstance(layer, WEIGHTED) and _activation_of(layer) != "linear"


def _is_activation(operation) -> bool:
    return isinstance(operation, ACTIVATIONS) and not _is_softmax(operation)


def check(model) -> None:
    """Raise :class:`RewriteError` if ``model`` is not a flat, channels-last functional model of
    plain layers with one input and one output."""
    if not isinstance(model, keras.Model):
        raise RewriteError(f"{model!r} is not a keras.Model")
    if not isinstance(model, Functional) or type(model).call is not Functional.call:
        raise RewriteError(f"model {model.name!r} is a subclassed keras.Model with its own call(): bnsearch can rewrite "
                           "only functional or Sequential models (build it with keras.Model(inputs, outputs))")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise RewriteError(f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs: "
                           "bnsearch trains models with one input and one output (the logits)")
    for operation in model.operations:
        name = f"{operation.name!r} ({type(operation).__name__})"
        if not isinstance(operation, keras.layers.Layer) and type(operation).__module__.endswith("ops.nn"):
            raise RewriteError(f"operation {name} is a keras.ops activation, not a layer: write it as a layer "
                               "(keras.layers.Activation, ReLU, ...) so that the placement sites can be found")
        if isinstance(operation, keras.Model):
            raise RewriteError(f"layer {name} is a nested model: flatten it into the outer model (call its layers "
                               "directly) so that its norm layers can be rewritten")
        if len(operation._inbound_nodes) > 1:
            raise RewriteError(f"layer {name} is used {len(operation._inbound_nodes)} times (shared weights): "
                               "each placement site needs a layer of its own")
        if getattr(operation, "data_format", None) == "channels_first" or (
                isinstance(operation, NORM_LAYERS) and operation.axis not in (-1, len(operation.input.shape) - 1, [-1])):
            raise RewriteError(f"layer {name} is channels-first: bnsearch's norm layers normalize the last axis")
        hidden = [sub.name for sub in getattr(operation, "_flatten_layers", lambda **_: [])(include_self=False)
                  if isinstance(sub, NORM_LAYERS)]
        if hidden:
            raise RewriteError(f"layer {name} holds norm layers inside its own call ({', '.join(hidden)}): "
                               "bnsearch cannot move them; write the block in the model's graph")


def anatomy(model) -> Anatomy:
    """The placement sites and other norm layers of a flat functional model (see module doc)."""
    check(model)
    consumers: dict[str, list] = defaultdict(list)
    producer = {}
    for operation in model.operations:  # layers and keras.ops calls (x + y) alike
        for node in operation._inbound_nodes:
            for tensor in node.input_tensors:
                consumers[tensor._keras_history.operation.name].append(operation)
            if node.input_tensors:
                producer[operation.name] = node.input_tensors[0]._keras_history.operation
    last = model.outputs[0]._keras_history.operation
    consumers[last.name].append(None)  # the model's output
    if not _is_softmax(last) and (_is_activation(last) or _fused(last)):
        raise RewriteError(f"the output layer {last.name!r} applies {_activation_of(last) if _fused(last) else type(last).__name__}: "
                           "bnsearch trains on logits; end the model with a linear layer (a softmax is dropped for you)")

    def sole(operation):
        following = consumers[operation.name]
        return following[0] if len(following) == 1 else None

    sites = []
    for layer in model.layers:
        if not isinstance(layer, WEIGHTED) or _is_softmax(layer):
            continue
        nxt = sole(layer)
        if _fused(layer):
            norm = nxt if isinstance(nxt, NORM_LAYERS) else None
            sites.append(Site(layer.name, None, norm and norm.name, "after" if norm else "none"))
        elif isinstance(nxt, NORM_LAYERS) and _is_activation(sole(nxt)):
            sites.append(Site(layer.name, sole(nxt).name, nxt.name, "before"))
        elif nxt is not None and _is_activation(nxt):
            norm = sole(nxt) if isinstance(sole(nxt), NORM_LAYERS) else None
            sites.append(Site(layer.name, nxt.name, norm and norm.name, "after" if norm else "none"))
    at_site = {site.norm for site in sites if site.norm}
    site_ends = {site.activation or site.layer: site.layer for site in sites}
    linear, debiased = {}, set()
    for layer in model.layers:
        if not isinstance(layer, NORM_LAYERS) or layer.name in at_site:
            continue
        before = producer[layer.name]
        linear[layer.name] = before.name
        if isinstance(before, WEIGHTED) and sole(before) is layer:
            debiased.add(before.name)
        # A norm that follows a site's activation, but not as its only next layer (through pooling, or beside
        # another consumer), belongs to no placement: moving the site's norm would leave it, or double it.
        # (Right after a site that has its norm before the activation, it is a second norm, e.g. before the output.)
        path = [before]
        while path[-1].name not in site_ends and isinstance(path[-1], keras.layers.Layer) and not path[-1].weights \
                and len(path[-1]._inbound_nodes[0].input_tensors) == 1 and path[-1].name in producer:
            path.append(producer[path[-1].name])
        if path[-1].name in site_ends and (len(path) > 1 or sole(before) is not layer):
            via = " through " + ", ".join(p.name for p in path[:-1]) if len(path) > 1 else " beside another layer using its output"
            raise RewriteError(f"norm layer {layer.name!r} follows the placement site {site_ends[path[-1].name]!r}{via}, not "
                               "right after its activation: bnsearch cannot place it faithfully; put it right after the "
                               "activation (after) or between the layer and its activation (before)")
    return Anatomy(tuple(sites), linear, frozenset(debiased), last.name if _is_softmax(last) else None)


def as_functional(model, input_shape) -> keras.Model:
    """A functional model of fresh copies of a Sequential model's layers, on ``input_shape``."""
    if not isinstance(model, keras.Sequential):
        return model
    x = inputs = keras.Input(shape=tuple(input_shape), name="input")
    for layer in model.layers:
        x = layer.__class__.from_config(layer.get_config())(x)
    return keras.Model(inputs, x, name=model.name)


def rewrite(model, norm: Norm, input_shape) -> keras.Model:
    """A new model (fresh weights) with ``norm``'s placement and variant at every site of
    ``model``, on inputs of ``input_shape``; ``model`` itself is not changed."""
    model = as_functional(model, input_shape)
    found = anatomy(model)
    sites = {site.layer: site for site in found.sites}
    activation_site = {site.activation: site for site in found.sites if site.activation}
    site_norms = {site.norm for site in found.sites if site.norm}
    fused_activation = {name: model.get_layer(name).activation for name in sites if _fused(model.get_layer(name))}
    taken = {operation.name for operation in model.operations}

    def unique(name: str) -> str:
        candidate, k = name, 1
        while candidate in taken:
            candidate, k = f"{name}{k}", k + 1
        taken.add(candidate)
        return candidate

    norm_names = {site.layer: site.norm or unique(f"{site.layer}_bn") for site in found.sites}
    act_names = {name: unique(f"{name}_act") for name in fused_activation}

    def clone(layer):
        config = layer.get_config()
        if "use_bias" in config and layer.name in sites:  # no bias right before a norm: its β is the offset
            config["use_bias"] = norm.placement != "before"
        elif "use_bias" in config and layer.name in found.debiased:
            config["use_bias"] = norm.placement == "none"
        if "activation" in config and (layer.name in sites or layer.name == found.output_softmax):
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    def call(layer, *args, **kwargs):
        name = layer.name
        if name in site_norms:  # re-placed at its site below
            return args[0]
        if name in found.linear_norms:
            return args[0] if norm.placement == "none" else norm.layer(name, args[0].shape[1:])(args[0])
        if name == found.output_softmax and not isinstance(layer, WEIGHTED):
            return args[0]
        x = layer(*args, **kwargs)
        site = sites.get(name) or activation_site.get(name)
        if site is None:
            return x
        if name == site.layer and norm.placement == "before":
            x = norm.layer(norm_names[site.layer], x.shape[1:])(x)
        if name in fused_activation:  # split out into a layer of its own
            x = L.Activation(fused_activation[name], name=act_names[name])(x)
        if name == (site.activation or site.layer) and norm.placement == "after":
            x = norm.layer(norm_names[site.layer], x.shape[1:])(x)
        return x

    inputs = keras.Input(shape=tuple(input_shape), name=model.inputs[0]._keras_history.operation.name)
    try:
        return keras.models.clone_model(model, input_tensors=[inputs] if isinstance(model.input, list) else inputs,
                                        clone_function=clone, call_function=call)
    except (ValueError, TypeError) as error:  # e.g. a Dense after Flatten that fixed another input size
        raise RewriteError(f"model {model.name!r} could not be rebuilt on inputs of shape {tuple(input_shape)}: "
                           f"{str(error).splitlines()[0]}") from None


def describe(model) -> list[str]:
    """One line per placement site (layer order, bias, norm settings) and per other norm layer."""
    found = anatomy(model)
    by_name = {layer.name: layer for layer in model.layers}
    lines = []
    for site in found.sites:
        weighted = by_name[site.layer]
        parts = [f"{type(weighted).__name__}({'bias' if getattr(weighted, 'use_bias', False) else 'no bias'})"]
        act = _activation_name(by_name[site.activation] if site.activation else weighted)
        if site.norm:
            norm = describe_norm(by_name[site.norm])
            parts += [norm, act] if site.placement == "before" else [act, norm]
        else:
            parts.append(act)
        lines.append(f"{site.layer}: " + " → ".join(parts))
    for name, before in found.linear_norms.items():
        lines.append(f"{name}: {describe_norm(by_name[name])} after {before} (at no placement site: no activation next to it)")
    return lines


def _activation_name(layer) -> str:
    if isinstance(layer, L.Activation) or _fused(layer):
        return getattr(layer.activation, "__name__", type(layer).__name__)
    if isinstance(layer, L.ReLU) and layer.max_value is not None:
        return f"ReLU(max {layer.max_value:g})"
    return type(layer).__name__


def build_user_model(target, input_shape, num_classes: int, **options):
    """The user's model: ``target`` itself (a model), or what ``target(**arguments)`` builds,
    given ``input_shape`` and ``num_classes`` where its signature takes them."""
    if isinstance(target, keras.Model):
        return target
    if isinstance(target, type):
        raise RewriteError(f"{target.__name__} is a class: give a function that builds a functional model, or a model")
    accepted = pyinspect.signature(target).parameters
    given = {k: v for k, v in (("input_shape", tuple(input_shape)), ("num_classes", num_classes)) if k in accepted}
    built = target(**given, **options)
    if not isinstance(built, keras.Model):
        raise RewriteError(f"{getattr(target, '__name__', target)}() returned {type(built).__name__}, not a keras.Model")
    return built


def check_classes(model, num_classes: int) -> None:
    if model.output_shape[-1] != num_classes:
        raise RewriteError(f"model {model.name!r} outputs {model.output_shape[-1]} values per example; the dataset has "
                           f"{num_classes} classes (bnsearch trains on one logit per class)")

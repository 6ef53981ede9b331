"""Your own Keras model, rewritten to every placement and norm variant (GUIDE §4).

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
norm layers, and layers used more than once. The graph is read through Keras' node records
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
    """What :func:`anatomy` finds: the sites in layer order, the norm layers at no site (each
    with the weighted layer right before it, if any) and the output softmax layer, if any."""

    sites: tuple[Site, ...]
    linear_norms: dict[str, str | None]
    output_softmax: str | None


def _is_softmax(layer) -> bool:
    return isinstance(layer, L.Softmax) or getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def _fused(layer) -> bool:
    return getattr(getattr(layer, "activation", None), "__name__", "linear") != "linear"


def check(model) -> None:
    """Raise :class:`RewriteError` if ``model`` is not a flat functional model of plain layers."""
    if isinstance(model, keras.Sequential):
        return
    if not isinstance(model, keras.Model):
        raise RewriteError(f"{model!r} is not a keras.Model")
    if not isinstance(model, Functional) or type(model).call is not Functional.call:
        raise RewriteError(f"model {model.name!r} is a subclassed keras.Model with its own call(): bnsearch can rewrite "
                           "only functional or Sequential models (build it with keras.Model(inputs, outputs))")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise RewriteError(f"model {model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs: "
                           "bnsearch trains models with one input and one output (the logits)")
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise RewriteError(f"layer {layer.name!r} is a nested model: flatten it into the outer model (call its "
                               "layers directly) so that its norm layers can be rewritten")
        if len(layer._inbound_nodes) > 1:
            raise RewriteError(f"layer {layer.name!r} is used {len(layer._inbound_nodes)} times (shared weights): "
                               "each placement site needs a layer of its own")
        hidden = [sub.name for sub in layer._flatten_layers(include_self=False) if isinstance(sub, NORM_LAYERS)]
        if hidden:
            raise RewriteError(f"layer {layer.name!r} ({type(layer).__name__}) holds norm layers inside its own "
                               f"call ({', '.join(hidden)}): bnsearch cannot move them; write the block in the model's graph")


def anatomy(model) -> Anatomy:
    """The placement sites and other norm layers of a flat functional model (see module doc)."""
    check(model)
    consumers: dict[str, list] = defaultdict(list)
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers[tensor._keras_history.operation.name].append(layer)
    for tensor in model.outputs:
        consumers[tensor._keras_history.operation.name].append(None)  # the model's output

    def sole(layer):
        following = consumers[layer.name]
        return following[0] if len(following) == 1 else None

    def is_activation(layer) -> bool:
        return isinstance(layer, ACTIVATIONS) and not _is_softmax(layer)

    sites = []
    for layer in model.layers:
        if not isinstance(layer, WEIGHTED):
            continue
        nxt = sole(layer)
        if _fused(layer):
            if _is_softmax(layer):
                continue
            norm = nxt if isinstance(nxt, NORM_LAYERS) else None
            sites.append(Site(layer.name, None, norm and norm.name, "after" if norm else "none"))
        elif isinstance(nxt, NORM_LAYERS) and is_activation(sole(nxt)):
            sites.append(Site(layer.name, sole(nxt).name, nxt.name, "before"))
        elif nxt is not None and is_activation(nxt):
            norm = sole(nxt) if isinstance(sole(nxt), NORM_LAYERS) else None
            sites.append(Site(layer.name, nxt.name, norm and norm.name, "after" if norm else "none"))
    at_site = {site.norm for site in sites if site.norm}
    producers = {layer.name: node.input_tensors[0]._keras_history.operation
                 for layer in model.layers for node in layer._inbound_nodes if node.input_tensors}
    linear = {}
    for layer in model.layers:
        if isinstance(layer, NORM_LAYERS) and layer.name not in at_site:
            before = producers.get(layer.name)
            linear[layer.name] = before.name if isinstance(before, WEIGHTED) and sole(before) is layer else None
    last = model.outputs[0]._keras_history.operation
    return Anatomy(tuple(sites), linear, last.name if _is_softmax(last) else None)


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
    debiased = {layer for layer in found.linear_norms.values() if layer}  # their norm supplies the offset
    taken = {layer.name for layer in model.layers}

    def norm_name(site: Site) -> str:
        if site.norm:
            return site.norm
        name, k = f"{site.layer}_bn", 1
        while name in taken:
            name, k = f"{site.layer}_bn{k}", k + 1
        taken.add(name)
        return name

    names = {site.layer: norm_name(site) for site in found.sites}

    def clone(layer):
        config = layer.get_config()
        if "use_bias" in config and layer.name in sites:  # no bias right before a norm: its β is the offset
            config["use_bias"] = norm.placement != "before"
        elif "use_bias" in config and layer.name in debiased:
            config["use_bias"] = norm.placement == "none"
        if "activation" in config and (layer.name in sites or layer.name == found.output_softmax):
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    def new_norm(site: Site, x):
        return norm.layer(names[site.layer], x.shape[1:])(x)

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
            x = new_norm(site, x)
        if name == site.layer and site.activation is None:  # split out the fused activation
            x = L.Activation(fused_activation[name], name=f"{name}_act")(x)
        if (name == site.activation or (name == site.layer and site.activation is None)) and norm.placement == "after":
            x = new_norm(site, x)
        return x

    fused_activation = {layer.name: layer.activation for layer in model.layers if layer.name in sites and _fused(layer)}
    inputs = keras.Input(shape=tuple(input_shape), name=model.inputs[0]._keras_history.operation.name)
    inputs = [inputs] if isinstance(model.input, list) else inputs
    try:
        return keras.models.clone_model(model, input_tensors=inputs, clone_function=clone, call_function=call)
    except (ValueError, TypeError) as error:
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
    for name, layer in found.linear_norms.items():
        lines.append(f"{name}: {describe_norm(by_name[name])} after {layer or 'a layer without weights'} (no activation next to it)")
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

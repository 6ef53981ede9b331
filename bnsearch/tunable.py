"""Float hyperparameters that a traced graph reads from variables, so that changing one is an
assignment, not a retrace.

Keras puts a layer's or an optimizer's float hyperparameters (BN momentum and epsilon, weight
decay, a schedule's learning rate) into the graph it traces as constants: a trial that differs
from the last one only in those would trace its training step again (about 20 s for
MobileNetV2 on a CPU, against a 3 s epoch). A class that lists names in ``TUNABLE`` (with
:class:`Tunable` first among its bases) reads each of them from a variable of its own inside a
traced function, and as the plain value it was given everywhere else (``get_config``, a
summary, a Python ``if``). The variables belong to no layer: weights and checkpoints are as before.
"""

from __future__ import annotations

import tensorflow as tf


class Tunable:
    TUNABLE: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in cls.__dict__.get("TUNABLE", ()):
            setattr(cls, name, property(_getter(name), _setter(name)))


def _getter(name: str):
    def get(self):
        try:
            value, variable = self.__dict__["_tunable"][name]
        except KeyError:
            raise AttributeError(name) from None
        return variable if variable is not None and tf.inside_function() else value
    return get


def _setter(name: str):
    def set_(self, value):
        values = self.__dict__.setdefault("_tunable", {})  # not an attribute Keras would track
        _, variable = values.get(name, (None, None))
        if value is not None and variable is None:
            with tf.init_scope():  # a variable of the program, even if first set while tracing
                variable = tf.Variable(float(value), trainable=False, dtype=tf.float32, name=name)
        elif value is not None:
            variable.assign(float(value))
        values[name] = (value, None if value is None else variable)  # None: nothing for a graph to read
    return set_


def copy_values(target: Tunable, source: Tunable) -> None:
    """Give ``target`` every tunable value of ``source`` (an object of the same class)."""
    for name, (value, _) in source.__dict__.get("_tunable", {}).items():
        setattr(target, name, value)

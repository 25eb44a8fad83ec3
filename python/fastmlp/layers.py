"""Layers of a Sequential model (Keras names, arguments and semantics); docs/formulas.md has
their formulas.

Dense                y = activation(x @ W + b), W of shape (input_dim, units)
Dropout              training: y = x * keep / (1 - rate), keep ~ Bernoulli(1 - rate); else y = x
BatchNormalization   y = gamma * (x - mean) / sqrt(var + epsilon) + beta, over the batch in
                     training (biased variance), with the moving statistics otherwise
LayerNormalization   the same over the features of each row, in training and inference alike
Activation           y = activation(x)

A layer describes itself to the engine (`native`), says the shapes of its weights in
get_weights() order (`weight_shapes`) and round-trips through get_config/from_config. Adding a
layer kind: its formulas in csrc/fastmlp/math.h, one op per backend, a class here, its tests
(docs/formulas.md, "How to add a layer").
"""
from __future__ import annotations

import math
import numbers

from . import _core
from . import activations as _activations
from . import initializers as _initializers
from . import regularizers as _regularizers
from ._enums import ACTIVATION_IDS, LAYER_IDS
from ._validation import INT32_MAX, boolean, real_number


def _width(value, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 < value <= INT32_MAX:
        raise ValueError(f"{what} must be a positive integer <= {INT32_MAX}, got {value!r}")
    return int(value)


def _input_dim(input_dim, input_shape, layer: str):
    if input_shape is not None:
        if input_dim is not None:
            raise ValueError("give input_dim or input_shape, not both")
        if len(tuple(input_shape)) != 1:
            raise ValueError(f"{layer} takes 1-D inputs: input_shape must be (features,), got {input_shape!r}")
        input_dim = tuple(input_shape)[0]
    return _width(input_dim, "input_dim")


class Layer:
    """Base of every layer: a name, an optional input width (required on a model's first layer
    when it is not a Dense), and the description the engine builds its op from."""

    kind = "layer"

    def __init__(self, input_dim=None, input_shape=None, name=None):
        self.input_dim = _input_dim(input_dim, input_shape, type(self).__name__)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"a layer name must be a string, got {name!r}")
        self.name = name

    # ---- what the model asks of a layer
    def output_dim(self, fan_in: int) -> int:
        return fan_in

    def weight_shapes(self, fan_in: int) -> list:
        """Shapes of the layer's weights, in get_weights() order."""
        return []

    def weight_names(self) -> list:
        return []

    @property
    def final_activation(self):
        """The activation the loss sees when this layer is last (None: linear)."""
        return None

    def native(self, seed: int, index: int) -> dict:
        """The engine's description of this layer (csrc/bindings.cpp, make_layer)."""
        return {"kind": LAYER_IDS[self.kind]}

    def init_spec(self) -> tuple:
        """The initializer the engine draws the layer's kernel from (only Dense has one)."""
        return ("zeros", 0.0, 0.0)

    def trainable_count(self, fan_in: int) -> int:
        return sum(math.prod(s) for s in self.weight_shapes(fan_in))

    # ---- Keras's per-layer weights (the model it was last added to holds them)
    def get_weights(self) -> list:
        """This layer's arrays, in the order and layout of the model's get_weights()."""
        from .model_structure import layer_get_weights

        return layer_get_weights(self)

    def set_weights(self, weights) -> None:
        """Replaces this layer's arrays only; the model is left as it was if any is wrong."""
        from .model_structure import layer_set_weights

        layer_set_weights(self, weights)

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_model", None)  # a weak reference to the model: not part of the layer
        return state

    # ---- config
    def _base_config(self) -> dict:
        return {"class": type(self).__name__, "input_dim": self.input_dim, "name": self.name}

    def get_config(self) -> dict:
        return self._base_config()

    def __repr__(self):
        return f"{type(self).__name__}()"


class Dense(Layer):
    kind = "dense"

    def __init__(self, units, activation=None, *, input_dim=None, input_shape=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, name=None):
        # widths are C ints natively: 2**31 would surface as a pybind11 TypeError at compile
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or not 0 < units <= INT32_MAX:
            raise ValueError(f"Dense units must be a positive integer <= {INT32_MAX}, got {units!r}")
        super().__init__(input_dim, input_shape, name)
        self.units = int(units)
        self.activation = _activations.get(activation)
        self.kernel_initializer = _initializers.get(kernel_initializer)
        self.kernel_regularizer = _regularizers.get(kernel_regularizer)

    def output_dim(self, fan_in):
        return self.units

    def weight_shapes(self, fan_in):
        return [(fan_in, self.units), (self.units,)]

    def weight_names(self):
        return ["kernel", "bias"]

    @property
    def final_activation(self):
        return self.activation

    def native(self, seed, index):
        reg = self.kernel_regularizer
        return {"kind": LAYER_IDS["dense"], "units": self.units, "activation": ACTIVATION_IDS[self.activation.name],
                "param": float(self.activation.param), "l1": 0.0 if reg is None else reg.l1,
                "l2": 0.0 if reg is None else reg.l2}

    def init_spec(self):
        return self.kernel_initializer.spec()

    def trainable_count(self, fan_in):
        return fan_in * self.units + self.units

    def get_config(self) -> dict:
        reg = self.kernel_regularizer
        return {"class": "Dense", "units": self.units, "input_dim": self.input_dim,
                "activation": self.activation.get_config(),
                "kernel_initializer": self.kernel_initializer.get_config(),
                "kernel_regularizer": None if reg is None else reg.get_config(), "name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> "Dense":
        reg = config.get("kernel_regularizer")
        return cls(config["units"], _activations.from_config(config["activation"]), input_dim=config["input_dim"],
                   kernel_initializer=_initializers.from_config(config["kernel_initializer"]),
                   kernel_regularizer=None if reg is None else _regularizers.L1L2(reg["l1"], reg["l2"]),
                   name=config.get("name"))

    def __repr__(self):
        return f"Dense({self.units}, activation={self.activation.name!r})"


class Dropout(Layer):
    """Inverted dropout: in training (fit, train_on_batch, compute_gradients) each value is kept
    with probability 1 - rate and scaled by 1 / (1 - rate); evaluate and predict pass values on.
    Masks are drawn natively from (seed, optimizer step, element), the same on CPU and GPU; seed
    None derives one from the model's seed and the layer's position."""

    kind = "dropout"

    def __init__(self, rate, seed=None, *, input_dim=None, input_shape=None, name=None):
        super().__init__(input_dim, input_shape, name)
        self.rate = real_number(rate, "Dropout rate", low=0.0, high=1.0)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2 ** 64):
            raise ValueError(f"Dropout seed must be an integer in [0, 2**64), got {seed!r}")
        self.seed = None if seed is None else int(seed)

    def native(self, seed, index):
        own = self.seed if self.seed is not None else _core.derive_seed(seed, 1_000_000 + index)
        return {"kind": LAYER_IDS["dropout"], "rate": self.rate, "seed": own}

    def get_config(self):
        return {**self._base_config(), "rate": self.rate, "seed": self.seed}

    @classmethod
    def from_config(cls, config: dict) -> "Dropout":
        return cls(config["rate"], config.get("seed"), input_dim=config.get("input_dim"), name=config.get("name"))

    def __repr__(self):
        return f"Dropout({self.rate})"


class _Normalization(Layer):
    def __init__(self, epsilon, center, scale, input_dim, input_shape, name):
        super().__init__(input_dim, input_shape, name)
        self.epsilon = real_number(epsilon, "epsilon", low=0.0, low_inclusive=False)
        self.center = boolean(center, "center")
        self.scale = boolean(scale, "scale")

    def weight_shapes(self, fan_in):
        return [(fan_in,)] * len(self.weight_names())

    def weight_names(self):
        return (["gamma"] if self.scale else []) + (["beta"] if self.center else [])

    def native(self, seed, index):
        return {"kind": LAYER_IDS[self.kind], "epsilon": self.epsilon, "center": self.center, "scale": self.scale}

    def get_config(self):
        return {**self._base_config(), "epsilon": self.epsilon, "center": self.center, "scale": self.scale}


class BatchNormalization(_Normalization):
    """Keras's BatchNormalization over the features of a batch. Training normalizes by the batch
    mean and biased variance and updates moving = momentum * moving + (1 - momentum) * batch value
    after each step; evaluate and predict use the moving statistics. gamma and beta are trained
    (never regularized); the moving statistics are weights that are not trained. A batch of one
    row has variance 0 and outputs beta."""

    kind = "batch_normalization"

    def __init__(self, momentum=0.99, epsilon=1e-3, center=True, scale=True, *, input_dim=None, input_shape=None,
                 name=None):
        super().__init__(epsilon, center, scale, input_dim, input_shape, name)
        self.momentum = real_number(momentum, "momentum", low=0.0, high=1.0, high_inclusive=True)

    def weight_names(self):
        return super().weight_names() + ["moving_mean", "moving_variance"]

    def trainable_count(self, fan_in):
        return fan_in * (len(self.weight_names()) - 2)

    def native(self, seed, index):
        return {**super().native(seed, index), "momentum": self.momentum}

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}

    @classmethod
    def from_config(cls, config: dict) -> "BatchNormalization":
        return cls(config["momentum"], config["epsilon"], config["center"], config["scale"],
                   input_dim=config.get("input_dim"), name=config.get("name"))

    def __repr__(self):
        return f"BatchNormalization(momentum={self.momentum}, epsilon={self.epsilon})"


class LayerNormalization(_Normalization):
    """Keras's LayerNormalization over the features of each row (the same in training and
    inference); gamma and beta are trained."""

    kind = "layer_normalization"

    def __init__(self, epsilon=1e-3, center=True, scale=True, *, input_dim=None, input_shape=None, name=None):
        super().__init__(epsilon, center, scale, input_dim, input_shape, name)

    @classmethod
    def from_config(cls, config: dict) -> "LayerNormalization":
        return cls(config["epsilon"], config["center"], config["scale"], input_dim=config.get("input_dim"),
                   name=config.get("name"))

    def __repr__(self):
        return f"LayerNormalization(epsilon={self.epsilon})"


class Activation(Layer):
    """An activation as a layer of its own, e.g. Dense(256) -> BatchNormalization() ->
    Activation("relu"). Right after a Dense without activation it fuses into that Dense."""

    kind = "activation"

    def __init__(self, activation, *, input_dim=None, input_shape=None, name=None):
        super().__init__(input_dim, input_shape, name)
        if activation is None:
            raise ValueError("Activation needs an activation, e.g. Activation('relu')")
        self.activation = _activations.get(activation)

    @property
    def final_activation(self):
        return self.activation

    def native(self, seed, index):
        return {"kind": LAYER_IDS["activation"], "activation": ACTIVATION_IDS[self.activation.name],
                "param": float(self.activation.param)}

    def get_config(self):
        return {**self._base_config(), "activation": self.activation.get_config()}

    @classmethod
    def from_config(cls, config: dict) -> "Activation":
        return cls(_activations.from_config(config["activation"]), input_dim=config.get("input_dim"),
                   name=config.get("name"))

    def __repr__(self):
        return f"Activation({self.activation.name!r})"


def mlp_stack(input_dim, hidden, n_outputs, *, activation, output_activation, kernel_regularizer=None,
              dropout=0.0, batch_norm=False) -> list:
    """The layers of a plain MLP, as the scikit-learn estimators, model_selection.build_mlp and the
    command line build it: per width in `hidden` a Dense with `activation` (with batch_norm, Keras's
    order: a linear Dense, BatchNormalization, then Activation), followed by Dropout(dropout) when
    dropout > 0; then a Dense of n_outputs with output_activation. kernel_regularizer goes on every
    Dense kernel."""
    rate = Dropout(dropout).rate if dropout else 0.0  # checked even without hidden layers
    stack = []

    def dense(units, act):  # the first layer names the input width, as in Keras
        return Dense(units, act, input_dim=None if stack else input_dim, kernel_regularizer=kernel_regularizer)

    for units in hidden:
        if batch_norm:
            stack.append(dense(units, None))
            stack += [BatchNormalization(), Activation(activation)]
        else:
            stack.append(dense(units, activation))
        if rate:
            stack.append(Dropout(rate))
    stack.append(dense(n_outputs, output_activation))
    return stack


LAYER_CLASSES = {c.__name__: c for c in (Dense, Dropout, BatchNormalization, LayerNormalization, Activation)}


def from_config(config: dict) -> Layer:
    """A layer from its get_config(); a config without "class" is a Dense (files before layers)."""
    if not isinstance(config, dict):
        raise ValueError(f"a layer config must be an object, got {type(config).__name__}")
    name = config.get("class", "Dense")
    if name not in LAYER_CLASSES:
        raise ValueError(f"unknown layer class {name!r}; known: {', '.join(LAYER_CLASSES)}")
    return LAYER_CLASSES[name].from_config(config)


__all__ = ["Layer", "Dense", "Dropout", "BatchNormalization", "LayerNormalization", "Activation", "from_config",
           "mlp_stack"]

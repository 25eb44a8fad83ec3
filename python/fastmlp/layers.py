"""Dense: the one layer type. y = activation(x @ W + b), W of shape (input_dim, units)."""
from __future__ import annotations

import numbers

from . import activations as _activations
from . import initializers as _initializers
from . import regularizers as _regularizers
from ._validation import INT32_MAX


class Dense:
    def __init__(self, units, activation=None, *, input_dim=None, input_shape=None,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None, name=None):
        # widths are C ints natively: 2**31 would surface as a pybind11 TypeError at compile
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or not 0 < units <= INT32_MAX:
            raise ValueError(f"Dense units must be a positive integer <= {INT32_MAX}, got {units!r}")
        if input_shape is not None:
            if input_dim is not None:
                raise ValueError("give input_dim or input_shape, not both")
            if len(tuple(input_shape)) != 1:
                raise ValueError(f"Dense takes 1-D inputs: input_shape must be (features,), got {input_shape!r}")
            input_dim = tuple(input_shape)[0]
        if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral)
                                      or not 0 < input_dim <= INT32_MAX):
            raise ValueError(f"input_dim must be a positive integer <= {INT32_MAX}, got {input_dim!r}")
        self.units = int(units)
        self.input_dim = None if input_dim is None else int(input_dim)
        self.activation = _activations.get(activation)
        self.kernel_initializer = _initializers.get(kernel_initializer)
        self.kernel_regularizer = _regularizers.get(kernel_regularizer)
        self.name = name

    def get_config(self) -> dict:
        reg = self.kernel_regularizer
        return {"units": self.units, "input_dim": self.input_dim, "activation": self.activation.get_config(),
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


__all__ = ["Dense"]

"""Activation functions. Strings ("relu") or objects (LeakyReLU(0.2)) are accepted anywhere.

The math itself lives in the native core (csrc/fastmlp/math.h); these objects only name it.
"""
from __future__ import annotations

import math

from ._enums import ACTIVATION_IDS


class Activation:
    """An activation with its parameter; `name` is one of ACTIVATION_IDS."""

    name = "linear"
    param = 0.0
    takes_param = False  # LeakyReLU and ELU: their param is meaningful even when it is 0

    def get_config(self) -> dict:
        return {"name": self.name, "param": self.param}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.param})" if self.takes_param else f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        return isinstance(other, Activation) and (self.name, self.param) == (other.name, other.param)

    def __hash__(self):
        return hash((self.name, self.param))


class Linear(Activation):
    name = "linear"


class Sigmoid(Activation):
    name = "sigmoid"


class Tanh(Activation):
    name = "tanh"


class ReLU(Activation):
    name = "relu"


class LeakyReLU(Activation):
    """max(z, slope*z); slope must be >= 0 (default 0.01)."""

    name = "leaky_relu"
    takes_param = True

    def __init__(self, negative_slope: float = 0.01):
        negative_slope = float(negative_slope)
        if not 0.0 <= negative_slope < math.inf:
            raise ValueError(f"LeakyReLU negative_slope must be a finite number >= 0, got {negative_slope}")
        self.param = negative_slope


class ELU(Activation):
    """z for z > 0, alpha*(exp(z)-1) otherwise; alpha must be > 0 (default 1.0)."""

    name = "elu"
    takes_param = True

    def __init__(self, alpha: float = 1.0):
        alpha = float(alpha)
        if not 0.0 < alpha < math.inf:
            raise ValueError(f"ELU alpha must be a finite number > 0, got {alpha}")
        self.param = alpha


class Exponential(Activation):
    """exp(z): Keras's 'exponential', the log link of a Poisson regression's output."""

    name = "exponential"


class Softplus(Activation):
    """log(1 + e^z), computed stably."""

    name = "softplus"


class SELU(Activation):
    """scale * (z if z > 0 else alpha * (e^z - 1)) with Klambauer et al.'s fixed alpha = 1.6733 and
    scale = 1.0507 (Keras's and PyTorch's selu)."""

    name = "selu"


class GELU(Activation):
    """z * Phi(z), Phi the standard normal CDF: the exact form (Keras's default, PyTorch's
    approximate='none'), not the tanh approximation."""

    name = "gelu"


class SiLU(Activation):
    """z * sigmoid(z), also called swish."""

    name = "silu"


class Softmax(Activation):
    """Row-wise softmax; output layer only."""

    name = "softmax"


_BY_NAME = {
    "linear": Linear, None: Linear, "sigmoid": Sigmoid, "tanh": Tanh, "relu": ReLU,
    "leaky_relu": LeakyReLU, "elu": ELU, "softmax": Softmax, "exponential": Exponential,
    "softplus": Softplus, "selu": SELU, "gelu": GELU, "silu": SiLU, "swish": SiLU,
}


def get(identifier) -> Activation:
    """Resolves a string, None or Activation object; raises ValueError for unknown names."""
    if isinstance(identifier, Activation):
        return identifier
    if identifier is None or isinstance(identifier, str):
        key = identifier.lower() if isinstance(identifier, str) else None
        if key not in _BY_NAME:
            names = ", ".join(sorted(k for k in _BY_NAME if k))
            raise ValueError(f"unknown activation {identifier!r}; choose one of: {names}")
        return _BY_NAME[key]()
    raise TypeError(f"activation must be a string or an fm.activations.Activation, got {type(identifier).__name__}")


def from_config(config: dict) -> Activation:
    act = get(config["name"])
    param = config.get("param")
    if act.takes_param:
        if param is not None:  # 0 is a real value: LeakyReLU(0.0) must not come back as LeakyReLU(0.01)
            if isinstance(param, bool) or not isinstance(param, (int, float)):
                raise ValueError(f"{act.name} param must be a number, got {param!r}")
            act = type(act)(param)
    elif param not in (None, 0, 0.0) or isinstance(param, bool):
        raise ValueError(f"activation {act.name!r} takes no parameter, got param={param!r}")
    return act


__all__ = ["Activation", "Linear", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "Softmax", "get", "ACTIVATION_IDS"]

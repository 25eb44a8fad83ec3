"""Kernel initializers (Keras names and formulas, drawn natively from the model seed).

glorot_uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out))     (default)
glorot_normal:  truncated N(0, 2 / (fan_in + fan_out))
he_uniform:     U(-l, l), l = sqrt(6 / fan_in);  he_normal: truncated N(0, 2 / fan_in)
lecun_uniform:  U(-l, l), l = sqrt(3 / fan_in);  lecun_normal: truncated N(0, 1 / fan_in)
random_uniform: U(minval, maxval);  random_normal: N(mean, stddev);  zeros
Truncated normals are cut at two standard deviations and rescaled as Keras does. Biases are zero.
"""
from __future__ import annotations

_VARIANCE_SCALING = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal")


class Initializer:
    kind = "glorot_uniform"
    a = 0.0
    b = 0.0

    def spec(self) -> tuple:
        return (self.kind, float(self.a), float(self.b))

    def get_config(self) -> dict:
        return {"kind": self.kind, "a": self.a, "b": self.b}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _named(kind):
    cls = type(kind.title().replace("_", ""), (Initializer,), {"kind": kind})
    return cls


GlorotUniform = _named("glorot_uniform")
GlorotNormal = _named("glorot_normal")
HeUniform = _named("he_uniform")
HeNormal = _named("he_normal")
LecunUniform = _named("lecun_uniform")
LecunNormal = _named("lecun_normal")
Zeros = _named("zeros")


class RandomUniform(Initializer):
    kind = "random_uniform"

    def __init__(self, minval: float = -0.05, maxval: float = 0.05):
        if not float(maxval) > float(minval):
            raise ValueError(f"RandomUniform needs maxval > minval, got [{minval}, {maxval})")
        self.a, self.b = float(minval), float(maxval)


class RandomNormal(Initializer):
    kind = "random_normal"

    def __init__(self, mean: float = 0.0, stddev: float = 0.05):
        if not float(stddev) > 0:
            raise ValueError(f"RandomNormal needs stddev > 0, got {stddev}")
        self.a, self.b = float(mean), float(stddev)


_BY_NAME = {c.kind: c for c in (GlorotUniform, GlorotNormal, HeUniform, HeNormal, LecunUniform, LecunNormal, Zeros,
                                RandomUniform, RandomNormal)}


def get(identifier) -> Initializer:
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown initializer {identifier!r}; choose one of: {', '.join(sorted(_BY_NAME))}")
        return _BY_NAME[key]()
    raise TypeError(f"kernel_initializer must be a string or an fm.initializers object, got {identifier!r}")


def from_config(config: dict) -> Initializer:
    init = get(config["kind"])
    init.a, init.b = config.get("a", 0.0), config.get("b", 0.0)
    return init


__all__ = ["Initializer", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal",
           "RandomUniform", "RandomNormal", "Zeros", "get"]

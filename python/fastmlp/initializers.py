"""Kernel initializers (Keras names and formulas, drawn natively from the model seed).

glorot_uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out))     (default)
glorot_normal:  truncated N(0, 2 / (fan_in + fan_out))
he_uniform:     U(-l, l), l = sqrt(6 / fan_in);  he_normal: truncated N(0, 2 / fan_in)
lecun_uniform:  U(-l, l), l = sqrt(3 / fan_in);  lecun_normal: truncated N(0, 1 / fan_in)
random_uniform: U(minval, maxval);  random_normal: N(mean, stddev);  zeros
Truncated normals are cut at two standard deviations and rescaled as Keras does. Biases are zero.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._validation import config_class, real_number

# The native normal sampler (Box-Muller on 53-bit uniforms u > 0) never returns |z| above
# sqrt(-2 ln 2**-53) = 8.57; values are computed in float64 and then rounded to the model's dtype.
_MAX_ABS_NORMAL = 8.6
_VARIANCE_SCALING = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform", "lecun_normal")


class Initializer:
    kind = "glorot_uniform"
    a = 0.0
    b = 0.0

    def spec(self) -> tuple:
        return (self.kind, float(self.a), float(self.b))

    def max_abs(self) -> float:
        """A bound on |w| for every weight this initializer can draw (in float64)."""
        # variance scaling: |w| <= sqrt(6 / fan) <= 2.45 (uniform) or 2 * sqrt(2) / 0.8796 = 3.22
        # (normal truncated at 2 stddev), whatever the fan
        return 0.0 if self.kind == "zeros" else 3.5

    def check_dtype(self, dtype) -> None:
        """Raises ValueError if this initializer could draw a weight that is not finite in dtype
        (np.float32 or np.float64), e.g. RandomNormal(mean=1e39) for a float32 model."""
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        bound = self.max_abs()
        if not bound <= float(np.finfo(dt).max):
            raise ValueError(f"{self!r} can draw weights up to {bound:.3g} in magnitude, which overflow "
                             f"{dt.name} (largest finite value {float(np.finfo(dt).max):.3g})")

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
        minval, maxval = real_number(minval, "minval"), real_number(maxval, "maxval")
        if not maxval > minval:
            raise ValueError(f"RandomUniform needs maxval > minval, got [{minval}, {maxval})")
        # the draw is minval + (maxval - minval) * u in float64: an infinite width gives Inf/NaN
        if not np.isfinite(maxval - minval):
            raise ValueError(f"RandomUniform's width maxval - minval overflows float64: [{minval}, {maxval})")
        self.a, self.b = minval, maxval

    def max_abs(self) -> float:
        return max(abs(self.a), abs(self.b))

    def __repr__(self) -> str:
        return f"RandomUniform(minval={self.a!r}, maxval={self.b!r})"


class RandomNormal(Initializer):
    kind = "random_normal"

    def __init__(self, mean: float = 0.0, stddev: float = 0.05):
        mean, stddev = real_number(mean, "mean"), real_number(stddev, "stddev")
        if not stddev > 0:
            raise ValueError(f"RandomNormal needs stddev > 0, got {stddev}")
        self.a, self.b = mean, stddev
        if not np.isfinite(self.max_abs()):  # mean + stddev * z must stay finite in float64
            raise ValueError(f"RandomNormal(mean={mean}, stddev={stddev}) can draw values that overflow float64")

    def max_abs(self) -> float:
        with np.errstate(over="ignore"):
            return float(np.float64(abs(self.a)) + np.float64(_MAX_ABS_NORMAL) * np.float64(self.b))

    def __repr__(self) -> str:
        return f"RandomNormal(mean={self.a!r}, stddev={self.b!r})"


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
    """The initializer get_config described, checked by its constructor (ValueError naming the field)."""
    cls = config_class(config, "initializer", "kind", _BY_NAME, {"kind", "a", "b"})
    if cls in (RandomUniform, RandomNormal):
        try:
            return cls(config.get("a", cls().a), config.get("b", cls().b))
        except ValueError as exc:
            names = "minval, maxval" if cls is RandomUniform else "mean, stddev"
            raise ValueError(f"initializer config (fields 'a', 'b' hold {names}): {exc}") from None
    for field in ("a", "b"):  # the named initializers have no parameters; get_config writes 0.0
        value = config.get(field, 0.0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != 0:
            raise ValueError(f"initializer config field {field!r} must be 0 for {cls.kind!r}, got {value!r}")
    return cls()


__all__ = ["Initializer", "GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LecunUniform", "LecunNormal",
           "RandomUniform", "RandomNormal", "Zeros", "get"]

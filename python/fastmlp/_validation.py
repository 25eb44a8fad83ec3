"""Input checks and conversions: every problem becomes a ValueError/TypeError naming it, before
any native call, so bad input never reaches the engine or changes a model."""
from __future__ import annotations

import math
import numbers

import numpy as np


def _host_array(x) -> np.ndarray:
    """np.asarray, and np.from_dlpack for host objects that offer only DLPack."""
    if not isinstance(x, np.ndarray) and not hasattr(x, "__array__") and hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)


def as_features(x, name: str, input_dim: int | None, dtype) -> np.ndarray:
    """A C-contiguous (n, input_dim) array of dtype; rejects non-numeric, empty, NaN/Inf."""
    if x is None:
        raise ValueError(f"{name} is None")
    try:
        arr = _host_array(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 features")
    if input_dim is not None and arr.shape[1] != input_dim:
        raise ValueError(f"{name} has {arr.shape[1]} features but the model expects {input_dim}")
    with np.errstate(over="ignore"):  # overflow is reported below, by name
        out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        what = "NaN" if np.isnan(out).any() else "Inf"
        extra = " after conversion to float32 (values too large)" if np.isfinite(arr).all() else ""
        raise ValueError(f"{name} contains {what} values{extra}")
    return out


def as_targets(y, name: str, n: int, n_out: int, class_ids: bool, dtype, loss=None) -> np.ndarray:
    """Targets as a C-contiguous (n, 1) class-id array or (n, n_out) array of dtype.

    loss (an fm.losses.Loss, optional): its target_range, when set, bounds the target values:
    cross-entropies need probabilities in [0, 1] (soft labels are fine; rows need not sum to 1,
    as in Keras), else they report negative or meaningless losses."""
    if y is None:
        raise ValueError(f"{name} is None")
    try:
        arr = _host_array(y)
    except Exception as exc:
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if arr.shape[0] != n:
        raise ValueError(f"x and {name} have different lengths: {n} samples vs {arr.shape[0]} targets")
    if class_ids:
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array of integer class labels for this loss, got shape {arr.shape}"
                             " (use categorical_crossentropy for one-hot targets)")
        if not np.isfinite(arr.astype(np.float64)).all():
            raise ValueError(f"{name} contains NaN or Inf")
        if not np.issubdtype(arr.dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels; found non-integer values")
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= n_out:
            raise ValueError(f"{name} has labels in [{lo}, {hi}] but the output layer has {n_out} classes "
                             f"(labels must be in [0, {n_out - 1}])")
        return np.ascontiguousarray(arr.reshape(n, 1), dtype=dtype)
    if arr.ndim == 1:
        if n_out != 1:
            raise ValueError(f"{name} has shape {arr.shape} but the output layer has {n_out} units; "
                             f"expected ({n}, {n_out})")
        arr = arr.reshape(n, 1)
    if arr.ndim != 2 or arr.shape[1] != n_out:
        raise ValueError(f"{name} must have shape ({n}, {n_out}), got {arr.shape}")
    out = _finite(arr, dtype, name)
    bounds = getattr(loss, "target_range", None)
    if bounds is not None:
        lo, hi = float(out.min()), float(out.max())
        if lo < bounds[0] or hi > bounds[1]:
            raise ValueError(f"{name} has values in [{lo:g}, {hi:g}] but {loss.name} targets must be in "
                             f"[{bounds[0]:g}, {bounds[1]:g}]")
    return out


def _finite(arr, dtype, name: str) -> np.ndarray:
    """arr as a C-contiguous array of dtype, every value finite (ValueError naming `name`)."""
    with np.errstate(over="ignore"):  # overflow in the conversion is reported here, by name
        out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or Inf values (or values too large for {np.dtype(dtype).name})")
    return out


def as_sample_weight(w, name: str, n: int, dtype) -> np.ndarray:
    """One finite weight >= 0 per sample, as a C-contiguous 1-D array of dtype."""
    try:
        arr = _host_array(w)
    except Exception as exc:
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) \
            or np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must hold one weight per sample, shape ({n},), got {arr.shape}")
    out = _finite(arr, dtype, name)
    if (out < 0).any():
        raise ValueError(f"{name} contains negative weights (min {float(out.min()):g}); weights must be >= 0")
    return out


def class_weights_to_sample_weights(class_weight, y: np.ndarray, n_out: int, class_ids: bool, dtype) -> np.ndarray:
    """Keras's class_weight ({class index: weight}, classes not listed weigh 1) as one weight per
    row of the validated targets y: the class is the id (sparse labels), the argmax of a target
    row (one-hot / soft labels), or the rounded 0/1 value of a single binary output."""
    if not isinstance(class_weight, dict):
        raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
    n_classes = max(n_out, 2)
    table = np.ones(n_classes, dtype=np.float64)
    for k, v in class_weight.items():
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < n_classes:
            raise ValueError(f"class_weight has key {k!r}; keys must be class indices in [0, {n_classes - 1}]")
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or v < 0:
            raise ValueError(f"class_weight[{k}] is {v!r}; weights must be finite numbers >= 0")
        table[int(k)] = float(v)
    if class_ids:
        cls = y[:, 0].astype(np.int64)
    elif y.shape[1] == 1:
        cls = (y[:, 0] > 0.5).astype(np.int64)
    else:
        cls = np.argmax(y, axis=1)
    return np.ascontiguousarray(table[cls], dtype=dtype)


# Upper bounds of the native integer types the values end in: a larger Python int would make
# pybind11 raise its own TypeError ("incompatible function arguments") instead of ours.
INT32_MAX = 2 ** 31 - 1  # batch sizes, units, rows (C int)
INT64_MAX = 2 ** 63 - 1  # step counts (int64_t), byte counts (size_t)
UINT64_MAX = 2 ** 64 - 1  # seeds (uint64_t)


def positive_int(value, name: str, high: int = INT32_MAX) -> int:
    """An integer in [1, high]; NumPy integers are accepted, bool is not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be at most {high}, got {value!r}")
    return int(value)


def non_negative_int(value, name: str, high: int = INT64_MAX) -> int:
    """An integer in [0, high] (the default bound is int64's: epochs and byte counts never reach a C int)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    if value > high:
        raise ValueError(f"{name} must be at most {high}, got {value!r}")
    return int(value)


def real_number(value, name: str, low=None, low_inclusive=True, high=None, high_inclusive=False) -> float:
    """A finite real (Python or NumPy number, not bool) as float, optionally within bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    try:
        v = float(value)  # float(10**400) raises OverflowError
    except (OverflowError, ValueError, TypeError):
        raise ValueError(f"{name} must be a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and ((v < low) if low_inclusive else (v <= low)):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {v}")
    if high is not None and ((v > high) if high_inclusive else (v >= high)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {v}")
    return v


def boolean(value, name: str) -> bool:
    """True/False (or NumPy bool, or the integers 0/1): bool("no") would silently be True."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def config_class(config, what: str, key: str, registry: dict, allowed=None):
    """registry[config[key]] for a get_config() dict, checked first: a dict, a known `key`, and
    (allowed: the set of field names, or a function of the class giving it) no unknown fields.
    Every problem is a ValueError naming the field, for from_config of files and user dicts."""
    if not isinstance(config, dict):
        raise ValueError(f"{what} config must be a dict, got {type(config).__name__}")
    name = config.get(key)
    cls = registry.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"{what} config field {key!r}: unknown {what} {name!r}; choose one of: "
                         f"{', '.join(sorted(registry))}")
    fields = allowed(cls) if callable(allowed) else allowed
    unknown = sorted(repr(k) for k in config if fields is not None and k not in fields)
    if unknown:
        raise ValueError(f"{what} config has unknown field(s) {', '.join(unknown)}")
    return cls

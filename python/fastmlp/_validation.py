"""Input checks and conversions: every problem becomes a ValueError/TypeError naming it, before
any native call, so bad input never reaches the engine or changes a model."""
from __future__ import annotations

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


def as_targets(y, name: str, n: int, n_out: int, class_ids: bool, dtype) -> np.ndarray:
    """Targets as a C-contiguous (n, 1) class-id array or (n, n_out) array of dtype."""
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
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} contains NaN or Inf values (or values too large for {np.dtype(dtype).name})")
    return out


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)

"""Finite-difference gradient check of a model's analytic gradients.

By default the check runs on a float64 CPU twin of the model (same layers, loss, weights), so
it validates the native formulas with central differences of error O(eps^2) and round-off
near 1e-16 / eps. With dtype="float32" it checks the model's own engine (CPU or GPU) and needs
a larger eps and a looser tolerance.

The relative error of a parameter is |analytic - numeric| / max(|analytic|, |numeric|, floor),
and gradcheck returns the worst over the checked parameters. The floor (1e-4 in float64, 1e-3 in
float32) keeps round-off in the numeric derivative of near-zero gradients from dominating.

Each checked parameter costs two forward passes over x, so by default at most
DEFAULT_MAX_PARAMS = 1000 parameters are checked: every one of them in a small model, and in a
larger one a random sample (fixed by `seed`) spread over every layer's kernel and bias, so that
no weight array goes unchecked. A 784-256-10 model with 32 rows checks in a few seconds;
max_params=None checks all parameters.

Both sides are in training mode, as compute_gradients is: Dropout applies the masks of the
model's current optimizer step (the same mask for every evaluation, so the loss is a smooth
function of the weights), and BatchNormalization normalizes by the batch's statistics. Moving
statistics are not trained: their analytic and numeric derivatives are both 0.
"""
from __future__ import annotations

import numpy as np

from ._interop import cuda_array
from ._validation import non_negative_int, positive_int, real_number
from .resident import ResidentDataset

DEFAULT_MAX_PARAMS = 1000


def _twin(model, dtype):
    """A copy of the model's engine: float64 on the CPU, or float32 on the model's own device."""
    if dtype == np.float64:
        engine = model._new_engine(np.float64, "cpu", "float32")
    else:
        engine = model._new_engine(np.float32, model._engine.device, model._compile_args["precision"])
    engine.set_params(model._engine.get_params().astype(dtype))
    engine.step = model._engine.step  # the step keys the dropout masks
    return engine


def _sample(sizes, max_params, rng) -> np.ndarray:
    """Sorted flat indices of the parameters to check: all of them when they are at most
    max_params; else max_params of them, in equal shares per block (each kernel and bias, capped
    at the block's size, what a small block cannot take going to the others), so that every
    block is checked. With fewer than one per block, a plain random subset."""
    n = int(sum(sizes))
    if max_params is None or max_params >= n:
        return np.arange(n)
    if max_params < len(sizes):
        return np.sort(rng.choice(n, size=max_params, replace=False))
    quota, remaining = [0] * len(sizes), max_params
    while remaining > 0:
        room = [b for b, size in enumerate(sizes) if quota[b] < size]
        share = max(1, remaining // len(room))
        for b in room:
            take = min(share, sizes[b] - quota[b], remaining)
            quota[b] += take
            remaining -= take
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.sort(np.concatenate([off + rng.choice(size, size=q, replace=False)
                                   for off, size, q in zip(offsets, sizes, quota)]))


def gradcheck(model, x, y, eps=None, dtype="float64", max_params=DEFAULT_MAX_PARAMS, seed=0, floor=None,
              return_details=False):
    """Worst relative error between compute_gradients and central differences of the loss.

    max_params: how many parameters to check (default DEFAULT_MAX_PARAMS = 1000): all of them when
    the model has at most that many, else a random sample drawn with `seed` that covers every
    layer's kernel and bias; None checks every parameter (two forward passes each: slow for big
    models). return_details=True returns (worst, details) with details["n_checked"] and
    details["n_params"] (how many of how many parameters were checked) and, per checked
    parameter, "index" (into the flat get_weights() order), "analytic", "numeric", "error"."""
    from .models import Sequential

    if not isinstance(model, Sequential):
        raise TypeError(f"gradcheck needs an fm.Sequential model, got {type(model).__name__}")
    model._require_compiled("gradcheck")
    for name, arr in (("x", x), ("y", y)):
        if isinstance(arr, ResidentDataset) or cuda_array(arr):
            raise TypeError(f"gradcheck takes host arrays (NumPy arrays or lists): {name} is "
                            f"{'a ResidentDataset' if isinstance(arr, ResidentDataset) else 'a GPU array'}")
    try:
        dtype_ok = np.dtype(dtype) in (np.float32, np.float64)
    except (TypeError, ValueError):
        dtype_ok = False
    if not dtype_ok:
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    dtype = np.dtype(dtype)
    eps = (1e-5 if dtype == np.float64 else 1e-2) if eps is None else real_number(eps, "eps", 0.0, False)
    floor = (1e-4 if dtype == np.float64 else 1e-3) if floor is None else real_number(floor, "floor", 0.0, False)
    if max_params is not None:
        max_params = positive_int(max_params, "max_params", high=np.iinfo(np.int64).max)
    seed = non_negative_int(seed, "seed", high=2 ** 64 - 1)
    if not isinstance(return_details, (bool, np.bool_)):
        raise ValueError(f"return_details must be True or False, got {return_details!r}")
    x, y = model._xy(x, y)
    engine = _twin(model, dtype)
    data = engine.upload(x.astype(dtype), y.astype(dtype))
    _, analytic = engine.compute_gradients(data)
    params = engine.get_params()
    n = params.size
    sizes = [int(np.prod(shape)) for shape in model._layer_shapes()]
    idx = _sample(sizes, max_params, np.random.default_rng(seed))
    numeric = np.empty(idx.size, dtype=np.float64)
    for j, k in enumerate(idx):
        orig = params[k]
        params[k] = orig + eps
        engine.set_params(params)
        plus = engine.training_loss(data)
        params[k] = orig - eps
        engine.set_params(params)
        minus = engine.training_loss(data)
        params[k] = orig
        numeric[j] = (plus - minus) / (2 * eps)
    engine.set_params(params)
    a = analytic[idx].astype(np.float64)
    err = np.abs(a - numeric) / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), floor)
    worst = float(err.max()) if err.size else 0.0
    if return_details:
        return worst, {"index": idx, "analytic": a, "numeric": numeric, "error": err,
                       "n_checked": int(idx.size), "n_params": int(n)}
    return worst


__all__ = ["gradcheck"]

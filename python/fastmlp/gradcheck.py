"""Finite-difference gradient check of a model's analytic gradients.

By default the check runs on a float64 CPU twin of the model (same layers, loss, weights), so
it validates the native formulas with central differences of error O(eps^2) and round-off
near 1e-16 / eps. With dtype="float32" it checks the model's own engine (CPU or GPU) and needs
a larger eps and a looser tolerance.

The relative error of a parameter is |analytic - numeric| / max(|analytic|, |numeric|, floor),
and gradcheck returns the worst over the checked parameters. The floor (1e-4 in float64, 1e-3 in
float32) keeps round-off in the numeric derivative of near-zero gradients from dominating.
"""
from __future__ import annotations

import numpy as np



def _twin(model, dtype):
    """A copy of the model's engine: float64 on the CPU, or float32 on the model's own device."""
    if dtype == np.float64:
        engine = model._new_engine(np.float64, "cpu", "float32")
    else:
        engine = model._new_engine(np.float32, model._engine.device, model._compile_args["precision"])
    engine.set_params(model._engine.get_params().astype(dtype))
    return engine


def gradcheck(model, x, y, eps=None, dtype="float64", max_params=None, seed=0, floor=None, return_details=False):
    """Worst relative error between compute_gradients and central differences of the loss.

    max_params limits the check to a random subset of parameters (all by default)."""
    model._require_compiled("gradcheck")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError("dtype must be 'float64' or 'float32'")
    eps = (1e-5 if dtype == np.float64 else 1e-2) if eps is None else float(eps)
    floor = (1e-4 if dtype == np.float64 else 1e-3) if floor is None else float(floor)
    x, y = model._xy(x, y)
    engine = _twin(model, dtype)
    data = engine.upload(x.astype(dtype), y.astype(dtype))
    _, analytic = engine.compute_gradients(data)
    params = engine.get_params()
    n = params.size
    idx = np.arange(n)
    if max_params is not None and max_params < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=int(max_params), replace=False))
    numeric = np.empty(idx.size, dtype=np.float64)
    rows = x.shape[0]
    for j, k in enumerate(idx):
        orig = params[k]
        params[k] = orig + eps
        engine.set_params(params)
        plus = engine.evaluate(data, rows)["loss"]
        params[k] = orig - eps
        engine.set_params(params)
        minus = engine.evaluate(data, rows)["loss"]
        params[k] = orig
        numeric[j] = (plus - minus) / (2 * eps)
    engine.set_params(params)
    a = analytic[idx].astype(np.float64)
    err = np.abs(a - numeric) / np.maximum(np.maximum(np.abs(a), np.abs(numeric)), floor)
    worst = float(err.max()) if err.size else 0.0
    if return_details:
        return worst, {"index": idx, "analytic": a, "numeric": numeric, "error": err}
    return worst


__all__ = ["gradcheck"]

"""Second-order information of a compiled model: exact Hessian-vector products (fm.hvp) and,
for small models, the whole Hessian (fm.hessian).

Both differentiate the same function as model.compute_gradients: the mean loss over (x, y) plus
the layers' regularization penalty, in training mode, at the current weights. The products are
exact (Pearlmutter's R-operator in the native engine, csrc/fastmlp/curvature.cpp), not finite
differences. Second derivatives that do not exist are taken as 0: ReLU's and leaky ReLU's
(piecewise linear), L1's, and the hinge loss's own (its output activation's curvature is kept).
Models of Dense layers only; mean squared error and hinge on a softmax output are refused.
"""
from __future__ import annotations

import numpy as np

from ._validation import positive_int

HESSIAN_MAX_PARAMS = 20_000  # the default limit of fm.hessian: n products, and an n x n matrix


def _flat_vector(model, v):
    shapes = model._layer_shapes()
    if isinstance(v, np.ndarray) and v.ndim == 1:
        parts = [v]
    else:
        try:
            parts = list(v)
        except TypeError:
            raise ValueError("v must be a list of arrays in get_weights() layout, or one flat array") from None
        if len(parts) != len(shapes):
            raise ValueError(f"v has {len(parts)} arrays, the model has {len(shapes)} (get_weights() layout)")
        for i, (p, shape) in enumerate(zip(parts, shapes)):
            if np.shape(p) != tuple(shape):
                raise ValueError(f"v[{i}] has shape {np.shape(p)}, the weight there has shape {tuple(shape)}")
    flat = np.concatenate([np.asarray(p, dtype=np.float64).ravel() for p in parts])
    n = model._engine.num_params
    if flat.size != n:
        raise ValueError(f"v has {flat.size} values, the model has {n} parameters")
    if not np.all(np.isfinite(flat)):
        raise ValueError("v contains NaN or Inf")
    return flat.astype(model._compile_args["dtype"], copy=False)


def hvp(model, x, y, v):
    """H v, the Hessian of mean loss + penalty over (x, y) times v, in get_weights() layout (v may
    also be one flat array of all parameters; the result then is flat too)."""
    model._require_compiled("hvp")
    flat_in = isinstance(v, np.ndarray) and v.ndim == 1
    vec = _flat_vector(model, v)
    if y is None:
        raise ValueError("hvp needs targets y")
    data, _ = model._data(x, y)
    _, hv = model._engine.hessian_vector_product(data, vec)
    return hv if flat_in else model._unflatten(hv)


def hessian(model, x, y, max_params=HESSIAN_MAX_PARAMS):
    """The Hessian of mean loss + penalty over (x, y) as an n x n array (n = the model's parameters
    in get_weights() order, flattened), built from n exact Hessian-vector products, so it is
    symmetric to rounding. Refused above max_params parameters (default 20,000: that many full
    passes over the data, and n^2 doubles of memory)."""
    model._require_compiled("hessian")
    max_params = positive_int(max_params, "max_params")
    n = model._engine.num_params
    if n > max_params:
        raise ValueError(f"the model has {n} parameters, more than max_params={max_params}: the Hessian takes n "
                         f"passes and n^2 values; use fm.hvp for products, or raise max_params")
    if y is None:
        raise ValueError("hessian needs targets y")
    data, _ = model._data(x, y)
    return hessian_of(model._engine, data, n, model._compile_args["dtype"])


def hessian_of(engine, data, n, dtype):
    """The n x n Hessian (float64) from products with the unit vectors, one ordinary pass per
    block of them (fm.hessian and Newton)."""
    out = np.empty((n, n), dtype=np.float64)
    block = max(1, min(n, (1 << 24) // max(n, 1)))  # ~16M values of directions per call
    for j in range(0, n, block):
        units = np.zeros((min(block, n - j), n), dtype=dtype)
        units[np.arange(units.shape[0]), j + np.arange(units.shape[0])] = 1
        out[:, j:j + units.shape[0]] = engine.hessian_vector_product(data, units)[1].T  # H e_j, column j
    return out

"""Turning what users pass (NumPy arrays, lists, GPU arrays, ResidentDatasets) into validated
engine datasets for a model, building the model from the first data's width when needed.
Sequential's _x, _y, _xy, _data and _upload_arrays call these."""
from __future__ import annotations

import numpy as np

from ._interop import device_array, device_features, device_to_host
from ._validation import as_features, as_sample_weight, as_targets
from .resident import ResidentDataset


def features(model, x, name="x"):
    arr = as_features(x, name, model.input_dim, model._dtype)
    model._ensure_built(arr.shape[1])
    return arr

def targets(model, y, n, name="y"):
    loss = model._compile_args["loss"]
    return as_targets(y, name, n, model._output_dim(), loss.takes_class_ids, model._dtype, loss=loss)

def features_and_targets(model, x, y, xname="x", yname="y"):
    # Both are checked before the model is built from x's width: bad targets leave an unbuilt
    # model unbuilt.
    xs = as_features(x, xname, model.input_dim, model._dtype)
    ys = model._y(y, xs.shape[0], yname)
    model._ensure_built(xs.shape[1])
    return xs, ys

def weighted_targets(model, ys, sample_weight):
    """Targets with each row's weight appended as a last column (the engine's weighted layout)."""
    w = as_sample_weight(sample_weight, "sample_weight", ys.shape[0], model._dtype)
    return np.ascontiguousarray(np.column_stack([ys, w]), dtype=model._dtype)

def dataset(model, x, y=None, xname="x", yname="y", copy_device_arrays=False, sample_weight=None):
    """Validated (x, y) resident in backend memory, as an engine dataset, and its row count.
    sample_weight (with y): one weight >= 0 per row, multiplying that row's loss.
    A ResidentDataset is used as it is; GPU arrays (__cuda_array_interface__ or DLPack) are used in place
    by a CUDA model (or copied on the GPU with copy_device_arrays); anything else is converted
    and uploaded (_upload_arrays)."""
    if sample_weight is not None and y is None:
        raise ValueError("sample_weight needs targets: pass y (a ResidentDataset carries the weights given to "
                         "model.upload(x, y, sample_weight=...))")
    if isinstance(x, ResidentDataset):
        if y is not None:
            raise ValueError(f"{xname} is a ResidentDataset, which carries its own targets; leave {yname} out "
                             "(upload targets with model.upload(x, y))")
        if x.dtype != model._dtype:
            raise TypeError(f"{xname} holds {x.dtype.name} data but the model computes in {model._dtype.name}")
        model._ensure_built(x.features)
        return x._native, x.rows
    x_gpu = device_array(x)  # read once: a DLPack export makes a capsule per call
    if x_gpu is None:
        if copy_device_arrays and sample_weight is None:  # model.upload: a ResidentDataset owns a copy
            return model._upload_arrays(x, y, xname, yname, borrow=False)
        if copy_device_arrays:
            return upload_arrays(model, x, y, xname, yname, sample_weight, borrow=False)
        if sample_weight is None:
            return model._upload_arrays(x, y, xname, yname)
        return upload_arrays(model, x, y, xname, yname, sample_weight)
    ptr, rows, cols = device_features(x_gpu, xname, model.input_dim)
    device = model._engine.device if model._engine is not None else model._compile_args["device"]
    if not device.startswith("cuda"):
        raise TypeError(f"{xname} lives on the GPU but the model runs on {device}; "
                        "compile with device='cuda' or pass a host array")
    unbuilt, input_dim = model._engine is None, model.layers[0].input_dim
    model._ensure_built(cols)  # GPU targets are read through the engine
    try:
        ys = None
        if y is not None:
            y_gpu = device_array(y)
            y_host = y if y_gpu is None else device_to_host(y_gpu, model._engine, yname)
            ys = model._y(y_host, rows, yname)
            if sample_weight is not None:
                ys = weighted_targets(model, ys, sample_weight)
    except Exception:
        if unbuilt:  # bad targets leave an unbuilt model unbuilt, as with host arrays
            model._engine = None
            model.layers[0].input_dim = input_dim
        raise
    return model._engine.borrow(ptr, rows, ys, copy_device_arrays, sample_weight is not None), rows

def upload_arrays(model, x, y, xname, yname, sample_weight=None, borrow=True):
    """Host arrays validated, converted and put in backend memory (one copy per call), except that
    with borrow the CPU backend reads the features in place (the array fit, evaluate or predict
    was given, or its converted copy, kept alive by the dataset): no second copy of the data."""
    if y is None:
        xs = model._x(x, xname)
        return model._engine.upload(xs, borrow=borrow), xs.shape[0]
    if sample_weight is None:
        xs, ys = model._xy(x, y, xname, yname)
        return model._engine.upload(xs, ys, borrow=borrow), xs.shape[0]
    xs = as_features(x, xname, model.input_dim, model._dtype)  # all checked before the model is built
    ys = weighted_targets(model, model._y(y, xs.shape[0], yname), sample_weight)
    model._ensure_built(xs.shape[1])
    return model._engine.upload(xs, ys, True, borrow), xs.shape[0]

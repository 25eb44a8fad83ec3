"""Arrays that already live on the GPU (PyTorch, CuPy, Numba, JAX: anything exposing
``__cuda_array_interface__``) are used in place by the CUDA backend, without a host round trip.

Features must be float32, 2-D and C-contiguous there (convert on the device first, e.g.
``x.float().contiguous()`` in PyTorch). They are not scanned for NaN/Inf (that would cost a
pass over the data); a NaN still stops training with fm.NonFiniteLossError. Targets are small
and are copied to the host once so labels can be checked like NumPy targets.
"""
from __future__ import annotations

import numpy as np

_TYPESTRS = {"<f4": np.float32, "<f8": np.float64, "<i8": np.int64, "<i4": np.int32, "|u1": np.uint8,
             "<u1": np.uint8, "|i1": np.int8, "<f2": np.float16, "|b1": np.bool_}


def cuda_array(obj):
    """The __cuda_array_interface__ dict of obj, or None for host arrays."""
    return getattr(obj, "__cuda_array_interface__", None)


def _contiguous(shape, strides, itemsize) -> bool:
    if strides is None:
        return True
    expected, acc = [], itemsize
    for dim in reversed(shape):
        expected.append(acc)
        acc *= dim
    return tuple(strides) == tuple(reversed(expected))


def device_features(obj, name: str, input_dim: int | None):
    """(pointer, rows, cols) of a float32 C-contiguous device matrix; TypeError/ValueError otherwise."""
    cai = cuda_array(obj)
    shape, typestr = tuple(cai["shape"]), cai["typestr"]
    if typestr != "<f4":
        raise TypeError(f"{name} on the GPU must be float32 (got {typestr}); convert it on the device first")
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty, shape {shape}")
    if input_dim is not None and shape[1] != input_dim:
        raise ValueError(f"{name} has {shape[1]} features but the model expects {input_dim}")
    if not _contiguous(shape, cai.get("strides"), 4):
        raise TypeError(f"{name} on the GPU must be C-contiguous (e.g. x.contiguous())")
    return int(cai["data"][0]), shape[0], shape[1]


def device_to_host(obj, engine, name: str) -> np.ndarray:
    """Copies a (small) device array to a NumPy array through the engine's backend."""
    cai = cuda_array(obj)
    shape, typestr = tuple(cai["shape"]), cai["typestr"]
    if typestr not in _TYPESTRS:
        raise TypeError(f"{name} on the GPU has unsupported dtype {typestr}")
    dtype = np.dtype(_TYPESTRS[typestr])
    if not _contiguous(shape, cai.get("strides"), dtype.itemsize):
        raise TypeError(f"{name} on the GPU must be contiguous")
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = engine.read_device_memory(int(cai["data"][0]), nbytes)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)
